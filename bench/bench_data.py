"""Data-format throughput: verification .bin decode img/s (the evaluator's loader) and RecordIO read + decode img/s.

Images are 112x112 JPEGs (quality 95, as insightface packs them) of smooth random content, about the size of
real aligned faces (~5 KB). Run: `python bench/bench_data.py` or `python bench/run_all.py data`.
"""
from __future__ import annotations
import sys, tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, report, section  # noqa: E402

from synthface_nb.data import encode_image  # noqa: E402
from synthface_nb.recordio import RecordIODataset, write_recordio  # noqa: E402
from synthface_nb.verification_bin import default_num_threads, decode_bin, write_bin  # noqa: E402


def face_like_jpegs(n: int, seed: int = 0) -> list[bytes]:
    "n distinct 112x112 JPEGs: random 14x14 colour fields upsampled bilinearly (smooth, like faces)"
    rng = np.random.default_rng(seed)
    return [encode_image(np.asarray(Image.fromarray(rng.integers(0, 255, (14, 14, 3), dtype=np.uint8))
                                    .resize((112, 112), Image.Resampling.BILINEAR)), "jpg", 95) for _ in range(n)]


def main(n_images: int = 4000):
    with section("data formats"), tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jpgs = face_like_jpegs(n_images)
        write_bin(tmp / "bench.bin", jpgs, [bool(k % 2) for k in range(n_images // 2)])
        threads = default_num_threads()
        t1 = best_time(lambda: decode_bin(tmp / "bench.bin", num_threads=1), repeats=2)
        tn = best_time(lambda: decode_bin(tmp / "bench.bin"), repeats=3)
        report(f".bin load + decode, 1 thread ({n_images} x 112x112 JPEG)", n_images / t1, "img/s")
        report(f".bin load + decode, {threads} threads (decode_bin default)", n_images / tn, "img/s", "goal >= 2000")

        write_recordio(tmp, jpgs, np.arange(n_images) // 20)
        t_open = best_time(lambda: RecordIODataset(tmp), repeats=3)
        ds = RecordIODataset(tmp)
        t_raw = best_time(lambda: [ds.encoded_image(i) for i in range(len(ds))], repeats=3)
        t_dec = best_time(lambda: [ds[i] for i in range(len(ds))], repeats=2)
        report(f".rec open (index + {n_images} labels)", t_open * 1e3, "ms")
        report(".rec read (record bytes, one process)", n_images / t_raw, "img/s")
        report(".rec read + decode to uint8 CHW (__getitem__, one process)", n_images / t_dec, "img/s")


if __name__ == "__main__":
    main()
