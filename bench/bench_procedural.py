"""Procedural face rendering: img/s of `render_faces` (RGB + NIR + landmarks, default difficulty) on one
thread and on all threads, at difficulty 0 (drawing only), and of writing a JPEG data set.

Rendering is vectorised numpy (single-threaded) plus one torch warp (multi-threaded), so the one-thread
figure is the per-core rate. Goal: hundreds of images per second per core.
Run: `python bench/bench_procedural.py` or `python bench/run_all.py procedural`.
"""
from __future__ import annotations
import sys, tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, report, section  # noqa: E402

from synthface_nb.procedural import render_faces, write_procedural_dataset  # noqa: E402


def main(n: int = 256):
    ids, idx = np.repeat(np.arange(n // 8), 8), np.tile(np.arange(8), n // 8)
    threads = torch.get_num_threads()
    with section("procedural faces"):
        try:
            torch.set_num_threads(1)
            t1 = best_time(lambda: render_faces(0, ids, idx), repeats=2)
            t0 = best_time(lambda: render_faces(0, ids, idx, difficulty=0.0), repeats=2, warmup=0)
        finally: torch.set_num_threads(threads)
        tn = best_time(lambda: render_faces(0, ids, idx), repeats=2, warmup=0)
        report(f"render 112x112 RGB+NIR, default difficulty, 1 thread ({n} img)", n / t1, "img/s", "goal: hundreds per core")
        report("render, difficulty 0 (drawing + warp only), 1 thread", n / t0, "img/s")
        report(f"render, default difficulty, {threads} threads", n / tn, "img/s")
        with tempfile.TemporaryDirectory() as tmp:
            s = {}
            tw = best_time(lambda: s.update(write_procedural_dataset(Path(tmp) / "set", n // 8, 8, progress=False)), repeats=1, warmup=0)
        report(f"write_procedural_dataset (render + JPEG q85 + landmarks), {threads} threads", n / tw, "img/s")
        report("JPEG bytes per image (quality 85, default difficulty)", s["image_bytes"] / n, "bytes")


if __name__ == "__main__":
    main()
