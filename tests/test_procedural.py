"""The procedural face set as files: byte-identical across processes and thread counts, rewritable
atomically, within the size budget of the embedded data, with NIR partners beside the images; the shipped
data is what `python -m synthface_nb.pipeline procedural-data` renders."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from synthface_nb.align import read_landmarks
from synthface_nb.data import ImageFolderDataset, decode_image, encode_image, partner_path
from synthface_nb.pipeline import PROCEDURAL_DATA, PROCEDURAL_DATA_OPTIONS
from synthface_nb.procedural import render_faces, write_procedural_dataset

ROOT = Path(__file__).resolve().parents[1]
DATA_BUDGET = 20e6   # bytes of data/: visible images (~10 MB) and their NIR partners (~9 MB)

TRIPLES = ([0, 5, 17, 1000], [0, 3, 11, 2])


def _digest(r) -> str:
    return hashlib.sha256(r.images.tobytes() + r.nir.tobytes() + np.round(r.landmarks, 6).tobytes()).hexdigest()


def test_same_bytes_in_another_process_with_one_thread():
    code = ("import torch, hashlib, numpy as np; torch.set_num_threads(1)\n"
            "from synthface_nb.procedural import render_faces\n"
            f"r = render_faces(7, {TRIPLES[0]}, {TRIPLES[1]}, batch_size=3)\n"
            "print(hashlib.sha256(r.images.tobytes() + r.nir.tobytes() + np.round(r.landmarks, 6).tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == _digest(render_faces(7, *TRIPLES))


def test_rewrite_gives_identical_files_and_replaces_the_folder(tmp_path):
    write_procedural_dataset(tmp_path / "a", 3, 3, seed=2, progress=False)
    (tmp_path / "a" / "stale.txt").write_text("from an earlier run")
    first = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    write_procedural_dataset(tmp_path / "a", 3, 3, seed=2, progress=False)
    second = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    assert Path("stale.txt") in first and Path("stale.txt") not in second
    del first[Path("stale.txt")]
    assert first == second
    meta = json.loads((tmp_path / "a" / "procedural.json").read_text())
    assert (meta["seed"], meta["n_images"], meta["difficulty"]) == (2, 9, 1.0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_default_set_fits_the_data_budget(tmp_path):
    # The embedded data holds 128 x 16 training and 48 x 10 held-out faces, each a visible image and its NIR partner.
    s = write_procedural_dataset(tmp_path / "s", 16, 4, seed=0, with_nir=True, progress=False)
    per_face = (s["image_bytes"] + s["nir_bytes"]) / s["n_images"]
    landmarks = (tmp_path / "s" / "landmarks.json").stat().st_size / s["n_images"]
    assert (per_face + landmarks) * (128 * 16 + 48 * 10) < DATA_BUDGET, (per_face, landmarks)


def test_nir_partners_lie_beside_their_images(tmp_path):
    s = write_procedural_dataset(tmp_path / "vis", 2, 3, seed=4, first_identity=50, image_format="png", with_nir=True, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["vis"]                  # no sibling folder
    ds = ImageFolderDataset(tmp_path / "vis", verify=True)
    assert (ds.classes, len(ds), ds.modalities, s["with_nir"]) == (["000050", "000051"], 6, ("rgb", "nir"), True)
    assert ds.partner_paths[5] == tmp_path / "vis" / "000051" / "000002.nir.png"
    r, faces = render_faces(4, [51], [2]), ds.load_modalities(5)
    assert np.array_equal(faces["rgb"], r.images[0]) and np.array_equal(faces["nir"][..., 0], r.nir[0])
    assert sorted(read_landmarks(tmp_path / "vis" / "landmarks.json")) == [p.relative_to(tmp_path / "vis").as_posix() for p in ds.paths]


def _shipped_data():
    "(relative path -> its object in the in-repo DVC remote, data.dvc's entry) for the data `data.dvc` points to"
    out = yaml.safe_load((ROOT / "data.dvc").read_text())["outs"][0]
    obj = lambda md5: ROOT / "dvcstore" / "files" / "md5" / md5[:2] / md5[2:]
    return {e["relpath"]: obj(e["md5"]) for e in json.loads(obj(out["md5"]).read_text())}, out


def test_shipped_data_is_what_the_recipe_renders():
    # read from the remote, not data/: a fresh clone has no data/ before `dvc pull`
    stored, out = _shipped_data()
    assert out["size"] < DATA_BUDGET and out["nfiles"] == len(stored)
    assert sum(p.stat().st_size for p in stored.values()) == out["size"]
    opts = PROCEDURAL_DATA_OPTIONS
    for name, spec in PROCEDURAL_DATA.items():
        meta = json.loads(stored[f"{name}/procedural.json"].read_text())
        assert {k: meta[k] for k in (*spec, *opts)} == {**spec, **opts}
        images = sorted(p for p in stored if p.startswith(f"{name}/") and p.endswith(".jpg") and ".nir." not in p)
        partners = sorted(p for p in stored if p.startswith(f"{name}/") and p.endswith(".nir.jpg"))
        assert len(images) == len(partners) == spec["n_identities"] * spec["images_per_identity"]
        ids = spec["first_identity"] + np.array([0, spec["n_identities"] - 1, 7])    # a few images, rendered now
        idx = np.array([0, spec["images_per_identity"] - 1, 3])
        r = render_faces(opts["seed"], ids, idx, opts["difficulty"])
        marks = read_landmarks(stored[f"{name}/landmarks.json"])
        for k, (i, j) in enumerate(zip(ids, idx)):
            rel = f"{i:06d}/{j:06d}.{opts['image_format']}"
            assert stored[f"{name}/{rel}"].read_bytes() == encode_image(r.images[k], opts["image_format"], opts["quality"]), rel
            nir = partner_path(f"{name}/{rel}").as_posix()
            assert stored[nir].read_bytes() == encode_image(r.nir[k], opts["image_format"], opts["quality"]), nir
            assert np.abs(marks[rel] - r.landmarks[k]).max() < 1e-3, rel
