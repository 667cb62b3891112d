"""Every family interface is an abstract base class: a subclass that misses the family's method fails where it is
built (TypeError), and every subclass the package defines implements it. (The owning notebooks show the first
point for each family; the trainer's `Callback` is checked only here.)"""
import importlib
import inspect
import pkgutil

import pytest

import synthface_nb
from synthface_nb.data import FaceDataset
from synthface_nb.filters import EmbeddingFilter
from synthface_nb.fr_models import FRModel
from synthface_nb.generators import FaceGenerator
from synthface_nb.heads import MarginHead
from synthface_nb.objectives import Objective
from synthface_nb.trainer import Callback

INTERFACES = {FaceDataset: {"load_image"}, FRModel: {"embed"}, FaceGenerator: {"generate"}, EmbeddingFilter: {"keep"},
              MarginHead: {"target_logit"}, Objective: {"forward"}, Callback: {"__call__"}}


@pytest.mark.parametrize("base", INTERFACES, ids=lambda b: b.__name__)
def test_incomplete_subclass_fails_at_construction(base):
    assert set(base.__abstractmethods__) == INTERFACES[base]
    incomplete = type(f"Incomplete{base.__name__}", (base,), {})
    with pytest.raises(TypeError, match="abstract"):
        incomplete()   # refused before __init__ runs, whatever arguments the family's constructor takes


def _subclasses(cls):
    for s in cls.__subclasses__():
        yield s
        yield from _subclasses(s)


def test_package_subclasses_implement_their_interface():
    for m in pkgutil.iter_modules(synthface_nb.__path__):
        if not m.name.startswith("_"): importlib.import_module(f"synthface_nb.{m.name}")
    found = {s for base in INTERFACES for s in _subclasses(base) if s.__module__.startswith("synthface_nb.")}
    assert len(found) >= 12   # datasets, FR models, StyleGAN2, filters, heads, objectives
    assert [s.__qualname__ for s in found if inspect.isabstract(s)] == []
