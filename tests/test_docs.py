"""`make docs` offline: `tools/build_docs.py` renders the notebooks it is given to HTML pages with their titles and an
index linking them, and every module docstring names the page the build writes for the module's notebook."""
import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("build_docs", ROOT / "tools" / "build_docs.py")
build_docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_docs)


def test_build_two_notebooks(tmp_path):
    nbs = [ROOT / "nbs" / "00_core.ipynb", ROOT / "nbs" / "stages" / "evaluate.ipynb"]
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "build_docs.py"), "--out", str(tmp_path), *map(str, nbs)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.html")) == \
        ["core.html", "index.html", "stages/evaluate.html"]
    titles = {nb: build_docs.notebook_title(nb) for nb in nbs}
    assert titles[nbs[0]] == "Core"
    core = (tmp_path / "core.html").read_text(encoding="utf-8")
    assert "<title>Core</title>" in core and ">atomic_write<" in core   # the notebook's title and its code
    stage = (tmp_path / "stages" / "evaluate.html").read_text(encoding="utf-8")
    assert f"<title>{titles[nbs[1]]}</title>" in stage
    index = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert '<a href="core.html">Core</a>' in index and f'<a href="stages/evaluate.html">{titles[nbs[1]]}</a>' in index


def test_module_docstrings_name_built_pages():
    pages = set(build_docs.plan(build_docs.default_notebooks()).values())
    checked = 0
    for py in sorted((ROOT / "synthface_nb").glob("*.py")):
        text = py.read_text(encoding="utf-8")
        source = re.search(r"File to edit: \.\./nbs/(\S+\.ipynb)", text)
        if source is None: continue   # not exported from a notebook (__init__, _modidx)
        doc = ast.get_docstring(ast.parse(text)) or ""
        link = re.fullmatch(r"Docs: _docs/(\S+) \(`make docs` builds it\)", doc.strip().splitlines()[-1])
        assert link, f"{py.name}: the docstring does not end with its docs page: {doc[-120:]!r}"
        assert link.group(1) in pages, f"{py.name}: {link.group(1)} is not a page make docs builds"
        assert link.group(1) == build_docs.docs_page(ROOT / "nbs" / source.group(1), ROOT / "nbs"), py.name
        checked += 1
    assert checked >= 30
