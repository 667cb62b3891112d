"""The repository's own contracts: README rendered from nbs/index.ipynb, stage notebooks vs dvc.yaml."""
import re
from pathlib import Path

import pytest
import yaml

from synthface_nb.pipeline import STAGES, load_params, notebook_parameters, stage_parameters, sync_dvc_deps

ROOT = Path(__file__).resolve().parents[1]


def readme_results():
    "tools/readme_results.py as a module"
    import importlib.util
    spec = importlib.util.spec_from_file_location("readme_results", ROOT / "tools/readme_results.py")
    rr = importlib.util.module_from_spec(spec); spec.loader.exec_module(rr)
    return rr


def test_readme_is_rendered_from_index_notebook():
    assert (ROOT / "README.md").read_text() == readme_results().readme(), \
        "README.md differs from nbs/index.ipynb: run `python tools/readme_results.py --readme`"


LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_readme_and_index_links_resolve_where_each_is_opened():
    "The index notebook's relative links resolve from nbs/ (JupyterLab), the README's from the repository root"
    import json
    rr = readme_results()
    nb = "".join("".join(c["source"]) for c in json.loads((ROOT / "nbs/index.ipynb").read_text())["cells"]
                 if c["cell_type"] == "markdown")
    for base, text in [(ROOT / "nbs", nb), (ROOT, (ROOT / "README.md").read_text())]:
        local = [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]
        assert local, f"no relative links found under {base}"
        missing = [t for t in local if not (base / t).exists()]
        assert not missing, f"links that do not resolve from {base}: {missing}"
    root = "![r](artifacts/r.png) [w](https://x.org) [a](#top) [p](/abs)"
    assert rr.notebook_links(root) == "![r](../artifacts/r.png) [w](https://x.org) [a](#top) [p](/abs)"
    assert rr.root_links(rr.notebook_links(root)) == root


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


@pytest.mark.parametrize("nb", STAGE_NOTEBOOKS, ids=[p.stem for p in STAGE_NOTEBOOKS])
def test_stage_notebook_moves_to_the_repository_root_before_using_a_path(nb):
    "JupyterLab runs a stage notebook in nbs/stages/; the cell after the parameters moves to the folder of dvc.yaml"
    import json
    cells = json.loads(nb.read_text())["cells"]
    i = next(i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    imports = "".join(cells[i + 1]["source"])
    assert "from synthface_nb.core import to_repository_root" in imports and "\nto_repository_root()" in imports, \
        f"{nb.name}: its import cell should call to_repository_root()"


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
    """The README's results are the report stage's `results.md`, unchanged, followed by the text
    `tools/readme_results.py` renders from the artifacts the pipeline wrote (the git-tracked metrics of `dvc.lock`'s
    run): every number, and every "apart" or "overlap", is the pipeline's. Notebook prose that quotes the run is
    checked against the same artifacts."""
    import json
    rr = readme_results()
    readme = (ROOT / "README.md").read_text()
    assert (ROOT / "artifacts/report/results.md").read_text().strip() in readme, "README: paste artifacts/report/results.md"
    flat = lambda t: " ".join(t.split())   # line breaks do not matter
    assert flat(rr.render()) in flat(readme), "README: re-render the results (python tools/readme_results.py --write --readme)"
    f = rr.Figures()
    ab = json.loads((ROOT / "artifacts/generators/arcbiface/metrics.json").read_text())
    fs, st1, vg, vg_m = f.filtered, f.stage1, f.vig, f.vig_gen
    prose = {"nbs/05_procedural.ipynb": [f"reaches **{f.acc('teacher'):.1f} %** on the default benchmark"],
             "nbs/23_stylegan2_training.ipynb": [f"{f.gan['identity_acc_end']:.2f} at {f.gan['kimg']:.0f} in\nthe pipeline run the README shows"],
             "nbs/27_arcbiface.ipynb": [f"{ab['id_sim_train_end']:.2f} to the training condition", f"only {ab['id_sim_new_end']:.2f} to a new",
                                        f"μ = {ab['genuine_mu']:.2f}, σ = {ab['genuine_sigma']:.2f}",
                                        f"{fs['identities']:,} candidate identities the filter kept {fs['kept_identities']} ({fs['images']} images)"],
             "nbs/29_vigface.ipynb": [f"after {st1['step']} steps each virtual row's nearest other row is at |cos| {st1['mean_max_cos_virtual']:.2f} on average, "
                                      f"each real row's nearest real row at {st1['mean_max_cos_real']:.2f}",
                                      f"(0.{round(100 * st1['max_cos_virtual']):02d} and 0.{round(100 * st1['max_cos_real']):02d})",
                                      f"Stage 2** trains {vg_m['loss/v_mse_end_kimg']:.1f} kimg",
                                      f"falls from {vg_m['loss/v_mse_start']:.2f} to {vg_m['loss/v_mse_end']:.2f}",
                                      f"(cosine {vg_m['probe_cos_real_start']:.2f} → {vg_m['probe_cos_real_end']:.2f})".replace("-", "−"),
                                      f"({vg_m['probe_cos_virtual_start']:.2f} → {vg_m['probe_cos_virtual_end']:.2f})",
                                      f"{vg['num_identities']} virtual identities × {vg['images'] // vg['num_identities']} images sit at cosine {vg['cos_own']:.2f}"]}
    for nb, nb_claims in prose.items():
        text = flat("".join("".join(c["source"]) for c in json.loads((ROOT / nb).read_text())["cells"]))
        for claim in nb_claims:
            assert flat(claim) in text, f"{nb}: its prose should quote the pipeline's number: {claim}"
    assert f.minutes() < 20, "README: within the 20-minute budget"
    am, ts = f.aud["model_info"], f.aud["threshold_source"]
    assert (am["trained_on_authentic"], ts["unseen_by_model"]) == (False, True), "README: the audit model never saw the authentic identities"
    assert [r["trained_on_authentic"] for r in f.aud["reference_models"].values()] == [True], "README: the teacher's figures, labelled"
