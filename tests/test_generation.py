"""SFace-protocol generation across processes: two `torchrun` ranks write exactly the files of one process (and one
manifest); a generation killed with SIGKILL resumes to exactly the files of an uninterrupted run."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from synthface_nb.core import save_checkpoint
from synthface_nb.generation import read_manifest
from synthface_nb.stylegan2 import Generator, generator_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _checkpoint(path: Path, classes: int) -> Path:
    torch.manual_seed(0)
    G = Generator(z_dim=16, c_dim=classes, w_dim=16, img_resolution=16, mapping=dict(num_layers=1),
                  synthesis=dict(channel_base=128, channel_max=16))
    for layer in G.synthesis.noise_layers: layer.noise_strength.data.fill_(0.2)  # make the per-image noise matter
    return save_checkpoint(path, generator_checkpoint(G), kind="generator")


def _cli(*args):
    return [sys.executable, "-m", "synthface_nb.generation", *map(str, args)]


def _files(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_torchrun_shards_match_one_process(tmp_path):
    g = _checkpoint(tmp_path / "g.pt", classes=7)
    common = ["--generator", g, "--per-identity", 4, "--batch-size", 4, "--seed", 11, "--device", "cpu"]
    res = subprocess.run(_cli("--out", tmp_path / "one", *common), env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                          "synthface_nb.generation", "--out", tmp_path / "two", *map(str, common)],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert one == two
    recs = read_manifest(tmp_path / "two" / "manifest.jsonl")
    assert [(r["identity"], r["index"]) for r in recs] == [(k, i) for k in range(7) for i in range(4)]
    assert all(1 <= r["seed"] <= 1000 and r["sampling"]["truncation_psi"] == 1.0 for r in recs)
    assert len({r["seed"] for r in recs if r["identity"] == 3}) == 4  # distinct seeds within a class


def test_killed_generation_resumes_exactly(tmp_path):
    g = _checkpoint(tmp_path / "g.pt", classes=300)
    common = ["--generator", g, "--per-identity", 6, "--batch-size", 12, "--seed", 2, "--device", "cpu"]
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli("--out", out, *common), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and sum(1 for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) >= 10:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the generation finished before it could be killed"
    done = {p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert 10 <= len(done) < 300 and not (out / "manifest.jsonl").exists()
    assert all(len(list((out / d).glob("*.png"))) == 6 for d in done)  # complete classes only

    res = subprocess.run(_cli("--out", out, *common), env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f'"skipped_identities": {len(done)}' in res.stdout
    res = subprocess.run(_cli("--out", tmp_path / "straight", *common), env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert _files(out) == _files(tmp_path / "straight")  # no duplicate, missing or different image; no temporary folder
    assert len(read_manifest(out / "manifest.jsonl")) == 300 * 6
