"""Layering, read statically from synthface_nb/*.py: evaluation and audits do not reach GAN training, the filters do
not reach the evaluation layer, figures do not reach the FR stack, and no library module uses the test fixtures.
Every import counts, at module level or inside a function, and so does a string naming a module (`importlib`)."""
import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "synthface_nb"
MODULES = {p.stem for p in PKG.glob("*.py") if not p.name.startswith("_")}


def imported_modules(source: str) -> set[str]:
    "Package modules that `source` (a module of synthface_nb) imports anywhere in its body"
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").split(".")[0] != "synthface_nb": continue
            parts = (node.module or "").split(".")[node.level == 0:]   # drop the package name of absolute imports
            out |= {parts[0]} if parts and parts[0] else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("synthface_nb.")}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if m := re.fullmatch(r"synthface_nb\.(\w+)", node.value): out.add(m.group(1))
    return out & MODULES


IMPORTS = {m: imported_modules((PKG / f"{m}.py").read_text(encoding="utf-8")) for m in MODULES}


def closure(module: str) -> set[str]:
    "Every package module `module` imports, directly or through others"
    seen, todo = set(), [module]
    while todo:
        for m in IMPORTS[todo.pop()] - seen:
            seen.add(m); todo.append(m)
    return seen


def test_every_kind_of_import_is_seen():
    src = ("from .core import Registry\nfrom . import data\nimport synthface_nb.recordio\n"
           "from synthface_nb.align import warp_affine\nfrom synthface_nb import __version__\nimport numpy\n"
           "def f():\n    from synthface_nb.verification import verify\n"
           "FORMATS = {'onnx': 'synthface_nb.onnx_models'}\n'''Docs mention synthface_nb.quality in passing.'''\n")
    assert imported_modules(src) == {"core", "data", "recordio", "align", "verification", "onnx_models"}


def test_closure_is_transitive():
    assert {"fr_models", "backbones", "data", "core"} <= closure("quality")   # quality -> fr_models -> backbones


def test_modules_named_here_exist():
    named = {"leakage", "metrics", "quality", "report", "filters", "plots", "feature_metrics", "gan_metrics",
             "stylegan2", "stylegan2_training", "ada_augment", "fr_models", "backbones", "verification", "testing",
             "filtered_generation"}
    assert named <= MODULES, named - MODULES


@pytest.mark.parametrize("module", ["leakage", "metrics", "quality", "report", "filters", "feature_metrics"])
def test_evaluation_does_not_import_gan_training(module):
    assert not closure(module) & {"stylegan2_training", "ada_augment"}, closure(module)


@pytest.mark.parametrize("module", ["filters", "filtered_generation"])
def test_generation_time_filters_do_not_import_the_evaluation_layer(module):
    assert not closure(module) & {"quality", "metrics", "verification", "leakage", "report"}, closure(module)


@pytest.mark.parametrize("module", ["report", "plots"])
def test_figures_do_not_import_the_fr_stack(module):
    assert not closure(module) & {"fr_models", "backbones"}, closure(module)


def test_plots_sit_on_core_alone():
    assert closure("plots") == {"core"}


def test_generator_scores_need_no_generator_family():
    assert not closure("gan_metrics") & {"stylegan2", "stylegan2_training", "ada_augment"}, closure("gan_metrics")


def test_feature_metrics_sit_below_evaluation_and_gan_training():
    assert not closure("feature_metrics") & {"quality", "gan_metrics", "metrics", "fr_models"}


def test_no_library_module_uses_the_test_fixtures():
    assert [m for m in MODULES - {"testing"} if "testing" in IMPORTS[m]] == []
