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
    ev, gan, aud = load("artifacts/evaluate/metrics.json"), load("artifacts/generators/sface/metrics.json"), \
        load("artifacts/audit/audit.json")
    audit, ag = aud["sets"]["sface"], aud["agreement"]
    # git-tracked metrics only: the filter's summary as the generate stage's report holds it, the genuine statistics
    # as the training stage's metrics hold them (the files inside DVC's outputs are not in a clone)
    fs, ab = load("artifacts/generate/arcbiface/report.json")["summary"], load("artifacts/generators/arcbiface/metrics.json")
    stats = {"mu": ab["genuine_mu"], "sigma": ab["genuine_sigma"]}
    acc = lambda m, b="procedural": 100 * ev[m][b]["accuracy"]
    ci = lambda m, b="procedural": [100 * x for x in ev[m][b]["accuracy_ci"]]
    r1 = lambda m: 100 * ev[m]["identification"]["rank1"]
    pct = lambda x: f"{100 * x:.1f} %"
    paths = glob.glob(str(ROOT / "artifacts/stage_times/*.json"))
    times = [json.loads(open(p).read())["seconds"] for p in paths]
    sface_part = sum(json.loads(open(p).read())["seconds"] for p in paths if "sface" in p or "teacher" in p)
    nv = "procedural_nir_vis"
    claims = [
        f"in {sum(times) / 60:.1f} minutes of\nstage time for three methods",
        f"The teacher trained on the authentic identities ({acc('teacher'):.1f} %)",
        f"untrained verifies {acc('untrained'):.1f} %",
        f"identity accuracy of {gan['identity_acc_end']:.2f} on its generated images\nafter {gan['kimg']:.0f} kimg (chance {gan['chance']:.4f})",
        f"CLS on the synthetic labels reaches {acc('sface_cls'):.1f} % and KT ({acc('sface_kt'):.1f} %)",
        f"CL ({acc('sface_cl'):.1f} %)", f"comes within {acc('teacher') - acc('sface_cl'):.1f} points of the teacher",
        f"(CL's lower bound {ci('sface_cl')[0]:.1f} %, CLS's upper bound {ci('sface_cls')[1]:.1f} %)",
        f"rank-1 {r1('sface_cl'):.1f} % for CL, {r1('sface_cls'):.1f} % for CLS, {r1('sface_kt'):.1f} % for KT and "
        f"{r1('teacher'):.1f} % for the teacher",
        f"kept {fs['kept_identities']} of {fs['identities']:,} candidate identities ({fs['images']} images;",
        f"{acc('arcbiface_vis'):.1f} % trained on the visible images, {acc('arcbiface_vis_nir'):.1f} % on visible + NIR",
        f"{acc('arcbiface_vis_nir', nv):.1f} % against {acc('arcbiface_vis', nv):.1f} %",
        f"(intervals [{ci('arcbiface_vis_nir', nv)[0]:.1f}, {ci('arcbiface_vis_nir', nv)[1]:.1f}] and "
        f"[{ci('arcbiface_vis', nv)[0]:.1f}, {ci('arcbiface_vis', nv)[1]:.1f}], which touch)",
        f"own EER is {pct(ag['arcbiface']['eer'])} against {pct(ag['arcbiface_unfiltered']['eer'])}",
        f"reaches {acc('usynthface'):.1f} % [{ci('usynthface')[0]:.1f}, {ci('usynthface')[1]:.1f}] against "
        f"{acc('untrained'):.1f} % [{ci('untrained')[0]:.1f}, {ci('untrained')[1]:.1f}]",
        f"(genuine cosine {ag['arcbiface_unfiltered']['genuine_mean']:.2f} against impostor "
        f"{ag['arcbiface_unfiltered']['impostor_mean']:.2f}, EER {pct(ag['arcbiface_unfiltered']['eer'])}; authentic images "
        f"{ag['authentic']['genuine_mean']:.2f} against {ag['authentic']['impostor_mean']:.2f}, EER {pct(ag['authentic']['eer'])})",
        f"{pct(audit['identity_share_above'])} of SFace's synthetic identities",
        f"(authentic identities against each other: {pct(audit['identity_baseline_share_above'])})",
        f"{pct(audit['sample_share_above'])} of its synthetic images do (authentic images: {pct(audit['sample_baseline_share_above'])})",
        f"KS statistic {audit['relation_ks_statistic']:.2f}",
        f"The run took {sum(times) / 60:.1f} minutes", f"took {sface_part / 60:.1f} of them",
    ]
    flat = " ".join(readme.split())   # line breaks in the prose do not matter
    missing = [c for c in claims if " ".join(c.split()) not in flat]
    assert not missing, f"README quotes numbers that differ from the artifacts: {missing}"
    prose = {"nbs/05_procedural.ipynb": [f"reaches **{acc('teacher'):.1f} %** on the default benchmark"],
             "nbs/23_stylegan2_training.ipynb": [f"{gan['identity_acc_end']:.2f} at {gan['kimg']:.0f} in\nthe pipeline run the README shows"],
             "nbs/27_arcbiface.ipynb": [f"{ab['id_sim_train_end']:.2f} to the training condition", f"only {ab['id_sim_new_end']:.2f} to a new",
                                        f"μ = {stats['mu']:.2f}, σ = {stats['sigma']:.2f}",
                                        f"{fs['identities']:,} candidate identities the filter kept {fs['kept_identities']} ({fs['images']} images)"]}
    for nb, nb_claims in prose.items():
        text = " ".join("".join("".join(c["source"]) for c in json.loads((ROOT / nb).read_text())["cells"]).split())
        for claim in nb_claims:
            assert " ".join(claim.split()) in text, f"{nb}: its prose should quote the pipeline's number: {claim}"
    assert sum(times) / 60 < 20, "README: within the 20-minute budget"
    assert ci("sface_cl")[0] > ci("sface_cls")[1], "README: CL's and CLS's intervals are apart"
    overlap = lambda a, b, bench="procedural": ci(a, bench)[0] <= ci(b, bench)[1] and ci(b, bench)[0] <= ci(a, bench)[1]
    assert overlap("sface_cls", "sface_kt") and overlap("sface_cl", "teacher"), "README: these intervals overlap"
    assert overlap("usynthface", "untrained") and acc("usynthface") > acc("untrained"), "README: better, but the intervals overlap"
    assert overlap("arcbiface_vis_nir", "arcbiface_vis", nv) and acc("arcbiface_vis_nir", nv) > acc("arcbiface_vis", nv), \
        "README: training with NIR helps on the cross-modal benchmark; the intervals touch"
    assert aud["sets"]["arcbiface"]["identity_share_above"] == aud["sets"]["arcbiface_unfiltered"]["identity_share_above"] == 0, \
        "README: neither ArcBiFaceGAN set has an identity above the leakage threshold"
    for k in ("identity", "sample"):
        (lo, hi), (blo, bhi) = audit[f"{k}_share_ci"], audit[f"{k}_baseline_share_ci"]
        assert lo <= bhi and blo <= hi, f"README: the {k} share's interval overlaps its baseline's"
