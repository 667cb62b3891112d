"""Evaluation against independent, straightforward implementations (the loops of insightface's verification.py),
hand-built cases, the ONNX round trip, and the evaluate / audit / report stage notebooks run by papermill."""
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.interpolate import BSpline, interp1d

from synthface_nb.backbones import iresnet18
from synthface_nb.data import encode_image, save_image
from synthface_nb.fr_models import TorchFRModel, load_fr_model, save_fr_model
from synthface_nb.verification import (THRESHOLDS, VAL_THRESHOLDS, embed_flip_sum, fold_accuracies, kfold_bounds,
                                       load_benchmark, val_at_far, verification_metrics, verify)
from synthface_nb.verification_bin import write_bin

from conftest import run_stage


# ---------------------------------------------------------------- an independent reference, written with loops
def _loop_accuracy(threshold, dist, issame):
    predict = dist < threshold
    tp = np.sum(predict & issame); tn = np.sum(~predict & ~issame)
    return (tp + tn) / dist.size


def _loop_far_val(threshold, dist, issame):
    predict = dist < threshold
    n_same, n_diff = issame.sum(), (~issame).sum()
    val = np.sum(predict & issame) / n_same if n_same else np.nan
    far = np.sum(predict & ~issame) / n_diff if n_diff else 0.0
    return val, far


def _loop_folds(n, k):
    "Contiguous folds as scikit-learn KFold(k, shuffle=False), built with np.array_split"
    idx = np.arange(n)
    for test in np.array_split(idx, k):
        yield np.setdiff1d(idx, test), test


def slinear_before_scipy_1_9(x, y, x_new):
    """`interp1d(x, y, kind="slinear")(x_new)` of scipy < 1.9, which accepted repeated x: a stable sort, then the
    degree-1 B-spline that `make_interp_spline(x, y, k=1)` returned without checking for repeats"""
    ind = np.argsort(x, kind="mergesort")
    x, y = x[ind], y[ind]
    return float(BSpline.construct_fast(np.r_[x[0], x, x[-1]], y, 1)(x_new))


def reference_slinear(far_train, thresholds, far_target):
    "insightface's `interpolate.interp1d(far_train, thresholds, kind='slinear')(far_target)`"
    try:
        return float(interp1d(far_train, thresholds, kind="slinear")(far_target))
    except ValueError as e:          # scipy >= 1.9 refuses the repeated FAR values of a step curve
        if "duplicates" not in str(e): raise
        return slinear_before_scipy_1_9(far_train, thresholds, far_target)


def loop_val(dist, issame, far_target=1e-3, k=10):
    "insightface's calculate_val(): FAR curve on the training folds, interp1d slinear, VAL and FAR held out"
    val, far, kinds = [], [], []
    for train, test in _loop_folds(len(dist), k):
        imp = dist[train][~issame[train]]
        far_train = (imp[:, None] < VAL_THRESHOLDS).sum(0) / len(imp)
        if far_train.max() >= far_target:
            thr = reference_slinear(far_train, VAL_THRESHOLDS, far_target)
            top = far_target == far_train.max() and (far_train == far_target).sum() > 1
            kinds.append("top level" if top else "hit" if far_target in far_train else "between")
        else:
            thr = 0.0
            kinds.append("unreachable")
        v, f = _loop_far_val(thr, dist[test], issame[test])
        val.append(v); far.append(f)
    return np.mean(val), np.std(val), np.mean(far), kinds


def loop_evaluate(emb, issame, k=10):
    "insightface's evaluate() accuracies: per-threshold Python loops, argmax on the training folds"
    e1, e2 = emb[0::2], emb[1::2]
    dist = np.sum(np.square(e1 - e2), 1)
    accs = []
    for train, test in _loop_folds(len(dist), k):
        acc_train = [_loop_accuracy(t, dist[train], issame[train]) for t in THRESHOLDS]
        accs.append(_loop_accuracy(THRESHOLDS[int(np.argmax(acc_train))], dist[test], issame[test]))
    return np.array(accs), dist


def _normalise(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("n_pairs,seed", [(600, 0), (1003, 1), (250, 2)])
def test_vectorised_protocol_matches_loops(n_pairs, seed):
    rng = np.random.default_rng(seed)
    issame = rng.random(n_pairs) < 0.5
    a = rng.normal(size=(n_pairs, 16))
    b = np.where(issame[:, None], a + rng.normal(scale=0.9, size=a.shape), rng.normal(size=a.shape))
    emb = _normalise(np.stack([a, b], 1).reshape(-1, 16))
    accs, dist = loop_evaluate(emb, issame)
    val, val_std, far, _ = loop_val(dist, issame)
    ours = verification_metrics(emb, issame)
    assert ours["fold_accuracies"] == accs.tolist()              # identical, not merely close
    assert ours["accuracy"] == accs.mean() and ours["accuracy_std"] == accs.std()
    assert (ours["val"], ours["val_std"], ours["far"]) == (val, val_std, far)
    assert 0.55 < ours["accuracy"] < 0.99                        # a case where the threshold search matters


def test_slinear_reference_is_scipy_slinear():
    # the reference's fallback is interp1d's slinear wherever today's scipy accepts the input (distinct x)
    rng = np.random.default_rng(0)
    for _ in range(50):
        x = np.cumsum(rng.uniform(0.01, 1, 12)); y = rng.uniform(0, 4, 12)
        for q in np.r_[rng.uniform(x[0], x[-1], 5), x]:
            assert slinear_before_scipy_1_9(x, y, q) == float(interp1d(x, y, kind="slinear")(q))


def test_val_at_far_matches_insightface_on_random_cases():
    "VAL and FAR as insightface's calculate_val gives them, between FAR levels, on exact hits and out of reach"
    rng = np.random.default_rng(4)
    kinds = set()
    for case in range(120):
        n = int(rng.integers(20, 300))
        issame = rng.random(n) < rng.uniform(0.2, 0.8)
        for _, test in _loop_folds(n, 10): issame[test[0]], issame[test[-1]] = True, False   # both kinds per fold
        dist = np.where(issame, rng.uniform(0, 2.5, n), rng.uniform(0.5, 4, n))
        if case % 2: dist = np.round(dist, 3)                    # distances on the threshold grid: ties
        if case % 5 == 0: dist[~issame & (rng.random(n) < 0.3)] = 4.0   # FAR never reaches 1
        train0 = next(_loop_folds(n, 10))[0]
        imp0 = dist[train0][~issame[train0]]
        levels = np.unique((imp0[:, None] < VAL_THRESHOLDS).sum(0) / len(imp0))   # fold 0's FAR levels
        far_target = [1e-3, 1e-2, rng.uniform(0, 0.6), rng.choice(levels), levels[-1], 1.0][case % 6]
        val, val_std, far, k = loop_val(dist, issame, far_target)
        kinds.update(k)
        ours = val_at_far(dist, issame, far_target)
        assert (ours["val"], ours["val_std"], ours["far"], ours["val_folds"]) == (val, val_std, far, 10), case
    assert kinds == {"between", "hit", "top level", "unreachable"}   # every branch of the reference was compared


def test_known_best_threshold_and_accuracy():
    # 30 pairs in 10 folds of 3: genuine at 0.8, impostors at 2.0 and 2.5; in fold 6 one genuine pair sits at 2.2
    dist = np.tile([0.8, 2.0, 2.5], 10); dist[18] = 2.2
    issame = np.tile([True, False, False], 10)
    r = fold_accuracies(dist, issame)
    # every training set is separated best by any threshold in (0.8, 2.0]: the search takes the first, 0.81
    assert np.allclose(r["best_thresholds"], 0.81)
    expected = np.ones(10); expected[6] = 2 / 3
    assert np.allclose(r["accuracies"], expected)


def test_fold_boundaries_follow_kfold():
    # 23 pairs: folds of 3, 3, 3, then 2s. One wrong pair at index 8 lands in fold 2, at index 9 in fold 3.
    assert kfold_bounds(23).tolist()[:4] == [[0, 3], [3, 6], [6, 9], [9, 11]]
    for wrong, fold in [(8, 2), (9, 3), (22, 9)]:
        dist = np.full(23, 0.5); issame = np.ones(23, bool)
        issame[1::2] = False; dist[1::2] = 3.0
        issame[wrong] = not issame[wrong]
        acc = fold_accuracies(dist, issame)["accuracies"]
        assert np.flatnonzero(acc < 1).tolist() == [fold]


def test_fold_without_genuine_pairs_is_not_a_crash():
    dist = np.r_[np.full(10, 3.0), np.tile([0.5, 3.0], 45)]
    issame = np.r_[np.zeros(10, bool), np.tile([True, False], 45)]
    v = val_at_far(dist, issame, far_target=0.01)
    assert v["val_folds"] == 9 and np.isfinite(v["val"])


# ---------------------------------------------------------------- embedding: batched flip vs the two-pass loop
def _net():
    torch.manual_seed(0)
    return iresnet18(width=0.0625, embedding_size=16, input_size=56).eval()


def loop_embed(net, images, batch_size):
    "insightface's test(): originals and flips in separate passes, batch by batch, summed, then normalised"
    out = []
    for flip in (False, True):
        data = images.flip(3) if flip else images
        embs = []
        with torch.no_grad():
            for a in range(0, len(data), batch_size):
                x = ((data[a:a + batch_size].float() / 255) - 0.5) / 0.5
                embs.append(net(x).double().numpy())
        out.append(np.concatenate(embs))
    return _normalise(out[0] + out[1])


def test_flip_sum_matches_two_pass_loop():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (24, 3, 56, 56), dtype=torch.uint8, generator=g)
    net = _net()
    ours, _ = embed_flip_sum(net, images, batch_size=12)
    ref = loop_embed(net, images, batch_size=8)
    assert np.abs(ours - ref).max() < 1e-5
    # and end to end: our evaluator's fold accuracies are the loop reference's on the loop's embeddings
    issame = np.arange(12) % 2 == 0
    assert verification_metrics(ours, issame)["fold_accuracies"] == loop_evaluate(ref, issame)[0].tolist()


# ---------------------------------------------------------------- ONNX
def test_onnx_export_round_trip(tmp_path):
    from synthface_nb.onnx_models import OnnxFRModel, export_onnx
    net = _net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(TorchFRModel(net, (56, 56)), tmp_path / "m.onnx")
    onnx_model = load_fr_model(tmp_path / "m.onnx")
    assert isinstance(onnx_model, OnnxFRModel)
    x = torch.rand(7, 3, 112, 112) * 2 - 1
    assert torch.allclose(onnx_model.embed(x), TorchFRModel(net, (56, 56)).embed(x), atol=1e-4)


# ---------------------------------------------------------------- stage notebooks, run as the pipeline runs them
def _toy_workspace(root: Path):
    rng = np.random.default_rng(0)
    def face(): return np.repeat(np.repeat(rng.integers(0, 256, (8, 8, 3)), 14, 0), 14, 1)
    def noisy(im): return np.clip(im + rng.normal(0, 8, im.shape), 0, 255).astype(np.uint8)
    imgs, same = [], np.tile(np.repeat([True, False], 2), 10)
    for s in same:
        a = face(); imgs += [noisy(a), noisy(a if s else face())]
    write_bin(root / "bench" / "procedural.bin", [encode_image(i) for i in imgs], same)
    torch.manual_seed(0)
    save_fr_model(root / "models" / "teacher" / "model.pt", _net(), method="teacher", preset="cpu", data="auth", n_identities=6)
    save_fr_model(root / "models" / "cls" / "model.pt", _net(), method="SFace-CLS", preset="cpu", data="other", n_identities=10)
    bases = [face() for _ in range(6)]
    for k in range(6):
        for i in range(3): save_image(root / "auth" / f"{k:04d}" / f"{i}.png", noisy(bases[k]))
    for k in range(3):
        for i in range(3): save_image(root / "gen" / "images" / f"{k:06d}" / f"{i:06d}.png", noisy(bases[k] if k == 0 else face()))


def test_stage_notebooks_evaluate_audit_report(tmp_path):
    _toy_workspace(tmp_path)
    run_stage("evaluate", tmp_path, out_dir="out/evaluate", evaluate={"models": "models/*/model.pt", "benchmarks": "bench",
              "batch_size": 0, "max_pairs": 0, "strict": False, "device": "cpu"})
    run_stage("audit", tmp_path, out_dir="out/audit", seed=0, audit={"generated": "gen/images", "authentic": "auth",
              "model": "models/cls/model.pt", "reference_model": "models/teacher/model.pt", "fmr": 0.05, "relation": "auto", "thresholds": "authentic", "top_k": 8,
              "fid": False, "batch_size": 0, "device": "cpu"})
    (tmp_path / "times").mkdir()
    (tmp_path / "times" / "evaluate.json").write_text(json.dumps({"stage": "evaluate", "seconds": 12.5}))
    run_stage("report", tmp_path, evaluate_dir="out/evaluate", audit_dir="out/audit", out_dir="out/report", times_dir="times")
    metrics = json.loads((tmp_path / "out" / "evaluate" / "metrics.json").read_text())
    assert sorted(metrics) == ["cls", "teacher"] and list(metrics["cls"]) == ["procedural"]
    direct = verify(load_fr_model(tmp_path / "models" / "cls" / "model.pt"),
                    *load_benchmark(tmp_path / "bench" / "procedural.bin"), "procedural")
    assert metrics["cls"]["procedural"]["accuracy"] == direct.accuracy
    audit = json.loads((tmp_path / "out" / "audit" / "audit.json").read_text())
    assert list(audit["sets"]) == ["gen"] and audit["sets"]["gen"]["n_identities"] == 3
    # the audit model (trained elsewhere) sets the thresholds from 6 * 5 / 2 centre pairs and 18 images x 5 other centres
    # of the authentic identities; the teacher (trained on them) stands beside it, labelled
    ts = audit["threshold_source"]
    assert (audit["model_info"]["name"], audit["model_info"]["trained_on_authentic"], ts["unseen_by_model"]) == ("cls", False, True)
    assert (ts["identity_level"]["n_impostor_pairs"], ts["sample_level"]["n_impostor_scores"]) == (15, 90)
    ref = audit["reference_models"]["teacher"]
    assert (ref["trained_on_authentic"], ref["threshold_source"]["unseen_by_model"], list(ref["sets"])) == (True, False, ["gen"])
    leak = json.loads((tmp_path / "out" / "audit" / "sets" / "gen" / "leakage.json").read_text())
    assert leak["top_pairs"][0]["synthetic"] == "000000" and leak["top_pairs"][0]["authentic"] == "0000"
    md = (tmp_path / "out" / "report" / "results.md").read_text()
    assert "| cls | SFace-CLS | cpu |" in md and "| gen |" in md and "| evaluate | 12 | 100 % |" in md
    assert "**Audit model**: cls (trained on other, 10 identities, never saw the authentic identities); thresholds: FMR=0.05 from 15 " in md
    assert "| gen | teacher (trained on the authentic identities) |" in md
    assert (tmp_path / "out" / "report" / "results.png").stat().st_size > 0
