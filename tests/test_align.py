"""Alignment stage end to end: the papermill stage notebook, the face-selection policy on a photo with two
faces, a user landmark file, a dataset without files, and atomic output when the stage stops."""
import json

import numpy as np
import pytest
import skimage.data

from synthface_nb.align import (ARCFACE_TEMPLATE_112, align_dataset, detect_faces, load_mtcnn, read_landmarks,
                                select_face, transform_points, write_landmarks)
from synthface_nb.data import ImageFolderDataset, decode_image, save_image
from synthface_nb.procedural import ProceduralFaceDataset, render_faces, write_procedural_dataset

from conftest import run_stage


def test_stage_notebook_template_and_landmarks_modes(tmp_path):
    write_procedural_dataset(tmp_path / "gen", 3, 2, seed=1, progress=False)
    run_stage("align", tmp_path, name="gen", aligned={"input": "gen", "overrides": {"detector": "template"}},
              output_dir="out/aligned", report_path="out/align_report.json")
    report = json.loads((tmp_path / "out" / "align_report.json").read_text())
    assert (report["detector"], report["n_aligned"], report["n_failed"]) == ("template", 6, 0)
    assert "generator's alignment is kept" in report["note"]
    assert len(ImageFolderDataset(tmp_path / "out" / "aligned")) == 6
    executed = json.loads((tmp_path / "runs" / "align.ipynb").read_text())
    assert any(o.get("output_type") == "display_data" for c in executed["cells"] for o in c.get("outputs", []))
    run_stage("align", tmp_path, name="gen", aligned={"input": "gen", "overrides": {"detector": "landmarks"}},
              output_dir="out/by_landmarks", report_path="out/landmarks_report.json")
    report = json.loads((tmp_path / "out" / "landmarks_report.json").read_text())
    assert report["landmark_sources"] == {"given": 6, "detected": 0, "template": 0}


def test_policy_on_a_photo_with_two_faces(tmp_path):
    face = skimage.data.astronaut()[40:240, 130:330]  # her face, about 90 px wide
    small = face[::2, ::2]                          # the same face at half size
    canvas = np.full((240, 500, 3), 90, np.uint8)
    canvas[20:220, 10:210] = face                    # face centre near x = 105
    canvas[70:170, 205:305] = small                  # face centre near x = 250, the image centre
    (boxes, probs, _), = detect_faces([canvas], load_mtcnn())
    assert (probs >= 0.97).sum() == 2, probs
    k, _ = select_face(boxes, probs, canvas.shape[:2], "largest")
    assert boxes[k, 0] < 210                         # the big face on the left
    k, _ = select_face(boxes, probs, canvas.shape[:2], "central")
    assert boxes[k, 0] > 205                         # the small face is the central one
    assert select_face(boxes, probs, canvas.shape[:2], "single") == (None, "several faces")
    save_image(tmp_path / "photos" / "crew" / "two.png", canvas)
    save_image(tmp_path / "photos" / "crew" / "one.png", canvas[:, :215])
    report = align_dataset(tmp_path / "photos", tmp_path / "aligned", policy="single", max_failure_rate=0.6, progress=False)
    assert report["failures"] == [{"image": "crew/two.png", "reason": "several faces", "n_detections": 2, "max_prob": report["failures"][0]["max_prob"]}]
    assert report["landmark_sources"]["detected"] == 1 and report["detection_prob"]["min"] > 0.99


def test_user_landmark_file_skips_detection_and_dataset_without_files(tmp_path):
    ds = ProceduralFaceDataset(2, 2, seed=3, difficulty=1.0)
    for i in range(len(ds)): save_image(tmp_path / "faces" / ds.classes[ds.labels[i]] / f"img{i}.png", ds.load_image(i))
    marks = {f"{ds.classes[ds.labels[i]]}/img{i}.png": ds.render(i).landmarks[0] for i in range(len(ds))}
    write_landmarks(tmp_path / "mine.json", marks)
    report = align_dataset(tmp_path / "faces", tmp_path / "aligned", landmarks=tmp_path / "mine.json",
                           image_format="png", progress=False)
    assert report["landmark_sources"] == {"given": 4, "detected": 0, "template": 0}
    assert report["landmarks_file"] == str(tmp_path / "mine.json")
    out = read_landmarks(tmp_path / "aligned" / "landmarks.json")
    for name, m in marks.items():  # the aligned landmarks are the given ones moved by the fitted similarity
        residual = np.linalg.norm(out[name] - ARCFACE_TEMPLATE_112, axis=1)
        assert residual.max() < 4, (name, residual)
    direct = align_dataset(ds, tmp_path / "direct", detector="template", image_format="png", progress=False)
    assert direct["n_aligned"] == 4
    assert sorted(p.relative_to(tmp_path / "direct").as_posix() for p in (tmp_path / "direct").rglob("*.png")) == \
        ["000000/000000.nir.png", "000000/000000.png", "000000/000001.nir.png", "000000/000001.png",
         "000001/000002.nir.png", "000001/000002.png", "000001/000003.nir.png", "000001/000003.png"]   # procedural sets carry NIR
    assert np.array_equal(decode_image(tmp_path / "direct" / "000001" / "000003.png"), ds.load_image(3))
    assert np.array_equal(decode_image(tmp_path / "direct" / "000001" / "000003.nir.png")[..., 0], ds.render(3).nir[0])


def test_stopped_stage_keeps_previous_output(tmp_path):
    write_procedural_dataset(tmp_path / "gen", 2, 2, seed=0, image_format="png", progress=False)
    align_dataset(tmp_path / "gen", tmp_path / "aligned", detector="template", progress=False)
    before = sorted(p.name for p in (tmp_path / "aligned").rglob("*"))
    for k in range(4): save_image(tmp_path / "gen" / "000000" / f"blank{k}.png", np.zeros((112, 112, 3), np.uint8))
    with pytest.raises(RuntimeError, match="use detector='template'"):
        align_dataset(tmp_path / "gen", tmp_path / "aligned", detector="landmarks", max_failure_rate=0.25, progress=False)
    assert sorted(p.name for p in (tmp_path / "aligned").rglob("*")) == before
    report = json.loads((tmp_path / "aligned_report.json").read_text())
    assert report["failures_by_reason"] == {"no landmarks": 4} and report["n_aligned"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
