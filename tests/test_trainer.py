"""The FR trainer across processes: two `torchrun` ranks (gloo, CPU) end with identical weights, trained at the lr
scaled to the total batch; the stage command line writes a loadable model; a run resumed with data-loader workers
repeats an uninterrupted run without them."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from synthface_nb.core import load_checkpoint
from synthface_nb.data import ImageFolderDataset
from synthface_nb.fr_models import load_fr_model
from synthface_nb.testing import write_color_folder
from synthface_nb.trainer import TrainConfig, train_fr

TINY = dict(network="iresnet18", width=0.125, input_size=32, embedding_size=16, dropout=0.2, batch_size=4, lr_batch=4,
            log_every=1, num_threads=1, objective_kwargs={"head": "cosface", "head_kwargs": {"s": 16.0, "m": 0.2}})


def _env():
    # one thread per process: two ranks share this machine's two cores
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def test_ddp_ranks_end_identical(tmp_path):
    data = write_color_folder(tmp_path / "data", n_identities=4, per_identity=8, size=32)
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from synthface_nb.data import ImageFolderDataset
        from synthface_nb.distributed import init_distributed, shutdown_distributed
        from synthface_nb.trainer import TrainConfig, train_fr

        class DumpWeights:
            main_only = False
            def __call__(self, model, step):
                torch.save({{k: p.detach().clone() for k, p in model.named_parameters()}},
                           {str(tmp_path)!r} + f"/rank{{torch.distributed.get_rank()}}.pt")

        info, device = init_distributed("cpu")
        cfg = TrainConfig(**{TINY!r}, epochs=1, num_workers=0)
        train_fr(cfg, ImageFolderDataset({str(data)!r}), {str(tmp_path / "out")!r}, device=device,
                 callbacks=[DumpWeights()], progress=False)
        shutdown_distributed()
    """))
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
                         env=_env(), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert sorted(w0) == sorted(w1)
    assert all(torch.equal(w0[k], w1[k]) for k in w0), [k for k in w0 if not torch.equal(w0[k], w1[k])]
    ckpt = load_checkpoint(tmp_path / "out" / "checkpoint.pt", kind="fr_train")
    # 32 images, 4 per rank and 2 ranks: 4 global steps; the rank-0 checkpoint knows the world size and both RNG states
    assert (ckpt["step"], ckpt["world_size"], len(ckpt["rng"])) == (4, 2, 2)
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    assert all(torch.equal(ckpt["model"][k], w0[k]) for k in w0)
    # lr 0.1 per 4 images, 4 per rank on 2 ranks: the optimizer runs at 0.1 * 8 / 4 (the step schedule is flat in epoch 1)
    assert [h["lr"] for h in ckpt["history"]] == [0.2] * 4
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == [0.2, 0.2]


def test_stage_command_line(tmp_path):
    data = write_color_folder(tmp_path / "data", n_identities=3, per_identity=4, size=32)
    out = tmp_path / "fr"
    args = [sys.executable, "-m", "synthface_nb.fr_stages", "--data", str(data), "--out", str(out),
            "--set", "device='cpu'", "network='iresnet18'", "width=0.125", "input_size=32", "embedding_size=16",
            "batch_size=4", "num_workers=0", "num_threads=1", "epochs=1"]
    res = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert (m["steps"], m["finished"], m["n_identities"]) == (3, True, 3)
    fr = load_fr_model(out / "model.pt")
    assert fr.embed(torch.zeros(2, 3, 112, 112)).shape == (2, 16)
    bad = subprocess.run(args[:-1] + ["epoch=1"], env=_env(), capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "overrides of fr: unknown setting(s) epoch" in bad.stderr


def test_resume_with_workers_matches_uninterrupted_run(tmp_path):
    ds = ImageFolderDataset(write_color_folder(tmp_path / "data", n_identities=4, per_identity=8, size=32))
    cfg = TrainConfig(**TINY, epochs=1)
    straight = train_fr(cfg.replace(num_workers=0), ds, tmp_path / "a", device="cpu", progress=False)
    train_fr(cfg.replace(num_workers=2), ds, tmp_path / "b", device="cpu", max_steps=5, progress=False)
    resumed = train_fr(cfg.replace(num_workers=2), ds, tmp_path / "b", device="cpu", resume=True, progress=False)
    assert resumed.finished and resumed.losses == straight.losses


def test_two_view_objective_plugs_in_without_trainer_changes(tmp_path):
    """A MoCo-like objective (two views of one identity, label-free, (logits, labels) + plain CE outside) is one
    registered class: the trainer delivers its two views and trains it unchanged."""
    import torch.nn.functional as F
    from synthface_nb.objectives import Objective, objectives

    seen = []

    class TwoViewInfoNCE(Objective):
        n_views, needs_labels, view_source = 2, False, "same_identity"

        def __init__(self, ctx, temperature: float = 0.1):
            super().__init__()
            self.temperature = temperature

        def logits_and_labels(self, backbone, views):
            q, k = F.normalize(backbone(views[0])), F.normalize(backbone(views[1]))
            return q @ k.T / self.temperature, torch.arange(len(q), device=q.device)

        def forward(self, backbone, views, labels):
            seen.append((len(views), bool((views[0] != views[1]).any())))
            loss = F.cross_entropy(*self.logits_and_labels(backbone, views))
            return loss, {"nce": loss.detach()}

    objectives.register("two_view_demo")(TwoViewInfoNCE)
    try:
        ds = ImageFolderDataset(write_color_folder(tmp_path / "data", n_identities=4, per_identity=8, size=32))
        cfg = TrainConfig(**{**TINY, "objective": "two_view_demo", "objective_kwargs": {"temperature": 0.2}}, epochs=1,
                          num_workers=0)
        res = train_fr(cfg, ds, tmp_path / "out", device="cpu", progress=False)
    finally:
        objectives.unregister("two_view_demo")
    assert res.finished and all(np.isfinite(res.losses)) and "nce" in res.history[-1]
    assert seen[0] == (2, True)  # two different images of the same identity per sample
    assert load_fr_model(tmp_path / "out" / "model.pt").embedding_dim == 16


@pytest.mark.parametrize("objective, kwargs", [("moco", {"queue_size": 24, "temperature": 0.2}),
                                               ("vigface", {"num_virtual": 8, "head_kwargs": {"s": 16.0}})])
def test_ddp_label_free_and_virtual_prototype_objectives(tmp_path, objective, kwargs):
    """USynthFace's MoCo (queue, key encoder, shuffle-BN across ranks) and VIGFace's stage 1 (σ averaged over ranks,
    per-rank virtual draws) under torchrun with 2 processes: every rank ends with the same backbone and the same
    objective state (queue, key encoder weights, head rows, σ), and the queue holds the keys of both ranks' images."""
    data = write_color_folder(tmp_path / "data", n_identities=4, per_identity=8, size=32)
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        import synthface_nb.trainer as trainer
        from synthface_nb.data import ImageFolderDataset
        from synthface_nb.distributed import init_distributed, shutdown_distributed

        built = []
        def capture(*a, **k):
            built.append(trainer_build(*a, **k)); return built[-1]
        trainer_build, trainer.build_objective = trainer.build_objective, capture

        info, device = init_distributed("cpu")
        cfg = trainer.TrainConfig(**{{**{TINY!r}, "objective": {objective!r}, "objective_kwargs": {kwargs!r}}}, epochs=2,
                                  num_workers=0)
        res = trainer.train_fr(cfg, ImageFolderDataset({str(data)!r}), {str(tmp_path / "out")!r}, device=device, progress=False)
        torch.save({{"objective": built[0].state_dict(), "losses": res.losses}},
                   {str(tmp_path)!r} + f"/rank{{torch.distributed.get_rank()}}.pt")
        shutdown_distributed()
    """))
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
                         env=_env(), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    s0, s1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    o0, o1 = s0["objective"], s1["objective"]
    # BatchNorm running statistics are each rank's own (buffers are not broadcast, as for the backbone; in training
    # mode BN uses the batch's statistics, so they do not steer training): everything else must be equal
    shared = [k for k in o0 if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert sorted(o0) == sorted(o1) and [k for k in shared if not torch.equal(o0[k], o1[k])] == []
    assert s0["losses"] == s1["losses"] and all(np.isfinite(s0["losses"]))   # the logged loss is the all-reduced mean
    model = load_checkpoint(tmp_path / "out" / "checkpoint.pt", kind="fr_train")
    assert (model["step"], model["world_size"]) == (8, 2)     # 32 images, 4 per rank and 2 ranks: 4 steps an epoch
    if objective == "moco":   # 8 steps x 8 keys (4 from each rank) through a 24-key ring (one rank's alone: 8 x 4 % 24 = 8)
        assert int(o0["queue_ptr"]) == (8 * 8) % 24 == 16 and torch.allclose(o0["queue"].norm(dim=0), torch.ones(24), atol=1e-5)
        assert not torch.equal(o0["key_encoder.conv1.weight"], model["model"]["conv1.weight"])   # a momentum copy, not the backbone
    else:
        assert torch.isfinite(o0["sigma"]).all() and int(o0["steps"]) == 8 and o0["head.weight"].shape == (4 + 8, 16)
