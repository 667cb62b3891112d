"""StyleGAN2-ADA training across processes: two `torchrun` ranks (gloo, CPU) keep identical networks and resume
exactly; a training process killed with SIGKILL after a snapshot resumes to exactly the losses and weights of an
uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from synthface_nb.core import load_checkpoint
from synthface_nb.testing import write_shape_classes

ROOT = Path(__file__).resolve().parents[1]

# a 16-px configuration: batch 4, R1 every 4th step and path length every 2nd, ADA moving quickly
TINY = textwrap.dedent("""
    from synthface_nb.stylegan2 import stylegan2_config
    from synthface_nb.stylegan2_training import training_preset
    def tiny_config(classes, total_kimg):
        cfg = training_preset("cpu", classes, batch_size=4, total_kimg=total_kimg, G_reg_interval=2, D_reg_interval=4,
                              augment={"p": 0.2, "kimg": 0.1, "interval": 2}, loss={"pl_weight": 2.0, "style_mixing_prob": 0.9})
        cfg["networks"] = stylegan2_config(16, classes, z_dim=16, w_dim=16, channel_base=256, channel_max=32,
                                           d_map_layers=1, mbstd_group_size=2, conv_clamp=None)
        return cfg
""")


def _env():
    # one thread per process: ranks share this machine's two cores, and equal thread counts keep float sums identical
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_ddp_ranks_stay_identical(tmp_path):
    data = write_shape_classes(tmp_path / "data", n_classes=4, per_class=6, size=16)
    script = tmp_path / "ddp.py"
    script.write_text(TINY + textwrap.dedent(f"""
        import torch
        from synthface_nb.data import ImageFolderDataset, TrainingImages
        from synthface_nb.distributed import init_distributed, shutdown_distributed
        from synthface_nb.stylegan2_training import build_training_state, training_step
        info, device = init_distributed("cpu")
        ds = ImageFolderDataset({str(data)!r})
        cfg = tiny_config(ds.num_classes, 1.0)
        st = build_training_state(cfg, seed=3, device=device)
        cond = lambda idx: torch.nn.functional.one_hot(torch.as_tensor(ds.labels[idx]), ds.num_classes).float()
        batches = TrainingImages(ds, 16).batches(cfg["batch_size"], 3, 0, info.rank, info.world_size)
        for _ in range(5):
            imgs, idx = next(batches)
            assert imgs.shape[0] == 2  # each rank takes half of the global batch
            training_step(st, cfg, imgs, idx, cond, len(ds), seed=3, rank=info.rank, device=device)
        torch.save({{"G": st.G.state_dict(), "D": st.D.state_dict(), "G_ema": st.G_ema.state_dict(),
                    "p": float(st.augment_pipe.p), "idx": idx.tolist()}}, {str(tmp_path)!r} + f"/rank{{info.rank}}.pt")
        shutdown_distributed()
    """))
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["idx"] != r1["idx"]  # different data on each rank ...
    for net in ("G", "D", "G_ema"):  # ... and still the same networks: gradients were averaged
        assert all(torch.equal(r0[net][k], r1[net][k]) for k in r0[net]), [k for k in r0[net] if not torch.equal(r0[net][k], r1[net][k])]
    assert r0["p"] == r1["p"]  # ADA statistics are reduced over ranks too


def test_torchrun_training_resumes_exactly(tmp_path):
    """Two ranks stopped between ADA updates resume to exactly the uninterrupted run: the checkpoint holds every
    rank's path-length mean and ADA's partial sums of all ranks. SFace's CLI sizes the minibatch-std group for the world size."""
    data = write_shape_classes(tmp_path / "data", n_classes=4, per_class=6, size=16)
    script = tmp_path / "resume.py"
    script.write_text(TINY + textwrap.dedent(f"""
        from synthface_nb.data import ImageFolderDataset
        from synthface_nb.distributed import init_distributed
        from synthface_nb.sface import main
        from synthface_nb.stylegan2_training import train_stylegan2
        info, device = init_distributed("cpu")
        ds = ImageFolderDataset({str(data)!r})
        cfg = tiny_config(ds.num_classes, 0.028)  # 7 steps of 4 images (2 per rank); ADA updates after steps 2, 4, 6
        run = lambda out, **kw: train_stylegan2(cfg, ds, {str(tmp_path)!r} + out, seed=7, snapshot_kimg=1, log_every=1,
                                                progress=False, **kw)
        run("/straight")
        run("/resumed", max_steps=3)  # checkpointed after step 3: partial ADA sums on both ranks
        run("/resumed")
        main(["train", "--data", {str(data)!r}, "--out", {str(tmp_path / "cli")!r}, "--set", "resolution=16", "batch_size=4",
              "config={{'total_kimg': 0.004}}", "probe_epochs=1", "eval_per_class=2", "eval_classes=4", "device=cpu"])  # last: it leaves the process group
    """))
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    a, b = (load_checkpoint(tmp_path / d / "training-state.pt") for d in ("straight", "resumed"))
    assert a["step"] == b["step"] == 7 and a["world_size"] == 2
    assert a["pl_mean"][0] != a["pl_mean"][1]  # the ranks' means differ, so restoring rank 0's everywhere would show
    assert a["ada"]["count"] == 4  # one real pass (2 images) on each rank since the last update, summed over ranks
    for net in ("G", "D", "G_ema"):
        assert all(torch.equal(a[net][k], b[net][k]) for k in a[net]), net
    assert (a["ada"], a["pl_mean"]) == (b["ada"], b["pl_mean"])
    read = lambda d: [{k: v for k, v in json.loads(l).items() if k != "img_per_s"} for l in (d / "log.jsonl").read_text().splitlines()]
    assert read(tmp_path / "straight") == read(tmp_path / "resumed")
    cli = load_checkpoint(tmp_path / "cli" / "run" / "training-state.pt")["config"]
    assert cli["batch_size"] == 4 and cli["networks"]["D"]["rgb"]["mbstd_group_size"] == 2  # min(4 // 2 ranks, 4)


def test_killed_training_resumes_exactly(tmp_path):
    data = write_shape_classes(tmp_path / "data", n_classes=4, per_class=6, size=16)
    script = tmp_path / "train.py"
    script.write_text(TINY + textwrap.dedent(f"""
        import sys
        from synthface_nb.data import ImageFolderDataset
        from synthface_nb.stylegan2_training import train_stylegan2
        ds = ImageFolderDataset({str(data)!r})
        # 40 steps of 4 images; a checkpoint every 5 steps
        train_stylegan2(tiny_config(ds.num_classes, 0.16), ds, sys.argv[1], seed=7, snapshot_kimg=0.02, log_every=1,
                        progress=False)
    """))
    run = lambda out: subprocess.run([sys.executable, str(script), str(out)], env=_env(), capture_output=True, text=True, timeout=300)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(killed)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        log = killed / "log.jsonl"
        steps = [json.loads(l)["step"] for l in log.read_text().splitlines()] if log.exists() else []
        if (killed / "training-state.pt").exists() and steps and steps[-1] % 5 != 0 and steps[-1] > 5:
            proc.send_signal(signal.SIGKILL)  # between snapshots: the log runs ahead of the checkpoint
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the training process finished before it could be killed"
    ckpt_step = load_checkpoint(killed / "training-state.pt")["step"]
    assert 0 < ckpt_step < 40

    res = run(killed)
    assert res.returncode == 0, res.stdout + res.stderr
    res = run(tmp_path / "straight")
    assert res.returncode == 0, res.stdout + res.stderr

    read = lambda d: [{k: v for k, v in json.loads(l).items() if k != "img_per_s"} for l in (d / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in read(killed)] == list(range(1, 41))
    assert read(killed) == read(tmp_path / "straight")
    a, b = (load_checkpoint(d / "training-state.pt") for d in (killed, tmp_path / "straight"))
    assert a["step"] == b["step"] == 40
    for net in ("G", "D", "G_ema"):
        assert all(torch.equal(a[net][k], b[net][k]) for k in a[net])
    assert a["ada"] == b["ada"] and a["pl_mean"] == b["pl_mean"]
