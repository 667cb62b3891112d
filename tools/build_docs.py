"""Build the docs offline: every notebook as an HTML page (not executed) and an index.html linking every page.

    python tools/build_docs.py [--out _docs] [NOTEBOOK ...]     (default: every notebook in nbs/ and nbs/stages/)

Quarto (what nbdev's docs use) cannot be installed here, so pages are nbconvert's HTML export, one per notebook,
named by `synthface_nb.docs.docs_page` (`nbs/00_core.ipynb` -> `core.html`), the page every module docstring names.
"""
from __future__ import annotations
import argparse, html, json, sys
from pathlib import Path

from synthface_nb.docs import DOCS_DIR, docs_page

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"


def default_notebooks() -> list[Path]:
    "Every notebook of nbs/ and nbs/stages/, in file order"
    return sorted(NBS.glob("*.ipynb")) + sorted((NBS / "stages").glob("*.ipynb"))


def notebook_title(path: Path) -> str:
    "The `# Title` of the notebook's first markdown cell, or its file name"
    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] == "markdown":
            first = "".join(cell["source"]).strip().splitlines()[:1]
            if first and first[0].startswith("# "): return first[0][2:].strip()
    return path.stem


def plan(notebooks: list[Path]) -> dict[Path, str]:
    "Notebook -> page path under the output folder; two notebooks that would share a page are refused"
    pages: dict[Path, str] = {}
    for nb in notebooks:
        page = docs_page(nb, NBS)
        if page == "index.html" or page in pages.values():
            raise ValueError(f"{nb}: its page {page} is already taken")
        pages[nb] = page
    return pages


def index_html(entries: list[tuple[str, str, str]]) -> str:
    "The table of contents: one link per (page, title, notebook), modules first, then the pipeline stages"
    def section(name, rows):
        items = "\n".join(f'<li><a href="{html.escape(p)}">{html.escape(t)}</a> <code>{html.escape(n)}</code></li>'
                          for p, t, n in rows)
        return f"<h2>{name}</h2>\n<ul>\n{items}\n</ul>" if rows else ""
    stages = [e for e in entries if e[0].startswith("stages/")]
    modules = [e for e in entries if not e[0].startswith("stages/")]
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>synthface_nb</title></head>\n"
            "<body style=\"font-family: sans-serif; max-width: 60em; margin: 2em auto\">\n<h1>synthface_nb</h1>\n"
            f"{section('Notebooks', modules)}\n{section('Pipeline stages', stages)}\n</body></html>\n")


def build_docs(notebooks: list[Path], out_dir: Path) -> dict[Path, Path]:
    "Write one HTML page per notebook (outputs as stored, nothing executed) and index.html into `out_dir`"
    import nbformat
    from nbconvert import HTMLExporter
    pages = plan([Path(nb).resolve() for nb in notebooks])
    exporter, entries, written = HTMLExporter(), [], {}
    for nb, page in pages.items():
        title = notebook_title(nb)
        body, _ = exporter.from_notebook_node(nbformat.read(nb, as_version=4), resources={"metadata": {"name": title}})
        path = out_dir / page
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
        entries.append((page, title, nb.relative_to(ROOT).as_posix()))
        written[nb] = path
    (out_dir / "index.html").write_text(index_html(entries), encoding="utf-8")
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="notebooks to render (default: all of nbs/ and nbs/stages/)")
    ap.add_argument("--out", type=Path, default=ROOT / DOCS_DIR, help="output folder (default: _docs)")
    args = ap.parse_args(argv)
    written = build_docs(args.notebooks or default_notebooks(), args.out)
    print(f"{len(written)} pages; open {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
