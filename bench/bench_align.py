"""Alignment throughput on CPU: MTCNN detection + similarity + warp (batched, `align_dataset`'s inner loop)
and warp only for images with known landmarks.

Inputs are 250x250 photographs (LFW's size): crops of scikit-image's astronaut portrait at random offsets
and scales, so MTCNN finds one face in each. The warp is a bilinear resample and memory-bound; its FLOP
efficiency against the in-process matmul is printed for comparison with the other benchmarks.
Run: `python bench/bench_align.py` or `python bench/run_all.py align`.
"""
from __future__ import annotations
import sys
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, efficiency, report, section  # noqa: E402

from synthface_nb.align import ARCFACE_TEMPLATE_112, align_faces, detect_faces, load_mtcnn, select_face  # noqa: E402


def photos(n: int, size: int = 250, seed: int = 0) -> np.ndarray:
    "n size x size crops of the astronaut portrait around her face, at random offsets and zooms"
    # padded so that crops around her face stay inside the picture
    rng, src = np.random.default_rng(seed), Image.fromarray(np.pad(skimage.data.astronaut(), ((200, 200), (200, 200), (0, 0)), mode="edge"))
    out = []
    for _ in range(n):
        side = rng.uniform(280, 420)
        cx, cy = 424 + rng.uniform(-30, 30), 317 + rng.uniform(-30, 30)
        box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        out.append(np.asarray(src.resize((size, size), Image.BILINEAR, box=box)))
    return np.stack(out)


def main(n: int = 32, batch: int = 16):
    ims = photos(n)
    net = load_mtcnn("cpu")

    def detect_and_warp():
        found = 0
        for s in range(0, n, batch):
            chunk = ims[s:s + batch]
            dets = detect_faces(list(chunk), net)
            picks = [(k, select_face(b, p, chunk.shape[1:3])[0]) for k, (b, p, _) in enumerate(dets)]
            keep = [(k, dets[k][2][j]) for k, j in picks if j is not None]
            x = torch.from_numpy(chunk[[k for k, _ in keep]]).permute(0, 3, 1, 2)
            align_faces(x, np.stack([m for _, m in keep]))
            found += len(keep)
        return found

    marks = np.broadcast_to(ARCFACE_TEMPLATE_112 * 1.6 + 35, (n, 5, 2))
    x = torch.from_numpy(ims).permute(0, 3, 1, 2).contiguous()
    threads = torch.get_num_threads()
    with section("alignment"):
        # MTCNN runs many small ops; on a busy machine extra threads can cost more than they give, so both
        torch.set_num_threads(1)
        try: found = detect_and_warp()  # also the warm-up
        finally: torch.set_num_threads(threads)
        for nt in sorted({1, threads}):
            torch.set_num_threads(nt)
            try:
                t_det = best_time(detect_and_warp, repeats=1, warmup=0)
                t_warp = best_time(lambda: align_faces(x, marks), repeats=3)
                # bilinear: per output value 4 taps x (mul + add) plus weights, ~12 FLOP, 3 channels; against the
                # matmul at the same thread count
                warp_eff = efficiency(112 * 112 * 3 * 12, n / t_warp)
            finally: torch.set_num_threads(threads)
            report(f"MTCNN detect + select + warp, 250x250 -> 112, batch {batch}, {nt} thread(s) ({found}/{n} found)", n / t_det, "img/s")
            report(f"warp only (known landmarks), 250x250 -> 112, batch {n}, {nt} thread(s)", n / t_warp, "img/s")
            report(f"warp FLOP efficiency vs in-process matmul, {nt} thread(s) (memory-bound)", warp_eff, "%")


if __name__ == "__main__":
    main()
