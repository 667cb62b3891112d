"""Shared helpers for the benchmarks in bench/: an in-process matmul reference and uniform printing.

Every compute benchmark reports its FLOP efficiency against the fp32 matmul GFLOP/s measured in the same
process right after the workload, because absolute speeds drift between machines and within a run (see README,
Benchmarks), and at the same torch thread count as the workload (a 1-thread step against a 2-thread matmul
would read half as efficient).
"""
from __future__ import annotations
import time
from contextlib import contextmanager

import torch

_MATMUL_GFLOPS: dict[tuple, float] = {}


def matmul_gflops(n: int = 2048, repeats: int = 5, dtype=torch.float32, device="cpu", fresh: bool = False) -> float:
    "Best-of-`repeats` GFLOP/s of an n x n matmul at torch's current thread count (cached per size, dtype, device, threads unless `fresh`)"
    # keyed by the thread count: a step timed on 1 thread must be compared with the matmul on 1 thread
    key = (n, dtype, str(device), torch.get_num_threads())
    if key in _MATMUL_GFLOPS and not fresh: return _MATMUL_GFLOPS[key]
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b  # warm-up
    if a.is_cuda: torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter(); a @ b
        if a.is_cuda: torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    _MATMUL_GFLOPS[key] = 2 * n**3 / best / 1e9
    return _MATMUL_GFLOPS[key]


def best_time(fn, repeats: int = 3, warmup: int = 1) -> float:
    "Best wall time in seconds of `fn()` over `repeats` runs after `warmup` runs"
    for _ in range(warmup): fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter(); fn(); best = min(best, time.perf_counter() - t)
    return best


def report(name: str, value: float, unit: str, goal: str = "") -> None:
    "Print one benchmark figure on one line"
    print(f"{name:<58s} {value:>12.2f} {unit:<10s} {goal}".rstrip(), flush=True)


def efficiency(flops_per_item: float, items_per_s: float, reference: float | None = None) -> float:
    "Share (percent) of the matmul GFLOP/s `reference` (default: measured now, at the current thread count) that a workload reaches"
    # call it right after the timing, at the thread count the workload ran on: a shared machine's speed drifts within
    # a run (seen here: 88 GFLOP/s at the start of `make bench`, 146-168 a minute later), and a reference taken at
    # process start made a workload look up to twice as efficient as it was
    return 100 * flops_per_item * items_per_s / 1e9 / (reference if reference is not None else matmul_gflops(fresh=True))


@contextmanager
def section(title: str):
    "Print a heading naming the torch version and thread count for the figures reported inside the block"
    print(f"\n== {title} (torch {torch.__version__}, {torch.get_num_threads()} threads)", flush=True)
    yield


def cpu_gan_step(num_classes: int = 10):
    "The cpu preset's StyleGAN2-ADA training on a fixed random batch: (config, step), `step(s)` runs step number `s` (its phases follow `s`)"
    import numpy as np
    from synthface_nb.stylegan2_training import build_training_state, training_preset, training_step
    cfg = training_preset("cpu", num_classes)
    st = build_training_state(cfg, seed=0)
    n, res = cfg["batch_size"], cfg["networks"]["G"]["img_resolution"]
    real = torch.randint(0, 256, (n, 3, res, res), dtype=torch.uint8)
    cond = lambda idx: torch.nn.functional.one_hot(torch.as_tensor(idx) % num_classes, num_classes).float()
    idx = np.arange(n)

    def step(s: int) -> None:
        st.step = s
        training_step(st, cfg, real, idx, cond, 100, seed=0)
    return cfg, step
