"""A forced re-run of a training stage (its state deleted, then `dvc repro -f -s STAGE`) must not re-run the stages
after it: every file they depend on comes out byte-identical. The generator folder `generate` reads
(`artifacts/generators/<name>/model/`) and the `model.pt` that `evaluate`, the teacher-conditioned generators and the
KT/CL runs read are pure functions of the run; the run's records (training state, log, metrics with wall times and
images per second) differ and live beside them, outside every downstream dependency. Checked here at toy scale by
running each stage's training function twice into the same paths, as the pipeline does, and on dvc.yaml's layout."""
import shutil
from pathlib import Path

import yaml

from synthface_nb.fr_models import save_fr_model
from synthface_nb.fr_stages import train_fr_run
from synthface_nb.generator_recipes import train_generator_run
from synthface_nb.procedural import write_procedural_dataset
from synthface_nb.testing import write_color_folder, write_shape_classes

ROOT = Path(__file__).resolve().parents[1]
TINY_FR = {"network": "iresnet18", "width": 0.125, "input_size": 32, "embedding_size": 16, "epochs": 2, "batch_size": 8,
           "lr_batch": 16, "warmup_epochs": 0.0, "num_workers": 0, "num_threads": 1, "log_every": 1, "device": "cpu"}
TINY_GAN = {"resolution": 16, "batch_size": 8, "config": {"total_kimg": 0.048}, "snapshot_kimg": 0.024,
            "network": {"z_dim": 16, "w_dim": 16, "channel_max": 16, "d_map_layers": 1, "conv_clamp": None},
            "probe_epochs": 1, "eval_per_class": 2, "eval_classes": 4, "num_threads": 1, "device": "cpu"}
TINY_ARCBIFACE = {"resolution": 16, "batch_size": 4, "network": {"z_dim": 8, "w_dim": 8, "channel_max": 16, "map_layers": 1,
                  "d_map_layers": 1, "conv_clamp": None}, "config": {"total_kimg": 0.016, "augment": {"spec": None}},
                  "snapshot_kimg": 0.008, "probe_conditions": 4, "num_threads": 1, "device": "cpu"}
TINY_DIFFUSION = {"resolution": 16, "batch_size": 8, "total_kimg": 0.048, "snapshot_kimg": 0.024, "landmark_bank_size": 16,
                  "denoiser": {"name": "dit", "patch_size": 4, "width": 32, "depth": 1, "heads": 2},
                  "sampling": {"steps": 4}, "landmarks": "template", "probe_identities": 2, "probe_sampling": {"steps": 2},
                  "num_threads": 1, "device": "cpu"}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _twice(train, out: Path, state: Path) -> tuple[dict, dict]:
    "Every file of `out` after `train()`, then after its state and outputs are deleted and it runs again"
    train()
    first = _files(out)
    shutil.rmtree(out); shutil.rmtree(state)
    train()
    return first, _files(out)


def _same_generator_folder(first: dict, again: dict, expected: set[str]):
    model = lambda files: {k: v for k, v in files.items() if k.startswith("model/")}
    names = {k.removeprefix("model/") for k in model(first) if not k.startswith("model/grids/")}
    assert names == expected, names
    assert any(k.startswith("model/grids/nimg") for k in first)
    assert model(first) == model(again), [k for k in model(first) if first[k] != again.get(k)]
    assert {"run/training-state.pt", "run/log.jsonl"} <= set(first)
    assert first["run/log.jsonl"] != again["run/log.jsonl"], "the log holds the run's speed: it differs, and nothing reads it"


def test_fr_model_is_byte_identical_after_a_forced_rerun(tmp_path):
    data = write_color_folder(tmp_path / "data", n_identities=4, per_identity=8, size=32)
    run = {"data": str(data), "objective": "cls", "objective_kwargs": {"head_kwargs": {"s": 16.0, "m": 0.2}}, "overrides": TINY_FR}
    out, state = tmp_path / "artifacts/train_fr/a", tmp_path / "state/train_fr_a"
    first, again = _twice(lambda: train_fr_run("a", run, out, state_dir=state, progress=False), out, state)
    assert first["model.pt"] == again["model.pt"]
    assert first != again, "the run's folder (checkpoint history, metrics with seconds) differs: evaluate must not depend on it"


def test_sface_generator_folder_is_byte_identical_after_a_forced_rerun(tmp_path):
    data = write_shape_classes(tmp_path / "data", n_classes=4, per_class=8, size=16)
    out, state = tmp_path / "artifacts/generators/g", tmp_path / "state/train_generator_g"
    entry = {"family": "sface", "data": str(data), "overrides": TINY_GAN}
    first, again = _twice(lambda: train_generator_run("g", entry, out, state_dir=state, progress=False), out, state)
    _same_generator_folder(first, again, {"generator.pt", "recipe.json"})


def test_arcbiface_generator_folder_is_byte_identical_after_a_forced_rerun(tmp_path):
    import torch
    from synthface_nb.backbones import backbones
    write_procedural_dataset(tmp_path / "paired", 4, 4, seed=3, with_nir=True, progress=False)
    torch.manual_seed(0)
    save_fr_model(tmp_path / "teacher.pt", backbones.build("iresnet18", width=0.125, input_size=32, embedding_size=16))
    out, state = tmp_path / "artifacts/generators/ab", tmp_path / "state/train_generator_ab"
    entry = {"family": "arcbiface", "data": str(tmp_path / "paired"), "teacher": str(tmp_path / "teacher.pt"),
             "overrides": TINY_ARCBIFACE}
    first, again = _twice(lambda: train_generator_run("ab", entry, out, state_dir=state, progress=False), out, state)
    _same_generator_folder(first, again, {"condition_model.pt", "condition_stats.json", "generator.pt",
                                          "identity_features.npz", "recipe.json"})



def test_vigface_generator_folder_is_byte_identical_after_a_forced_rerun(tmp_path):
    data = write_color_folder(tmp_path / "data", n_identities=4, per_identity=6, size=32)
    stage1 = {"data": str(data), "objective": "vigface", "objective_kwargs": {"num_virtual": 8, "head_kwargs": {"s": 16.0}},
              "overrides": {**TINY_FR, "embedding_size": 32}}
    train_fr_run("stage1", stage1, tmp_path / "stage1", progress=False)
    out, state = tmp_path / "artifacts/generators/v", tmp_path / "state/train_generator_v"
    entry = {"family": "vigface", "data": str(data), "teacher": str(tmp_path / "stage1/model.pt"), "overrides": TINY_DIFFUSION}
    first, again = _twice(lambda: train_generator_run("v", entry, out, state_dir=state, progress=False), out, state)
    _same_generator_folder(first, again, {"condition_model.pt", "generator.pt", "recipe.json"})

def test_dvc_yaml_downstream_stages_depend_on_models_only():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    runs = {**params["fr_runs"], **params["fr_runs_with_teacher"]}
    fr_deps = [d for d in stages["evaluate"]["deps"] if d.startswith("artifacts/train_fr")]
    assert fr_deps == sorted(f"artifacts/train_fr/{k}/model.pt" for k in runs)
    assert "artifacts/generators/${item.generator}/model" in stages["generate"]["do"]["deps"]
    for stage in ("train_generator", "train_generator_with_teacher"):
        outs = stages[stage]["do"]["outs"]
        assert {"artifacts/generators/${key}/model", "artifacts/generators/${key}/run"} <= set(outs), outs
    teachers = {e["teacher"] for group in ("generators_with_teacher", "fr_runs_with_teacher") for e in params[group].values()}
    assert all(t.endswith("/model.pt") for t in teachers), teachers   # a teacher is a model file, never a run folder
