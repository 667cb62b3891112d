"""Run the first pipeline stage in a scratch copy of the repository and check that DVC caches it:
`dvc pull` works offline from the in-repo remote, and a second `dvc repro` changes nothing."""
import hashlib
import json
from pathlib import Path

import pytest

from conftest import BIN, make_scratch_repo, run_command as _run


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def scratch_repo(tmp_path_factory):
    return make_scratch_repo(tmp_path_factory.mktemp("repo"))


def test_dvc_pull_then_repro_prepare_then_noop(scratch_repo):
    repo, env = scratch_repo
    _run([BIN / "dvc", "pull", "-q", "data.dvc"], repo, env)
    assert any((repo / "data" / "authentic").iterdir())
    _run([BIN / "dvc", "repro", "-q", "prepare"], repo, env)
    assert (repo / "artifacts" / "prepare" / "benchmarks" / "procedural.bin").is_file()
    lock, outs = (repo / "dvc.lock").read_text(), _digest(repo / "artifacts" / "prepare")
    status = _run([BIN / "dvc", "status", "prepare"], repo, env)
    assert "up to date" in status, status
    again = _run([BIN / "dvc", "repro", "prepare"], repo, env)
    assert "didn't change" in again or "skipping" in again, again
    assert (repo / "dvc.lock").read_text() == lock
    assert _digest(repo / "artifacts" / "prepare") == outs


TOY_METHOD = '''"""A method outside the package: a label-free objective and a generator recipe, registered on import."""
import json
from pathlib import Path

import numpy as np
import torch.nn.functional as F

from synthface_nb.core import write_json_atomic
from synthface_nb.data import save_image
from synthface_nb.generator_recipes import GeneratorRecipe, generator_recipes
from synthface_nb.objectives import Objective, objectives
from synthface_nb.recordio import open_face_dataset
from synthface_nb.stylegan2_training import write_dvclive


@objectives.register("toy_spread")
class ToySpread(Objective):
    "Push the batch's normalised embeddings apart (no labels, no teacher)"
    needs_labels = False
    def __init__(self, ctx, power: float = 2.0):
        super().__init__()
        self.power = power
    def forward(self, backbone, views, labels):
        e = F.normalize(backbone(views[0]))
        loss = (e @ e.T).abs().pow(self.power).mean()
        return loss, {"spread": loss.detach()}


@generator_recipes.register("toy_colours")
class ToyColours(GeneratorRecipe):
    "Learns each identity's mean colour; generates flat faces of those colours with seeded noise"
    train_family, generate_family = "toy_colours_train", "toy_colours_generate"
    def train_defaults(self): return {"max_identities": 100}
    def generate_defaults(self): return {"per_identity": 4, "noise": 20.0}
    def train(self, data, out_dir, settings, seed, progress=True, state_dir=None, preset="cpu"):
        ds = open_face_dataset(data)
        means = {}
        for i in range(len(ds)):
            k = int(ds.labels[i])
            if k < settings["max_identities"]: means.setdefault(k, []).append(ds.load_image(i).reshape(-1, 3).mean(0))
        colours = {k: np.mean(v, 0).tolist() for k, v in sorted(means.items())}
        write_json_atomic(Path(out_dir)/"model"/"colours.json", colours)
        write_json_atomic(Path(out_dir)/"metrics.json", {"identities": len(colours)})
        write_dvclive([{"step": 0, "identities": len(colours)}], Path(out_dir)/"live")   # the stage declares live/ plots
        return {"summary": {"identities": len(colours)}}
    def generate(self, model_dir, out_dir, report_dir, settings, seed, progress=True):
        colours = json.loads((Path(model_dir)/"colours.json").read_text())
        n = 0
        for k, c in colours.items():
            for i in range(settings["per_identity"]):
                rng = np.random.default_rng([seed, int(k), i])
                img = np.clip(np.array(c) + rng.normal(0, settings["noise"], (112, 112, 3)), 0, 255).astype(np.uint8)
                save_image(Path(out_dir)/f"{int(k):06d}"/f"{i:06d}.png", img); n += 1
        save_image(Path(report_dir)/"sample_grid.png", np.zeros((8, 8, 3), np.uint8))
        return {"images_written": n, "dataset": {"n_images": n, "n_identities": len(colours)}}
'''

TINY_FR = {"network": "iresnet18", "width": 0.125, "input_size": 32, "embedding_size": 16, "epochs": 1, "batch_size": 16,
           "lr_batch": 16, "warmup_epochs": 0.0, "num_workers": 0, "device": "cpu"}


def test_a_new_method_runs_through_dvc_repro_from_params_yaml_alone(scratch_repo):
    """A toy objective and a toy generator recipe in a module outside the package, declared in params.yaml only
    (no edit of a stage notebook or the package; dvc.yaml changes only by `pipeline deps`, which lists evaluate's
    models): `dvc repro` trains, generates, aligns, trains FR with and without a teacher, evaluates, audits and
    reports them. A training stage forced to run again from scratch re-makes the same model, so nothing after it
    re-runs but the report, whose stage-time table reads the new wall time."""
    import yaml
    repo, env = scratch_repo
    env = {**env, "PYTHONPATH": str(repo)}
    if not (repo / "data" / "authentic").exists():
        _run([BIN / "dvc", "pull", "-q", "data.dvc"], repo, env)
    (repo / "toy_method.py").write_text(TOY_METHOD)
    before = {p: (repo / p).read_bytes() for p in ("dvc.yaml", "nbs/stages/train_fr.ipynb", "nbs/stages/generate.ipynb")}
    stages_before = yaml.safe_load(before["dvc.yaml"])["stages"]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params.update(
        plugins=["toy_method"],
        generators={"toy": {"family": "toy_colours", "data": "data/authentic", "overrides": {"max_identities": 12}}},
        generators_with_teacher={},   # no teacher-conditioned generator in this toy pipeline
        generated={"toy": {"generator": "toy", "overrides": {"per_identity": 6}}},
        align={"toy": {"input": "artifacts/generated/toy", "overrides": {"detector": "template"}}},
        fr_runs={"toy_spread": {"data": "artifacts/aligned/toy", "objective": "toy_spread",
                                "objective_kwargs": {"power": 2.0}, "overrides": TINY_FR}},
        fr_runs_with_teacher={"toy_kt": {"data": "artifacts/aligned/toy", "objective": "kt",
                                         "teacher": "artifacts/train_fr/toy_spread/model.pt", "overrides": TINY_FR}})
    params["prepare"]["n_pairs"] = 200
    params["audit"].update(model="artifacts/train_fr/toy_spread/model.pt", reference_model="artifacts/train_fr/toy_kt/model.pt",
                           top_k=2)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run([BIN / "python", "-m", "synthface_nb.pipeline", "deps"], repo, env)   # what `make run` does first
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    fr_deps = lambda st: [d for d in st["evaluate"]["deps"] if d.startswith("artifacts/train_fr")]
    assert fr_deps(stages) == ["artifacts/train_fr/toy_kt/model.pt", "artifacts/train_fr/toy_spread/model.pt"], fr_deps(stages)
    for st in (stages, stages_before):   # what the command keeps: evaluate's models, and the module closures (the
        for name, stage in st.items():   # built-in recipes named in params.yaml are not the shipped ones here)
            body = stage.get("do", stage)
            body["deps"] = [d for d in body["deps"] if not d.startswith(("artifacts/train_fr", "synthface_nb/"))]
    assert stages == stages_before, "pipeline deps changes nothing but the lists it keeps"
    before["dvc.yaml"] = (repo / "dvc.yaml").read_bytes()
    out = _run([BIN / "dvc", "repro"], repo, env)
    for stage in ("train_generator@toy", "generate@toy", "align@toy", "train_fr@toy_spread", "train_fr_with_teacher@toy_kt",
                  "evaluate", "audit", "report"):
        assert f"Running stage '{stage}'" in out, f"{stage} did not run:\n{out}"
    assert len(list((repo / "artifacts" / "generated" / "toy").rglob("*.png"))) == 12 * 6
    spread = json.loads((repo / "artifacts" / "train_fr" / "toy_spread" / "metrics.json").read_text())
    kt = json.loads((repo / "artifacts" / "train_fr" / "toy_kt" / "metrics.json").read_text())
    assert (spread["objective"], spread["config"]["objective_kwargs"], spread["teacher"]) == ("toy_spread", {"power": 2.0}, None)
    assert (kt["objective"], kt["teacher"]) == ("kt", "artifacts/train_fr/toy_spread/model.pt")
    evaluation = (repo / "artifacts" / "evaluate" / "evaluation.json").read_text()
    assert '"toy_spread"' in evaluation and '"toy_kt"' in evaluation, "both runs are evaluated"
    assert "toy_spread" in (repo / "artifacts" / "report" / "results.md").read_text()
    audit = json.loads((repo / "artifacts" / "audit" / "audit.json").read_text())   # both FR runs trained on the toy set
    assert (audit["model_info"]["name"], audit["model_info"]["trained_on"], audit["threshold_source"]["unseen_by_model"]) == \
        ("toy_spread", "toy", True)
    assert list(audit["reference_models"]) == ["toy_kt"]
    assert {p: (repo / p).read_bytes() for p in before} == before
    again = _run([BIN / "dvc", "status"], repo, env)
    assert "up to date" in again, again
    import shutil
    shutil.rmtree(repo / "state" / "train_fr_toy_spread")             # a forced re-run from scratch
    model = (repo / "artifacts" / "train_fr" / "toy_spread" / "model.pt").read_bytes()
    _run([BIN / "dvc", "repro", "-f", "-s", "train_fr@toy_spread"], repo, env)
    _run([BIN / "dvc", "repro", "-f", "-s", "train_generator@toy"], repo, env)   # its model/ is read by generate@toy
    assert (repo / "artifacts" / "train_fr" / "toy_spread" / "model.pt").read_bytes() == model
    status = _run([BIN / "dvc", "status"], repo, env)
    stale = [l[:-1] for l in status.splitlines() if l.endswith(":") and not l[0].isspace()]
    assert stale == ["report"], status   # not generate, toy_kt (its teacher), evaluate or audit: only the stage times
