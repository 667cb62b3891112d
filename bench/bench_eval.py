"""Evaluation benchmarks: .bin decode + flip-sum embedding throughput and its FLOP efficiency, the 10-fold threshold
search for 6,000 pairs (vectorised vs insightface's loops), and our evaluator against a plain per-batch loop that
embeds originals and flips in separate passes, as insightface's verification.py does."""
from __future__ import annotations
import copy, sys, tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, efficiency, matmul_gflops, report, section  # noqa: E402

from synthface_nb.backbones import iresnet18
from synthface_nb.data import encode_image
from synthface_nb.fr_models import TorchFRModel
from synthface_nb.verification import (THRESHOLDS, distance_metrics, embed_flip_sum, eval_batch_size, fold_accuracies,
                                       load_benchmark, pair_distances)
from synthface_nb.verification_bin import write_bin

N_PAIRS = 200           # a few hundred pairs keep the whole file near a minute on 2 cores
BATCH = eval_batch_size("cpu")   # the CPU default, 64


def _backbone(width: float) -> tuple[torch.nn.Module, str]:
    return iresnet18(width=width).eval(), f"iresnet18 x{width:g} @112"


def _flops_per_image(net: torch.nn.Module) -> float:
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        net(torch.zeros(1, 3, 112, 112))
    return float(fc.get_total_flops())


def _toy_bin(path: Path, n_pairs: int) -> Path:
    rng = np.random.default_rng(0)
    faces = [np.repeat(np.repeat(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), 14, 0), 14, 1) for _ in range(n_pairs)]
    imgs = []
    for k in range(n_pairs):
        imgs += [faces[k], faces[k] if k % 2 == 0 else faces[(k + 1) % n_pairs]]
    return write_bin(path, [encode_image(i, "jpg") for i in imgs], np.arange(n_pairs) % 2 == 0)


def plain_loop_embed(net: torch.nn.Module, images: torch.Tensor, batch_size: int) -> np.ndarray:
    "insightface's test(): all originals, then all flips, batch by batch under no_grad, float64 sum, normalise"
    outs = []
    for flip in (False, True):
        data = images.flip(3) if flip else images
        emb = np.zeros((len(data), 512))
        with torch.no_grad():
            for a in range(0, len(data), batch_size):
                x = ((data[a:a + batch_size] / 255) - 0.5) / 0.5
                emb[a:a + batch_size] = net(x).detach().cpu().numpy()
        outs.append(emb)
    e = outs[0] + outs[1]
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def loop_accuracy_search(dist: np.ndarray, issame: np.ndarray, n_folds: int = 10) -> np.ndarray:
    "insightface's calculate_roc accuracy search with its Python loops over folds and thresholds"
    def acc(t, d, s):
        p = d < t
        return (np.sum(p & s) + np.sum(~p & ~s)) / d.size
    out = []
    for test in np.array_split(np.arange(len(dist)), n_folds):
        train = np.setdiff1d(np.arange(len(dist)), test)
        best = int(np.argmax([acc(t, dist[train], issame[train]) for t in THRESHOLDS]))
        out.append(acc(THRESHOLDS[best], dist[test], issame[test]))
    return np.array(out)


def main():
    with section("evaluation"):
        tmp = Path(tempfile.mkdtemp())
        path = _toy_bin(tmp / "toy.bin", N_PAIRS)
        t_dec = best_time(lambda: load_benchmark(path), repeats=2)
        report(f".bin decode ({2 * N_PAIRS} JPEGs) into one uint8 tensor", 2 * N_PAIRS / t_dec, "img/s")
        images, issame = load_benchmark(path)

        # embedding throughput and FLOP efficiency (every image is embedded twice: original and flip)
        for width, n_img in ((0.25, 2 * N_PAIRS), (1.0, 32)):
            net, label = _backbone(width)
            f = _flops_per_image(net)
            fr = TorchFRModel(copy.deepcopy(net), input_size=(112, 112))
            embed_flip_sum(fr, images[:8], batch_size=BATCH)
            # the machine is shared: the reference is the mean of matmuls taken just before and just after the timing
            before = matmul_gflops(fresh=True)
            t = best_time(lambda: embed_flip_sum(fr, images[:n_img], batch_size=BATCH), repeats=2, warmup=0)
            now = (before + matmul_gflops(fresh=True)) / 2
            ips = 2 * n_img / t
            report(f"flip-sum embedding, {label} ({f / 1e9:.2f} GFLOP/img)", ips, "img/s")
            report(f"  FLOP efficiency vs matmul {now:.0f} GFLOP/s (around this timing)", efficiency(f, ips, now), "%", "(goal >= 50 %)")

        # the 10-fold search on 6,000 pairs
        rng = np.random.default_rng(0)
        same = rng.random(6000) < 0.5
        dist = np.where(same, rng.normal(0.9, 0.3, 6000), rng.normal(1.6, 0.3, 6000)).clip(0, 4)
        t_vec = best_time(lambda: fold_accuracies(dist, same), repeats=5)
        t_all = best_time(lambda: distance_metrics(dist, same), repeats=5)
        t_loop = best_time(lambda: loop_accuracy_search(dist, same), repeats=1, warmup=0)
        assert np.array_equal(fold_accuracies(dist, same)["accuracies"], loop_accuracy_search(dist, same))
        report("10-fold threshold search, 6,000 pairs (vectorised)", 1e3 * t_vec, "ms", "(goal < 100 ms)")
        report("  with VAL@FAR=1e-3 (4,000 thresholds)", 1e3 * t_all, "ms")
        report("  insightface loops (same accuracies)", 1e3 * t_loop, "ms")
        report("  speed-up", t_loop / t_vec, "x")

        # our evaluator against the plain per-batch loop, same tiny model, same pairs; best of 3 for each, since
        # single timings on this shared machine vary by 2x from run to run
        net, label = _backbone(0.25)
        plain = copy.deepcopy(net)        # default (NCHW) layout, as the reference runs it
        fr = TorchFRModel(copy.deepcopy(net), input_size=(112, 112))
        t_ours = best_time(lambda: distance_metrics(pair_distances(embed_flip_sum(fr, images, batch_size=BATCH)[0]),
                                                    issame), repeats=3)
        t_loop10 = best_time(lambda: loop_accuracy_search(pair_distances(plain_loop_embed(plain, images, 10)), issame),
                             repeats=3)
        t_loop64 = best_time(lambda: loop_accuracy_search(pair_distances(plain_loop_embed(plain, images, 64)), issame),
                             repeats=3)
        report(f"evaluator on {N_PAIRS} pairs, {label}: ours (batched flip, channels_last)", t_ours, "s")
        report("  plain loop, batch 10 as arcface_torch's callback", t_loop10, "s", f"({t_loop10 / t_ours:.2f}x ours)")
        report("  plain loop, batch 64", t_loop64, "s", f"({t_loop64 / t_ours:.2f}x ours)")


if __name__ == "__main__":
    main()
