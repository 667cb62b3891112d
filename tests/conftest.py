import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def run_stage(stage: str, cwd: Path, **params) -> Path:
    "Execute nbs/stages/<stage>.ipynb in `cwd` with papermill on a parameter file (`-f`, as a user runs a stage by hand)"
    import yaml
    out = cwd / "runs" / f"{stage}.ipynb"
    out.parent.mkdir(exist_ok=True)
    (cwd / "runs" / f"{stage}.yaml").write_text(yaml.safe_dump(params))
    args = [Path(sys.executable).parent / "papermill", ROOT / "nbs" / "stages" / f"{stage}.ipynb", out,
            "--log-level", "WARNING", "-f", cwd / "runs" / f"{stage}.yaml"]
    res = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert res.returncode == 0, f"stage {stage} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return out


BIN = Path(sys.executable).parent


def repository_files() -> list[str]:
    "The repository's files as git sees them (tracked, and untracked but not ignored)"
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [p for p in out.split("\0") if p]


def run_command(args, cwd, env):
    "Run `args` in `cwd`; fail the test with its output when it fails; return stdout + stderr"
    res = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(map(str, args))} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


def make_scratch_repo(dst: Path) -> tuple[Path, dict]:
    "A committed copy of the repository in `dst` (dvclive needs a commit) and the environment to run dvc in it"
    import shutil
    for rel in repository_files():
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    run_command(["git", "init", "-q"], dst, env)
    run_command(["git", "add", "-A"], dst, env)
    run_command(["git", "-c", "user.name=test", "-c", "user.email=test@example.org", "commit", "-q", "-m", "scratch"], dst, env)
    return dst, env


def pytest_collection_modifyitems(config, items):
    "Tests marked `slow` (minutes on CPU) run only when asked for: `pytest -m slow`"
    if "slow" in (config.getoption("-m") or ""): return
    import pytest
    skip = pytest.mark.skip(reason="slow (minutes on CPU): run with -m slow")
    for item in items:
        if "slow" in item.keywords: item.add_marker(skip)
