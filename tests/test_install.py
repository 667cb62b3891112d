"""Installing elsewhere: the lock's CUDA wheels are marked for Linux x86-64 so the lock resolves on macOS arm64 and
Linux aarch64; every third-party distribution the package imports is declared in pyproject.toml; no module imports
tqdm's notebook bars (they print an ipywidgets warning in JupyterLab)."""
import ast
import json
import re
import subprocess
import sys
import tomllib
import urllib.request
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
LINUX_X86_64 = Marker('sys_platform == "linux" and platform_machine == "x86_64"')
PY = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"   # the lock was frozen on this one
TARGETS = {   # pip --platform tags and the marker environment of the same machine
    "macos-arm64": (["macosx_14_0_arm64"], {"sys_platform": "darwin", "platform_machine": "arm64",
                                             "platform_system": "Darwin"}),
    "linux-aarch64": (["manylinux_2_28_aarch64", "manylinux2014_aarch64"],
                      {"sys_platform": "linux", "platform_machine": "aarch64", "platform_system": "Linux"}),
}
# Pinned releases that exist only as source and are pure Python (omegaconf 2.3, under dvc, pins this one).
PURE_PYTHON_SDISTS = {"antlr4-python3-runtime"}


def lock_requirements() -> list[Requirement]:
    lines = [l.strip() for l in LOCK.read_text().splitlines()]
    return [Requirement(l) for l in lines if l and not l.startswith("#")]


def test_cuda_wheels_are_marked_for_linux_x86_64():
    cuda = [r for r in lock_requirements() if re.match(r"(nvidia|cuda)-|triton$", canonicalize_name(r.name))]
    assert len(cuda) >= 10, [r.name for r in cuda]      # the freeze holds torch's CUDA wheels
    assert [str(r) for r in cuda if r.marker != LINUX_X86_64] == []
    unmarked = {canonicalize_name(r.name) for r in lock_requirements() if r.marker is None}
    assert {"torch", "torchvision"} <= unmarked          # the PyPI torch has wheels for every target


def index_reachable() -> bool:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=10): return True
    except OSError:
        return False


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_lock_resolves_on_other_machines(target, tmp_path):
    if not index_reachable(): pytest.skip("https://pypi.org is unreachable from here: cannot resolve the lock for another platform")
    platforms, env = TARGETS[target]
    env = {**env, "python_version": PY.rsplit(".", 1)[0], "python_full_version": PY}
    wanted = {canonicalize_name(r.name): str(r.specifier) for r in lock_requirements()
              if r.marker is None or r.marker.evaluate(env)}
    lock = tmp_path / "lock.txt"
    lock.write_text("".join(f"{n}{s}\n" for n, s in wanted.items()))
    report = tmp_path / "report.json"
    args = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet",
            "--python-version", PY, "--target", str(tmp_path / "target"), "-r", str(lock), "--report", str(report)]
    res = subprocess.run(args + [a for p in platforms for a in ("--platform", p)], capture_output=True, text=True)
    assert res.returncode == 0, f"the lock does not resolve for {target}:\n{res.stderr[-3000:]}"
    got = {canonicalize_name(i["metadata"]["name"]): i for i in json.loads(report.read_text())["install"]}
    assert {n: f"=={got[n]['metadata']['version']}" for n in got} == wanted
    sources = {n: i["download_info"]["url"].rsplit("/", 1)[-1] for n, i in got.items()
               if not i["download_info"]["url"].endswith(".whl")}   # pip picks only wheels that fit the platform
    assert set(sources) <= PURE_PYTHON_SDISTS, f"would be built from source on {target}: {sources}"


def package_imports() -> set[str]:
    "Top-level names of the third-party modules synthface_nb imports anywhere"
    out = set()
    for f in (ROOT / "synthface_nb").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import): out |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0: out.add(node.module.split(".")[0])
    return out - set(sys.stdlib_module_names) - {"synthface_nb"}


# Notebook tooling, present wherever its code runs: IPython (stage notebooks' figures), nbdev (the docs hook of
# nbdev-export), psutil (the batch runner kills papermill's kernels; ipykernel depends on it).
TOOLING = {"ipython", "nbdev", "psutil"}


def test_imported_distributions_are_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *(d for ds in project["optional-dependencies"].values() for d in ds)]
    declared = {canonicalize_name(Requirement(d).name) for d in declared}
    dists = packages_distributions()
    imported = {canonicalize_name(d) for m in package_imports() for d in dists.get(m, [m])}
    assert imported - declared - TOOLING == set()
    assert {"scipy", "ruamel-yaml", "facenet-pytorch"} <= declared


def test_no_notebook_progress_bars():
    bad = [f"{f.name}: {line.strip()}" for f in sorted((ROOT / "synthface_nb").glob("*.py"))
           for line in f.read_text(encoding="utf-8").splitlines()
           if re.search(r"\b(from|import)\s+tqdm\.(auto|notebook|autonotebook)\b", line)]
    assert bad == []
