"""VIGFace end to end at toy scale: a stage-1 FR model with virtual prototypes, the prototype-conditioned diffusion
model trained through the recipe, the conformance check of the diffusion family, and generation of virtual identities
whose images regenerate alone from their manifest records."""
import json

import numpy as np
import pytest

from synthface_nb.data import ImageFolderDataset, decode_image, resize_to, to_uint8_images
from synthface_nb.generation import read_manifest
from synthface_nb.generator_recipes import get_recipe
from synthface_nb.generators import check_generator, load_generator
from synthface_nb.testing import write_color_folder
from synthface_nb.trainer import TrainConfig, train_fr
from synthface_nb.vigface import vigface_defaults, vigface_generate_defaults

STAGE1 = TrainConfig(network="iresnet18", width=0.125, input_size=32, embedding_size=32, dropout=0.0, epochs=2,
                     batch_size=8, lr=0.01, lr_batch=8, num_workers=0, log_every=1, num_threads=1,
                     objective="vigface", objective_kwargs={"num_virtual": 8, "head_kwargs": {"s": 16.0}})
TINY_DIFFUSION = {"resolution": 16, "batch_size": 8, "total_kimg": 0.048, "snapshot_kimg": 0.024, "landmark_bank_size": 16,
                  "denoiser": {"name": "dit", "patch_size": 4, "width": 32, "depth": 1, "heads": 2},
                  "sampling": {"steps": 4}, "landmarks": "template", "probe_identities": 2, "probe_sampling": {"steps": 2},
                  "device": "cpu"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vigface")
    data = write_color_folder(tmp / "data", n_identities=4, per_identity=6, size=32)
    train_fr(STAGE1, ImageFolderDataset(data), tmp / "stage1", device="cpu", progress=False)
    recipe = get_recipe("vigface")
    settings = {**vigface_defaults(), **TINY_DIFFUSION}
    result = recipe.train(data, tmp / "gen", settings, seed=0, progress=False, state_dir=tmp / "state",
                          teacher=tmp / "stage1" / "model.pt")
    return tmp, data, result


def test_training_writes_a_diffusion_generator_of_the_prototypes(trained):
    tmp, _, result = trained
    assert result["summary"]["num_real"] == 4 and result["summary"]["num_virtual"] == 8
    assert {"probe_cos_real", "probe_cos_virtual", "probe_closer_than_real"} <= set(result["history"][-1])
    gen = load_generator(tmp / "gen" / "model" / "generator.pt")
    assert (gen.family, gen.num_identities, gen.conditioning.num_real, gen.resolution) == ("diffusion", 12, 4, 16)
    assert json.loads((tmp / "gen" / "metrics.json").read_text())["num_virtual"] == 8


def test_diffusion_family_conformance(trained):
    tmp, _, _ = trained
    gen = load_generator(tmp / "gen" / "model" / "generator.pt", batch_size=4)
    checked = check_generator(gen, identities=[4, 9, 11])            # virtual prototypes
    assert checked["gap_alone"] == 0.0 and checked["sampling"]["guidance"] == 4.0
    check_generator(gen, identities=[0, 1, 2], sampling={"sampler": "ancestral", "steps": 3})
    with pytest.raises(ValueError, match="truncation_psi"):
        gen.generate(gen.identity_conditions([4]), [1], {"truncation_psi": 0.7})


def test_generation_of_virtual_identities(trained, tmp_path):
    tmp, _, _ = trained
    recipe = get_recipe("vigface")
    settings = {**vigface_generate_defaults(), "num_identities": 3, "images_per_identity": 2, "output_size": 32,
                "sampling": {"steps": 3}, "device": "cpu"}
    report = recipe.generate(tmp / "gen" / "model", tmp_path / "set", tmp_path / "report", settings, seed=1, progress=False)
    ds = ImageFolderDataset(tmp_path / "set")
    assert ds.classes == ["000004", "000005", "000006"] and len(ds) == 6        # virtual rows follow the 4 real ones
    s = report["summary"]
    assert s["images"] == 6 and 0 <= s["closer_than_real"] <= 1 and -1 <= s["cos_own"] <= 1
    assert s["consistency"] is not None and s["diversity_pixels"] > 0
    # any image regenerates alone from its record and the set's seed
    gen = load_generator(tmp / "gen" / "model" / "generator.pt", batch_size=settings["batch_size"])
    spec = json.loads((tmp_path / "set" / "generation.json").read_text())
    assert spec["sampling"]["steps"] == 3 and spec["sampling"]["guidance"] == 4.0
    r = read_manifest(tmp_path / "set" / "manifest.jsonl")[3]
    img = gen.generate(gen.identity_conditions([r["identity"]], spec["seed"]), [r["seed"]], r["sampling"])
    alone = to_uint8_images(resize_to(img, (32, 32)))[0].permute(1, 2, 0).numpy()
    assert np.array_equal(alone, decode_image(tmp_path / "set" / r["path"]))
    with pytest.raises(ValueError, match="9 virtual identities asked for, the stage-1 model has 8"):
        recipe.generate(tmp / "gen" / "model", tmp_path / "x", tmp_path / "r", {**settings, "num_identities": 9}, seed=1,
                        progress=False)


def test_stage_two_refuses_a_stage_one_model_of_other_data(trained, tmp_path):
    tmp, _, _ = trained
    other = write_color_folder(tmp_path / "other", n_identities=3, per_identity=2, size=32)
    recipe = get_recipe("vigface")
    with pytest.raises(ValueError, match="4 real prototypes but the training data has 3 identities"):
        recipe.train(other, tmp_path / "g", {**vigface_defaults(), **TINY_DIFFUSION}, 0, False, None, "cpu",
                     teacher=tmp / "stage1" / "model.pt")
    with pytest.raises(ValueError, match="declare the entry under generators_with_teacher"):
        recipe.train(other, tmp_path / "g", {**vigface_defaults(), **TINY_DIFFUSION}, 0, False)
