"""The repository's own contracts: README rendered from nbs/index.ipynb, stage notebooks vs dvc.yaml."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synthface_nb.pipeline import STAGES, load_params, notebook_parameters, stage_parameters, sync_dvc_deps

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


STAGE_NOTEBOOKS = sorted((ROOT / "nbs" / "stages").glob("*.ipynb"))
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PARAMS = load_params(ROOT / "params.yaml")


def _dvc_stages():
    "(dvc.yaml stage, runner stage, entry keys (None for a single stage), stage body) for every dvc.yaml stage"
    for name, stage in DVC["stages"].items():
        body = stage.get("do", stage)
        args = body["cmd"].split()
        assert args[:4] == ["python", "-m", "synthface_nb.pipeline", "stage"], f"dvc.yaml stage {name}: not the stage runner"
        runner = args[4]
        if "foreach" in stage:
            group = stage["foreach"].strip("${}")
            assert STAGES[runner].entries == group, f"dvc.yaml stage {name} loops over {group}, the runner reads {STAGES[runner].entries}"
            yield name, runner, list(PARAMS[group]), body
        else:
            yield name, runner, [None], body


@pytest.mark.parametrize("nb", STAGE_NOTEBOOKS, ids=[p.stem for p in STAGE_NOTEBOOKS])
def test_stage_notebook_has_exactly_one_parameters_cell(nb):
    params = notebook_parameters(nb)
    assert params, f"{nb.name}: the parameters cell defines nothing"


@pytest.mark.parametrize("stage", list(STAGES))
def test_runner_parameters_are_the_notebook_parameters_and_defaults_are_params_yaml(stage):
    spec = STAGES[stage]
    defined = notebook_parameters(ROOT / "nbs" / "stages" / f"{spec.notebook}.ipynb")
    keys = list(PARAMS[spec.entries]) if spec.entries else [None]
    for key in keys:
        given = stage_parameters(stage, key, PARAMS)
        assert set(given) == set(defined), f"{stage}[{key}]: runner passes {sorted(given)}, {spec.notebook}.ipynb defines {sorted(defined)}"
    if spec.entries and defined["name"] not in PARAMS[spec.entries]:
        return   # the notebook's default entry is one of the other mapping (train_fr's default is in fr_runs)
    assert stage_parameters(stage, defined.get("name"), PARAMS) == defined, \
        f"{spec.notebook}.ipynb: the parameters cell's defaults differ from what params.yaml gives its default entry"


def test_every_stage_notebook_is_run_by_dvc_yaml():
    used = {STAGES[runner].notebook for _, runner, _, _ in _dvc_stages()}
    assert {p.stem for p in STAGE_NOTEBOOKS} == used


@pytest.mark.parametrize("name,runner,keys,body", list(_dvc_stages()), ids=[n for n, *_ in _dvc_stages()])
def test_dvc_stage_declares_what_the_runner_reads_and_writes(name, runner, keys, body):
    spec = STAGES[runner]
    declared = set(body.get("params", []))
    want = set(spec.reads) | ({f"{spec.entries}.${{key}}"} if spec.entries else set())
    covered = {w for w in want if any(w == d or w.startswith(d + ".") for d in declared)}
    assert covered == want, f"dvc.yaml stage {name}: params should declare {sorted(want - covered)}"
    outs = [o if isinstance(o, str) else next(iter(o)) for o in body.get("outs", []) + body.get("metrics", [])]
    tag = spec.notebook + ("_${key}" if spec.entries else "")
    for key in keys:
        paths = [v for k, v in stage_parameters(runner, key, PARAMS).items() if k in dict(spec.paths)]
        runner_files = [f"runs/{tag}.ipynb", f"runs/{tag}.yaml", spec.times.format(tag=tag)]
        runner_files = [f.replace("${key}", str(key)) for f in runner_files]
        assert runner_files[2] in [o.replace("${key}", str(key)) for o in outs], \
            f"dvc.yaml stage {name}: the stage-time record {runner_files[2]} is not declared"
        for out in outs:
            o = out.replace("${key}", str(key))
            assert o in runner_files \
                or any(o == p or o.startswith(p.rstrip("/") + "/") or o.startswith(p + "_") for p in paths), \
                f"dvc.yaml stage {name}: output {o} is not under the runner's paths {paths}"


def test_dvc_module_dependencies_are_the_import_closure():
    changed = sync_dvc_deps(ROOT / "dvc.yaml", ROOT / "params.yaml", ROOT / "nbs" / "stages", ROOT / "synthface_nb", check=True)
    assert not changed, f"dvc.yaml module deps differ from the import closure (run `python -m synthface_nb.pipeline deps`): {changed}"


def test_readme_results_are_the_pipeline_artifacts():
    """The README's results are the report stage's `results.md`, unchanged, and every number its text quotes
    is read here from the artifacts the pipeline wrote (the git-tracked metrics of `dvc.lock`'s run)."""
    import glob
    import json
    readme = (ROOT / "README.md").read_text()
    assert (ROOT / "artifacts/report/results.md").read_text().strip() in readme, "README: paste artifacts/report/results.md"
    load = lambda p: json.loads((ROOT / p).read_text())
    ev, gan, audit = load("artifacts/evaluate/metrics.json"), load("artifacts/generators/sface/metrics.json"), \
        load("artifacts/audit/audit.json")["sets"]["sface"]
    acc = lambda m: 100 * ev[m]["procedural"]["accuracy"]
    ci = lambda m: [100 * x for x in ev[m]["procedural"]["accuracy_ci"]]
    r1 = lambda m: 100 * ev[m]["identification"]["rank1"]
    pct = lambda x: f"{100 * x:.1f} %"
    times = [json.loads(open(p).read())["seconds"] for p in glob.glob(str(ROOT / "artifacts/stage_times/*.json"))]
    gan_time = load("artifacts/stage_times/train_generator_sface.json")["seconds"]
    claims = [
        f"The teacher trained on the authentic identities ({acc('teacher'):.1f} %)",
        f"identity\naccuracy of {gan['identity_acc_end']:.2f} on its generated images after {gan['kimg']:.0f} kimg (chance {gan['chance']:.4f})",
        f"CLS on the synthetic labels reaches {acc('sface_cls'):.1f} % and KT ({acc('sface_kt'):.1f} %)",
        f"CL ({acc('sface_cl'):.1f} %)", f"comes within {acc('teacher') - acc('sface_cl'):.1f} points of",
        f"(CL's lower bound {ci('sface_cl')[0]:.1f} %, CLS's upper bound {ci('sface_cls')[1]:.1f} %)",
        f"{pct(audit['identity_share_above'])} of the synthetic identities",
        f"(authentic identities against each other: {pct(audit['identity_baseline_share_above'])})",
        f"{pct(audit['sample_share_above'])} of the\nsynthetic images do (authentic images: {pct(audit['sample_baseline_share_above'])})",
        f"KS statistic {audit['relation_ks_statistic']:.2f}",
        f"in {sum(times) / 60:.0f} minutes of\nstage time", f"The run took {sum(times) / 60:.1f} minutes",
        f"about {sum(times) / 60:.0f} minutes of stage time on the 2-core",
        "1:N identification on the held-out identities orders the models the same way: rank-1 "
        + f"{r1('sface_cl'):.1f} % for CL, {r1('sface_cls'):.1f} % for CLS, {r1('sface_kt'):.1f} % for KT and "
        + f"{r1('teacher'):.1f} % for the teacher",
    ]
    flat = " ".join(readme.split())   # line breaks in the prose do not matter
    missing = [c for c in claims if " ".join(c.split()) not in flat]
    assert not missing, f"README quotes numbers that differ from the artifacts: {missing}"
    prose = {"nbs/05_procedural.ipynb": f"reaches **{acc('teacher'):.1f} %** on the default benchmark",
             "nbs/23_stylegan2_training.ipynb": f"{gan['identity_acc_end']:.2f} at {gan['kimg']:.0f} in\nthe pipeline run the README shows"}
    for nb, claim in prose.items():
        text = "".join("".join(c["source"]) for c in json.loads((ROOT / nb).read_text())["cells"])
        assert claim in text, f"{nb}: its prose should quote the pipeline's number: {claim}"
    assert abs(gan_time / sum(times) - 0.5) < 0.05, "README: 'the GAN stage is half of it'"
    assert ci("sface_cl")[0] > ci("sface_cls")[1], "README: CL's and CLS's intervals are apart"
    assert r1("teacher") > r1("sface_cl") > r1("sface_cls") > r1("sface_kt"), "README: identification orders them the same way"
    overlap = lambda a, b: ci(a)[0] <= ci(b)[1] and ci(b)[0] <= ci(a)[1]
    assert overlap("sface_cls", "sface_kt") and overlap("sface_cl", "teacher"), "README: these intervals overlap"
    for k in ("identity", "sample"):
        (lo, hi), (blo, bhi) = audit[f"{k}_share_ci"], audit[f"{k}_baseline_share_ci"]
        assert lo <= bhi and blo <= hi, f"README: the {k} share's interval overlaps its baseline's"
