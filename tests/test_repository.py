"""The repository's own contracts: README rendered from nbs/index.ipynb, stage notebooks vs dvc.yaml."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synthface_nb.pipeline import notebook_parameters, papermill_stage_parameters

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def render_readme() -> str:
    out = subprocess.run([str(BIN / "jupyter"), "nbconvert", "--to", "markdown", "--stdout", "nbs/index.ipynb"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout


def test_readme_is_rendered_from_index_notebook():
    assert (ROOT / "README.md").read_text() == render_readme(), \
        "README.md differs from nbs/index.ipynb: run `jupyter nbconvert --to markdown --stdout nbs/index.ipynb > README.md`"


def test_readme_shows_the_two_commands_and_the_config_location():
    text = (ROOT / "README.md").read_text()
    assert "make run" in text and "make test" in text
    assert "[tool.nbdev]" in text and "settings.ini" in text


STAGES = sorted((ROOT / "nbs" / "stages").glob("*.ipynb"))
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())


def _stage_cmds():
    for name, stage in DVC["stages"].items():
        if "foreach" in stage:
            yield name, stage["do"]["cmd"], stage["do"].get("params", [])
        else:
            yield name, stage["cmd"], stage.get("params", [])


@pytest.mark.parametrize("nb", STAGES, ids=[p.stem for p in STAGES])
def test_stage_notebook_has_exactly_one_parameters_cell(nb):
    params = notebook_parameters(nb)
    assert params, f"{nb.name}: the parameters cell defines nothing"


@pytest.mark.parametrize("name,cmd,params", list(_stage_cmds()), ids=[n for n, _, _ in _stage_cmds()])
def test_every_papermill_parameter_exists_in_the_notebook_and_is_declared(name, cmd, params):
    nb, passed = papermill_stage_parameters(cmd)
    defined = notebook_parameters(ROOT / nb)
    unknown = sorted(set(passed) - set(defined))
    assert not unknown, f"dvc.yaml stage {name} passes -p {unknown}, which {nb} does not define"
    declared = {p if isinstance(p, str) else next(iter(p)) for p in params}
    for value in passed.values():
        for ref in re.findall(r"\$\{([^}]+)\}", value):
            if ref.startswith("item"):
                continue
            assert any(ref == d or ref.startswith(d + ".") for d in declared), \
                f"dvc.yaml stage {name}: ${{{ref}}} is passed but not declared under params"


def test_every_stage_notebook_is_used_by_dvc_yaml():
    used = {papermill_stage_parameters(cmd)[0] for _, cmd, _ in _stage_cmds()}
    assert {f"nbs/stages/{p.name}" for p in STAGES} == used
