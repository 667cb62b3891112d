"""GPU-node behaviour, checked on the CPU in a scratch copy of the repository: stages with `nproc: 2` (two gloo
processes) under `dvc repro` give the metrics of the same run launched by `torchrun` by hand; a `dvc repro`
killed mid-training continues from its last checkpoint when run again and ends where an uninterrupted run
ends; a queued `dvc exp` sweep runs and its results come back in `dvc exp show`."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import BIN, make_scratch_repo, run_command

TINY_FR = {"network": "iresnet18", "width": 0.125, "input_size": 32, "embedding_size": 16, "epochs": 2, "batch_size": 8,
           "lr_batch": 16, "warmup_epochs": 0.0, "num_workers": 0, "num_threads": 1, "log_every": 1, "device": "cpu", "eval_at_end": True}
TINY_GAN = {"resolution": 16, "batch_size": 8, "config": {"total_kimg": 0.048}, "snapshot_kimg": 0.024,
            "network": {"z_dim": 16, "w_dim": 16, "channel_max": 16, "d_map_layers": 1, "conv_clamp": None},
            "probe_epochs": 1, "eval_per_class": 2, "eval_classes": 4, "num_threads": 1, "device": "cpu"}
# metrics that depend on the machine's speed, not on what was computed
TIMING = {"seconds", "images_per_second", "data_wait_share", "img_per_s", "environment", "model"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo, env = make_scratch_repo(tmp_path_factory.mktemp("node"))
    sys.path.insert(0, str(repo))
    from synthface_nb.testing import write_color_folder, write_shape_classes
    write_color_folder(repo / "toydata" / "colours", n_identities=4, per_identity=8, size=32)
    write_shape_classes(repo / "toydata" / "shapes", n_classes=4, per_class=8, size=16)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["prepare"]["n_pairs"] = 200
    run = lambda **over: {"data": "toydata/colours", "objective": "cls", "objective_kwargs": {"head_kwargs": {"s": 16.0, "m": 0.2}},
                          "overrides": {**TINY_FR, **over}}
    params["fr_runs"] = {"two": run(nproc=2), "killed": run(epochs=40, checkpoint_every=4), "whole": run(epochs=40, checkpoint_every=4)}
    params["generators"]["tiny"] = {"family": "sface", "data": "toydata/shapes", "overrides": {**TINY_GAN, "nproc": 2}}
    params["generated"]["tiny"] = {"generator": "tiny", "overrides": {"images_per_identity": 3, "output_size": 16,
                                                                       "device": "cpu", "nproc": 2}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_command([BIN / "dvc", "pull", "-q", "data.dvc"], repo, env)
    run_command([BIN / "dvc", "repro", "-q", "prepare"], repo, env)
    return repo, env


def _metrics(path: Path) -> dict:
    m = json.loads(path.read_text())
    return {k: v for k, v in m.items() if k not in TIMING}


def _torchrun(args, repo, env):
    return run_command([BIN / "torchrun", "--standalone", "--nproc-per-node=2", *args], repo, {**env, "OMP_NUM_THREADS": "1"})


def test_fr_stage_with_two_processes_equals_torchrun_by_hand(repo):
    repo, env = repo
    run_command([BIN / "dvc", "repro", "-q", "train_fr@two"], repo, env)
    staged = json.loads((repo / "artifacts/train_fr/two/metrics.json").read_text())
    assert (staged["environment"]["nproc"], staged["environment"]["global_batch"], staged["steps"]) == (2, 16, 4)
    executed = (repo / "runs/train_fr_two.ipynb").read_text()
    assert "launching 2 processes" in executed, "the torchrun output streams into the executed notebook"
    sets = [f"{k}={v!r}" for k, v in TINY_FR.items()]
    _torchrun(["-m", "synthface_nb.fr_stages", "--data", "toydata/colours", "--out", "hand/two", "--objective", "cls",
               "--objective-kwargs", '{"head_kwargs": {"s": 16.0, "m": 0.2}}', "--benchmarks", "artifacts/prepare/benchmarks",
               "--set", *sets], repo, env)
    hand = _metrics(repo / "hand/two/metrics.json")
    assert hand["verification"] and hand["final_loss"] is not None
    assert hand == _metrics(repo / "artifacts/train_fr/two/metrics.json")


def test_gan_stages_with_two_processes_equal_torchrun_and_one_process_by_hand(repo):
    repo, env = repo
    run_command([BIN / "dvc", "repro", "-q", "train_generator@tiny"], repo, env)
    staged = json.loads((repo / "artifacts/generators/tiny/metrics.json").read_text())
    assert (staged["environment"]["nproc"], staged["kimg"]) == (2, 0.048)
    sets = [f"{k}={v!r}" for k, v in TINY_GAN.items()]
    _torchrun(["-m", "synthface_nb.sface", "train", "--data", "toydata/shapes", "--out", "hand/tiny", "--set", *sets], repo, env)
    assert _metrics(repo / "hand/tiny/metrics.json") == _metrics(repo / "artifacts/generators/tiny/metrics.json")
    names = lambda d: sorted(p.name for p in (repo / d / "model").iterdir())
    assert names("artifacts/generators/tiny") == names("hand/tiny")
    # generation sharded over two processes writes the images one process writes
    run_command([BIN / "dvc", "repro", "-q", "generate@tiny"], repo, env)
    report = json.loads((repo / "artifacts/generate/tiny/report.json").read_text())
    assert (report["world_size"], report["images_written"], report["dataset"]["n_images"]) == (2, 12, 12)
    run_command([sys.executable, "-m", "synthface_nb.sface", "generate", "--generator", "artifacts/generators/tiny",
                 "--out", "hand/generated", "--report", "hand/generate", "--set", "images_per_identity=3",
                 "output_size=16", "device='cpu'"], repo, env)
    files = lambda d: {p.relative_to(repo / d): p.read_bytes() for p in sorted((repo / d).rglob("*.png"))}
    assert files("artifacts/generated/tiny") == files("hand/generated") and len(files("hand/generated")) == 12


def test_killed_dvc_repro_continues_from_the_last_checkpoint(repo):
    repo, env = repo
    state = repo / "state" / "train_fr_killed" / "checkpoint.pt"
    proc = subprocess.Popen([BIN / "dvc", "repro", "train_fr@killed"], cwd=repo, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from synthface_nb.core import load_checkpoint
    step, deadline = 0, time.monotonic() + 300
    while step < 8 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try: step = int(load_checkpoint(state)["step"]) if state.exists() else 0
        except (ValueError, FileNotFoundError): pass   # replaced while we read it
    os.killpg(proc.pid, signal.SIGKILL); proc.wait()
    assert 8 <= step < 160, f"the run was not caught mid-training (checkpoint at step {step})"
    assert not (repo / "artifacts/train_fr/killed/metrics.json").exists()
    run_command([BIN / "dvc", "repro", "-q", "train_fr@killed"], repo, env)
    executed = (repo / "runs/train_fr_killed.ipynb").read_text()
    resumed = int(executed.split("continuing the run from step ")[1].split("\\n")[0].split()[0])
    assert resumed >= step, f"resumed at {resumed}, the killed run had reached {step}"
    run_command([BIN / "dvc", "repro", "-q", "train_fr@whole"], repo, env)
    killed, whole = (_metrics(repo / f"artifacts/train_fr/{n}/metrics.json") for n in ("killed", "whole"))
    assert killed["steps"] == whole["steps"] == 160
    assert {**killed, "run": "-"} == {**whole, "run": "-"}
    loss = lambda n: (repo / f"artifacts/train_fr/{n}/live/plots/metrics/loss.tsv").read_text()
    assert loss("killed") == loss("whole"), "every logged loss of the interrupted run equals the uninterrupted run's"
    assert "up to date" in run_command([BIN / "dvc", "status", "train_fr@killed"], repo, env)


def test_queued_dvc_exp_sweep_runs_and_shows_both_results(repo):
    repo, env = repo
    for seed in (1, 2):
        run_command([BIN / "dvc", "exp", "run", "--queue", "-q", "-S", f"seed={seed}", "-n", f"seed{seed}",
                     "-C", "toydata/colours", "train_fr@two"], repo, env)
    run_command([BIN / "dvc", "exp", "run", "--run-all", "-j", "1"], repo, env)
    shown = json.loads(run_command([BIN / "dvc", "exp", "show", "--json"], repo, env))
    text = json.dumps(shown)
    assert '"seed1"' in text and '"seed2"' in text, text[:2000]
