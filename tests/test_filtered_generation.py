"""Filtered generation on the file system: the online rule's decisions equal the batch filter's on the same candidates,
an interrupted run resumes to the bytes of an uninterrupted one, every kept image (and its 1-channel NIR partner) is
regenerated alone from its manifest record, and a first-sample check ends identities."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from synthface_nb.core import sample_rng
from synthface_nb.data import decode_image, resize_to, to_uint8_images
from synthface_nb.filters import PrivacyDiversityFilter
from synthface_nb.filtered_generation import attempt_seed, embed_images, write_filtered_dataset
from synthface_nb.fr_models import FRModel
from synthface_nb.generation import read_manifest
from synthface_nb.generators import EmbeddingConditioning, FaceGenerator

SIZE, OUT = 8, 12


class PatternFaces(FaceGenerator):
    "Identity k: a pattern drawn from its condition; each image adds noise drawn from its seed; RGB + 1-channel NIR"
    family, resolution, modalities = "pattern", SIZE, {"rgb": 3, "nir": 1}
    def __init__(self, noise: float): super().__init__(EmbeddingConditioning(dim=4 * SIZE * SIZE)); self.noise = noise
    def sampling_defaults(self): return {"truncation_psi": 1.0}
    def generate(self, cond, seeds, sampling=None):
        truncation_psi = self.resolve_sampling(sampling)["truncation_psi"]
        base = cond.values.reshape(len(seeds), 4, SIZE, SIZE) / 4 * SIZE   # the condition has norm 4
        eps = torch.stack([torch.randn(4, SIZE, SIZE, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        return torch.tanh(0.5 * (base + self.noise * eps)) * truncation_psi


class ProjectionFR(FRModel):
    "A fixed random linear projection of the RGB pixels; `dies_at`: the embed call that raises"
    input_size, embedding_dim, name = (SIZE, SIZE), 16, "projection"
    def __init__(self, dies_at: int | None = None):
        self.w = torch.as_tensor(sample_rng(7).standard_normal((3 * SIZE * SIZE, 16)), dtype=torch.float32)
        self.calls, self.dies_at = 0, dies_at
    def embed(self, images):
        self.calls += 1
        if self.calls == self.dies_at: raise RuntimeError("killed")
        return images.reshape(len(images), -1) @ self.w


REFERENCE = sample_rng(3).standard_normal((20, 16))
KW = dict(num_identities=12, images_per_identity=4, reference=REFERENCE, seed=5, max_attempts=40, batch_size=8,
          output_size=OUT, sampling={"truncation_psi": 0.7}, progress=False)


def _files(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("filtered") / "set"
    rep = write_filtered_dataset(PatternFaces(noise=0.4), ProjectionFR(), out, **KW)
    return out, rep


def test_the_run_exercises_every_decision(generated):
    s = generated[1]["summary"]
    assert 0 < s["kept_identities"] < 12 and s["images"] == 4 * s["kept_identities"]
    assert {"too_similar", "inconsistent", "not_unique"} <= set(s["sample_rejections"]), s
    assert set(s["identities_by_status"]) - {"kept"}, s   # some identities were refused or abandoned


def test_online_decisions_equal_the_batch_filter(generated):
    out, _ = generated
    gen, fr, spec = PatternFaces(noise=0.4), ProjectionFR(), json.loads((out / "generation.json").read_text())
    recs = read_manifest(out / "manifest.jsonl")
    cands, emb = [], []
    for f in (r for r in recs if "filter" in r):   # every identity's candidates, as many attempts as it used
        k, n = f["identity"], f["filter"]["attempts"]
        seeds = [attempt_seed(spec["seed"], k, a) for a in range(n)]
        imgs = to_uint8_images(resize_to(gen.generate(gen.identity_conditions([k] * n, spec["seed"]), seeds,
                                                      {"truncation_psi": 0.7}), (OUT, OUT)))
        emb.append(embed_images(fr, imgs[:, :3])); cands += [(k, a) for a in range(n)]
    mask, _ = PrivacyDiversityFilter(REFERENCE, samples_per_id=4).keep(np.concatenate(emb), np.array([k for k, _ in cands]))
    kept = [(r["identity"], r["attempt"]) for r in recs if "path" in r]
    assert [c for c, m in zip(cands, mask) if m] == kept and kept


def test_interrupted_run_resumes_to_the_same_bytes(generated, tmp_path):
    out, _ = generated
    with pytest.raises(RuntimeError, match="killed"):
        write_filtered_dataset(PatternFaces(noise=0.4), ProjectionFR(dies_at=25), tmp_path / "set", **KW)
    assert not (tmp_path / "set" / "manifest.jsonl").exists()
    rep = write_filtered_dataset(PatternFaces(noise=0.4), ProjectionFR(), tmp_path / "set", **KW)
    assert 0 < rep["skipped_identities"] < 12 and rep["drawn_identities"] == 12 - rep["skipped_identities"]
    assert _files(tmp_path / "set") == _files(out)


def test_every_kept_image_and_partner_regenerates_alone(generated):
    out, _ = generated
    gen, spec = PatternFaces(noise=0.4), json.loads((out / "generation.json").read_text())
    for r in (r for r in read_manifest(out / "manifest.jsonl") if "path" in r):
        img = to_uint8_images(resize_to(gen.generate(gen.identity_conditions([r["identity"]], spec["seed"]), [r["seed"]],
                                                     r["sampling"]), (OUT, OUT)))[0]
        assert np.array_equal(decode_image(out / r["path"]), img[:3].permute(1, 2, 0).numpy())
        nir = Image.open(out / r["partners"]["nir"])
        assert nir.mode == "L" and np.array_equal(np.asarray(nir), img[3].numpy())


def test_first_sample_check_rejects_identities(tmp_path):
    rep = write_filtered_dataset(PatternFaces(noise=0.4), ProjectionFR(), tmp_path / "set",
                                 first_sample_check=lambda im: "no_face: dark" if im.mean() < 128 else "", **KW)
    s = rep["summary"]
    assert s["identity_rejections"].get("no_face", 0) > 0 and s["identities_by_status"]["rejected"] >= s["identity_rejections"]["no_face"]
    assert json.loads((tmp_path / "set" / "generation.json").read_text())["first_sample_check"].endswith("<lambda>")
