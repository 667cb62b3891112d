"""The papermill batch runner end to end (`python -m synthface_nb.batch`): real notebooks executed by papermill in
child processes, a failing run kept apart from the others, a time limit, one GPU per concurrent run, and a re-run
that executes only what is not done."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]

# A tiny stage notebook: each execution appends its name to executions.log (in the working directory), then it
# fails when told to, sleeps when told to, and records a metric and the GPU it was given.
CELLS = [
    'name = "x"\nfail = False\nsleep = 0\nvalue = 1.0',
    "import os, time\nfrom pathlib import Path\nfrom synthface_nb.batch import record_metrics",
    'Path(os.environ["BATCH_RUN_DIR"], "kernel.pid").write_text(str(os.getpid()))\n'
    'with open("executions.log", "a") as f: f.write(name + "\\n")',
    'if fail: raise ValueError(f"{name} was told to fail")',
    "time.sleep(sleep)",
    'record_metrics({"value": value * 2, "gpu": int(os.environ.get("CUDA_VISIBLE_DEVICES", "-1"))})',
]


def write_notebook(path: Path) -> Path:
    cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    cells[0].metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "python3",
                                                                        "language": "python"}})
    nbformat.write(nb, path)
    return path


def batch(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "OMP_NUM_THREADS": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run([sys.executable, "-m", "synthface_nb.batch", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def status(tmp_path: Path, run: str, batch_name: str = "proof") -> dict:
    return json.loads((tmp_path / "runs" / batch_name / run / "status.json").read_text())


def executions(tmp_path: Path) -> list[str]:
    return (tmp_path / "executions.log").read_text().split()


def test_three_runs_one_fails_then_rerun_executes_only_the_failed_one(tmp_path):
    write_notebook(tmp_path / "tiny.ipynb")
    runs = {"a": {"parameters": {"name": "a", "value": 1.0}}, "b": {"parameters": {"name": "b", "fail": True}},
            "c": {"parameters": {"name": "c", "value": 3.0}}}
    (tmp_path / "proof.yaml").write_text(yaml.safe_dump({"name": "proof", "notebook": "tiny.ipynb", "runs": runs}))

    res = batch(tmp_path, ["proof.yaml", "--keep-going"])
    assert res.returncode == 1, res.stdout + res.stderr
    assert sorted(executions(tmp_path)) == ["a", "b", "c"]
    a, b, c = (status(tmp_path, r) for r in "abc")
    assert (a["status"], b["status"], c["status"]) == ("ok", "failed", "ok")
    # index: the cell's place in tiny.ipynb; execution_count: its In [n] in the executed notebook (after the injected cell)
    assert b["cell"] == {"index": 3, "execution_count": 5, "first_line": 'if fail: raise ValueError(f"{name} was told to fail")'}
    assert b["error"] == {"ename": "ValueError", "evalue": "b was told to fail"}
    assert (a["metrics"], c["metrics"]) == ({"value": 2.0, "gpu": -1}, {"value": 6.0, "gpu": -1})
    assert a["device"] == "cpu" and a["host"] and a["duration_s"] > 0 and len(a["digest"]) == 64
    run_a = tmp_path / "runs" / "proof" / "a"
    assert yaml.safe_load((run_a / "parameters.yaml").read_text()) == {"name": "a", "value": 1.0}
    executed = nbformat.read(run_a / "notebook.ipynb", as_version=4)
    assert any("injected-parameters" in cell.metadata.get("tags", []) for cell in executed.cells)
    summary = json.loads((tmp_path / "runs" / "proof" / "summary.json").read_text())
    assert [(r["run"], r["status"]) for r in summary["runs"]] == [("a", "ok"), ("b", "failed"), ("c", "ok")]
    table = res.stdout[res.stdout.index("run  "):].splitlines()   # the summary table ends the output
    assert table[0].split() == ["run", "status", "duration_s", "value", "gpu", "failure"]
    assert table[2].split()[:2] == ["b", "failed"] and table[2].endswith("cell 3: ValueError: b was told to fail")

    stamps = {r: (tmp_path / "runs" / "proof" / r / "status.json").stat().st_mtime_ns for r in "ac"}
    res = batch(tmp_path, ["proof.yaml", "--keep-going"])
    assert res.returncode == 1, res.stdout + res.stderr   # b still fails
    assert sorted(executions(tmp_path)) == ["a", "b", "b", "c"]
    assert {r: (tmp_path / "runs" / "proof" / r / "status.json").stat().st_mtime_ns for r in "ac"} == stamps
    summary = json.loads((tmp_path / "runs" / "proof" / "summary.json").read_text())
    assert [r["status"] for r in summary["runs"]] == ["skipped (done)", "failed", "skipped (done)"]
    assert summary["runs"][0]["metrics"] == {"value": 2.0, "gpu": -1}   # a skipped run keeps its numbers in the table

    runs["b"]["parameters"]["fail"] = False   # the fix: b's parameters change, so b is due; a and c are not
    (tmp_path / "proof.yaml").write_text(yaml.safe_dump({"name": "proof", "notebook": "tiny.ipynb", "runs": runs}))
    res = batch(tmp_path, ["proof.yaml"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(executions(tmp_path)) == ["a", "b", "b", "b", "c"]
    assert status(tmp_path, "b")["status"] == "ok" and "error" not in status(tmp_path, "b")


def test_timeout_kills_the_run_and_its_kernel_while_the_other_gpu_finishes(tmp_path):
    write_notebook(tmp_path / "tiny.ipynb")
    doc = {"name": "limits", "notebook": "tiny.ipynb", "parameters": {"name": "{run_dir}"},
           "grid": {"sleep": [0, 300]}}
    (tmp_path / "limits.yaml").write_text(yaml.safe_dump(doc))
    start = time.monotonic()
    res = batch(tmp_path, ["limits.yaml", "--keep-going", "--timeout", "15", "--gpus", "0,1"])
    assert time.monotonic() - start < 120, "the time limit did not stop the sleeping run"
    assert res.returncode == 1, res.stdout + res.stderr
    quick, slow = status(tmp_path, "sleep=0", "limits"), status(tmp_path, "sleep=300", "limits")
    assert (quick["status"], slow["status"]) == ("ok", "timed_out")
    assert slow["cell"]["first_line"] == "time.sleep(sleep)" and slow["timeout_s"] == 15
    assert "cell 4: time limit of 15 s" in res.stdout   # the summary table says where it stopped
    assert {quick["device"], slow["device"]} == {"0", "1"}   # one GPU each
    assert quick["metrics"]["gpu"] == int(quick["device"])   # the kernel saw only its GPU
    assert sorted(executions(tmp_path)) == ["runs/limits/sleep=0", "runs/limits/sleep=300"]   # {run_dir} filled in
    kernel = int((tmp_path / "runs" / "limits" / "sleep=300" / "kernel.pid").read_text())
    for _ in range(50):   # the orphaned kernel is reaped by init shortly after the kill
        if not psutil.pid_exists(kernel) or psutil.Process(kernel).status() == psutil.STATUS_ZOMBIE: break
        time.sleep(0.1)
    else: raise AssertionError(f"kernel {kernel} of the timed-out run is still running")


def test_bad_batch_file_is_refused_before_anything_runs(tmp_path):
    write_notebook(tmp_path / "tiny.ipynb")
    (tmp_path / "bad.yaml").write_text("notebook: tiny.ipynb\nruns: {a: {parameters: {}, retries: 2}}\n")
    res = batch(tmp_path, ["bad.yaml"])
    assert res.returncode == 2
    assert "bad.yaml: run a: unknown key(s) retries; known: notebook, parameter_file, parameters" in res.stderr
    assert not (tmp_path / "runs").exists()
