"""Run the first pipeline stage in a scratch copy of the repository and check that DVC caches it:
`dvc pull` works offline from the in-repo remote, and a second `dvc repro` changes nothing."""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tracked_files():
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [p for p in out.split("\0") if p]


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(args, cwd, env):
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(map(str, args))} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


@pytest.fixture(scope="module")
def scratch_repo(tmp_path_factory):
    dst = tmp_path_factory.mktemp("repo")
    for rel in _tracked_files():
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    _run(["git", "init", "-q"], dst, env)
    return dst, env


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
