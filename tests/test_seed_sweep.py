"""tools/seed_sweep.py on a recorded `dvc exp show --json` (DVC 3's layout): a baseline at seed 0, two seed
experiments, an lr experiment and a queued one; every figure below is computed by hand from the recording."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORDED = ROOT / "tests/data/dvc_exp_show_seeds.json"
spec = importlib.util.spec_from_file_location("seed_sweep", ROOT / "tools/seed_sweep.py")
sweep = importlib.util.module_from_spec(spec); spec.loader.exec_module(sweep)


def test_seed_runs_take_seed_only_experiments_and_the_baseline():
    runs, notes = sweep.seed_runs(json.loads(RECORDED.read_text()))
    assert sorted(runs) == [0, 1, 2]
    assert sweep.accuracy(runs[1], "usynthface", "procedural") == 64.0
    assert sweep.accuracy(runs[0], "sface_cl", "procedural") == 87.2   # the baseline's, not the lr experiment's 80.0
    assert notes == ["lr-005: differs from the baseline in more than the seed, left out", "seed-3: queued, not collected"]


def test_sweep_table_mean_sd_and_orderings():
    runs, _ = sweep.seed_runs(json.loads(RECORDED.read_text()))
    lines = sweep.sweep_markdown(runs).splitlines()
    # sface_cls: 77.2, 79.0, 76.0 -> mean 77.4, sd sqrt((0.04 + 2.56 + 1.96) / 2) = 1.51
    assert "| sface_cls | 77.2 | 79.0 | 76.0 | 77.4 ± 1.5 |" in lines
    # usynthface: 70, 64, 69 -> mean 67.67, sd sqrt((5.44 + 13.44 + 1.78) / 2) = 3.21
    assert "| usynthface | 70.0 | 64.0 | 69.0 | 67.7 ± 3.2 |" in lines
    assert "| teacher | 87.5 | 88.0 | 87.0 | 87.5 ± 0.5 |" in lines
    assert not any(l.startswith(("| arcbiface_vis |", "| arcbiface_vis_nir |")) for l in lines)   # no procedural figure
    assert "| sface_cl > sface_cls | procedural | yes | yes | yes | yes |" in lines
    assert "| usynthface > untrained | procedural | yes | no | yes | no: fails in 1 of 3 |" in lines
    assert "| arcbiface_vis_nir > arcbiface_vis | procedural_nir_vis | yes | yes | no | no: fails in 1 of 3 |" in lines
    assert "| vigface > untrained | procedural | – | – | – | n/a |" in lines


def test_one_seed_has_no_sd():
    runs, _ = sweep.seed_runs(json.loads(RECORDED.read_text()))
    assert "| teacher | 87.5 | 87.5 |" in sweep.sweep_markdown({0: runs[0]}).splitlines()


def test_cli_queue_and_collect(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, str(ROOT / "tools/seed_sweep.py"), *a], capture_output=True, text=True, check=True)
    assert run("queue", "1", "2").stdout.splitlines()[:2] == ["dvc exp run --queue -S seed=1 -n seed-1",
                                                              "dvc exp run --queue -S seed=2 -n seed-2"]
    res = run("collect", "--json", str(RECORDED), "--out", str(tmp_path / "sweep.md"))
    assert (tmp_path / "sweep.md").read_text() == sweep.sweep_markdown(sweep.seed_runs(json.loads(RECORDED.read_text()))[0])
    assert "seed-3: queued, not collected" in res.stderr
