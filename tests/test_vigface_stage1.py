"""VIGFace stage 1 through the trainer: a short CPU run of the `vigface` objective keeps its virtual prototypes
apart (the largest |cos| of a virtual row falls below its value at initialisation, while the real rows, pulled
towards similar-looking identities, drift together), writes them with the FR model, and resumes exactly."""
import json

import pytest
import torch

from synthface_nb.core import load_checkpoint
from synthface_nb.data import ImageFolderDataset
from synthface_nb.fr_models import load_fr_model, load_prototypes
from synthface_nb.metrics import model_metadata
from synthface_nb.objectives import prototype_separation
from synthface_nb.testing import write_color_folder
from synthface_nb.trainer import TrainConfig, train_fr

# 4 real identities, 16 virtual ones, 8 images a step: b_v = round(16 * 8 / 4) = 32 virtual embeddings a step.
# A small lr and s = 16: with only 20 classes the head's tiny rows (std 0.01) would otherwise be thrown by the first
# step onto the batch's mean direction (each row's step grows as lr · s · p / |w|, and p ≈ 1/20 here, not 1/20,000).
CFG = TrainConfig(network="iresnet18", width=0.125, input_size=32, embedding_size=32, dropout=0.2, epochs=6,
                  batch_size=8, lr=0.01, lr_batch=8, num_workers=0, log_every=1, schedule="cosine", num_threads=1,
                  objective="vigface", objective_kwargs={"num_virtual": 16, "head_kwargs": {"s": 16.0}})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vigface")
    ds = ImageFolderDataset(write_color_folder(tmp / "data", n_identities=4, per_identity=8, size=32))
    straight = train_fr(CFG, ds, tmp / "a", device="cpu", progress=False)
    train_fr(CFG, ds, tmp / "b", device="cpu", max_steps=9, progress=False)
    resumed = train_fr(CFG, ds, tmp / "b", device="cpu", resume=True, progress=False)
    return tmp, straight, resumed


def test_virtual_prototypes_separate_and_are_exported(runs):
    tmp, a, _ = runs
    h = a.history
    assert a.finished and a.step == 24
    assert {"ce_real", "ce_virtual", "sigma", "max_cos_virtual", "max_cos_real"} <= set(h[-1])
    # the first record's separation is measured before the first update: the initial rows
    first = h[0]["max_cos_virtual"]
    protos = load_prototypes(tmp / "a" / "model.pt")
    assert (protos["real"].shape, protos["virtual"].shape) == ((4, 32), (16, 32))
    final = prototype_separation(torch.cat([protos["real"], protos["virtual"]]), 4)
    print(f"max_cos_virtual {first:.3f} -> {final['max_cos_virtual']:.3f}, "
          f"max_cos_real {h[0]['max_cos_real']:.3f} -> {final['max_cos_real']:.3f}")
    assert final["max_cos_virtual"] < first - 0.02
    assert final["max_cos_virtual"] < final["max_cos_real"]
    # the exported rows are the trained head's rows, raw
    head = load_checkpoint(tmp / "a" / "checkpoint.pt", kind="fr_train")["objective"]["head.weight"]
    assert torch.equal(torch.cat([protos["real"], protos["virtual"]]), head)
    # sigma shrinks as the real embeddings gather around their rows
    assert h[-1]["sigma"] < h[0]["sigma"]
    # the model loads as any FR model, and its metadata (what evaluation reports) stays JSON
    assert load_fr_model(tmp / "a" / "model.pt").embed(torch.zeros(2, 3, 32, 32)).shape == (2, 32)
    json.dumps(model_metadata(tmp / "a" / "model.pt"))


def test_resumed_run_continues_exactly(runs):
    tmp, a, c = runs
    assert c.finished and c.losses == a.losses
    for key in ("ce_real", "ce_virtual", "sigma", "max_cos_virtual", "max_cos_real"):
        assert [r[key] for r in c.history] == [r[key] for r in a.history], key
    oa, oc = (load_checkpoint(tmp / run / "checkpoint.pt", kind="fr_train")["objective"] for run in ("a", "b"))
    assert sorted(oa) == ["head.weight", "separation", "sigma", "steps"] and int(oa["steps"]) == 24
    assert all(torch.equal(oa[k], oc[k]) for k in oa)
    pa, pc = (load_prototypes(tmp / run / "model.pt") for run in ("a", "b"))
    assert all(torch.equal(pa[k], pc[k]) for k in pa)
