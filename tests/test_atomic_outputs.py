"""Outputs under faults and shared folders: files and folders the package writes get the umask's mode (not mkstemp's
0600 / mkdtemp's 0700); a full disk while saving a checkpoint or a generated image is one error naming the output,
with the previous output intact and no temporary left; a process killed while writing leaves the previous output."""
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from synthface_nb.core import atomic_write, load_checkpoint, save_checkpoint, write_json_atomic
from synthface_nb.data import encode_image
from synthface_nb.generation import write_generated_dataset
from synthface_nb.generators import ClassConditioning, FaceGenerator
from synthface_nb.recordio import write_recordio
from synthface_nb.verification_bin import write_bin

ROOT = Path(__file__).resolve().parents[1]


class NoiseGenerator(FaceGenerator):
    "Four identities of 8-px noise images, each a function of its seed"
    family, resolution = "noise", 8
    def __init__(self): super().__init__(ClassConditioning(4))
    def generate(self, cond, seeds, sampling=None):
        return torch.stack([torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(int(s))) * 2 - 1 for s in seeds])


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in sorted(root.rglob("*"))}


@pytest.fixture
def umask():
    "Set the process umask for one test (the package reads it at every write)"
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_outputs_respect_the_umask(tmp_path, umask, mask):
    umask(mask)
    png = encode_image(np.zeros((8, 8, 3), np.uint8))
    write_json_atomic(tmp_path / "report.json", {"acc": 1.0})
    save_checkpoint(tmp_path / "model.pt", {"w": torch.zeros(2)}, kind="demo")
    write_recordio(tmp_path / "rec", [png, png], [0, 1])
    write_bin(tmp_path / "lfw.bin", [png, png], [True])
    write_generated_dataset(NoiseGenerator(), tmp_path / "gen", 2, identities=2, progress=False)
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    got = modes(tmp_path)
    assert {k for k, m in got.items() if m == dir_mode} == {"rec", "gen", "gen/000000", "gen/000001"}
    assert {k: m for k, m in got.items() if m not in (file_mode, dir_mode)} == {}
    assert {"report.json", "model.pt", "rec/train.rec", "rec/train.idx", "lfw.bin", "gen/000001/000001.png"} <= set(got)


class FullDisk:
    "A file object whose writes fail with ENOSPC once `room` bytes are written, as on a full disk"
    def __init__(self, f, room: int): self.f, self.room = f, room
    def write(self, b):
        self.room -= len(b)
        if self.room < 0: raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(b)
    def __getattr__(self, name): return getattr(self.f, name)
    def __enter__(self): return self
    def __exit__(self, *exc): self.f.close()


def test_disk_full_while_saving_a_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "model.pt", {"step": 1, "w": torch.ones(1000)}, kind="demo")
    fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: FullDisk(fdopen(fd, *a, **k), room=1000))
    with pytest.raises(OSError) as e:
        save_checkpoint(path, {"step": 2, "w": torch.zeros(1000)}, kind="demo")   # torch.save wraps the OSError
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC and str(path) in str(e.value) and "no space left" in str(e.value)
    assert load_checkpoint(path, kind="demo")["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_disk_full_while_writing_generated_images(tmp_path, monkeypatch):
    out, gen = tmp_path / "gen", NoiseGenerator()
    write_bytes, calls = Path.write_bytes, []
    def fills_up(self, data):
        calls.append(self)
        if len(calls) == 3: raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))   # identity 1's first image
        return write_bytes(self, data)
    monkeypatch.setattr(Path, "write_bytes", fills_up)
    with pytest.raises(OSError) as e:
        write_generated_dataset(gen, out, 2, identities=4, batch_size=2, progress=False)
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC and f"{out / '000001'}: no space left" in str(e.value)
    assert sorted(p.name for p in out.iterdir()) == ["000000", "generation.json"]   # no temporary folder left
    first = {p.name: p.read_bytes() for p in (out / "000000").iterdir()}
    assert sorted(first) == [".manifest.jsonl", "000000.png", "000001.png"]
    rep = write_generated_dataset(gen, out, 2, identities=4, batch_size=2, progress=False)   # resumes
    assert (rep["skipped_identities"], rep["generated_identities"]) == (1, 3)
    assert {p.name: p.read_bytes() for p in (out / "000000").iterdir()} == first


WRITER = """
import sys, time
from synthface_nb.core import atomic_write
with atomic_write(sys.argv[1], "w") as f:
    f.write("new, half written"); f.flush()
    print("writing", flush=True)
    time.sleep(120)
"""


def test_kill_while_writing_keeps_the_previous_output(tmp_path):
    out = tmp_path / "metrics.json"
    out.write_text("old")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try: assert proc.stdout.readline() == "writing\n"
    finally:
        proc.send_signal(signal.SIGKILL); proc.wait(); proc.stdout.close()
    assert out.read_text() == "old"
    left = [p for p in tmp_path.iterdir() if p != out]   # SIGKILL gives no chance to clean up: a hidden temporary
    assert [(p.name.startswith(".metrics.json."), p.suffix, p.read_text()) for p in left] == [(True, ".tmp", "new, half written")]
