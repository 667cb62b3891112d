"""FR training throughput: img/s of a training step (forward, backward, clipping, SGD) for the `cpu` preset and for
a full-width iresnet18 at 112x112, their FLOP efficiency against the fp32 matmul measured in this process, and the
share of the trainer's step time spent waiting for data (PNG decode in a data-loader worker); USynthFace's MoCo step
at the same backbone next to it.

FLOPs of one step (backbone + CosFace head, forward and backward) are counted with
`torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per multiply-add); the MoCo step counts the key encoder's
forward and the logits against the queue. Run: `python bench/bench_train.py` or
`python bench/run_all.py train`.
"""
from __future__ import annotations
import sys, tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, efficiency, matmul_gflops, report, section  # noqa: E402

from synthface_nb.backbones import build_backbone  # noqa: E402
from synthface_nb.data import ImageFolderDataset, save_image  # noqa: E402
from synthface_nb.fr_stages import fr_settings  # noqa: E402


def cpu_preset():
    "The FR training config of the cpu preset (SFace's CLS)"
    return fr_settings({}, "cpu")[0]
from synthface_nb.heads import get_head  # noqa: E402
from synthface_nb.objectives import ObjectiveContext, build_objective  # noqa: E402
from synthface_nb.trainer import train_fr  # noqa: E402

N_CLASSES = 150  # about the size of the procedural authentic set


def make_step(network: str, width: float, input_size: int, embedding_size: int, batch: int, channels_last: bool = True,
              objective: str = "cls"):
    "A closure running one training step (CLS with CosFace, or MoCo) on a fixed random batch, and its FLOPs"
    torch.manual_seed(0)
    net = build_backbone(network, width=width, input_size=input_size, embedding_size=embedding_size)
    x, y = torch.randn(batch, 3, input_size, input_size), torch.randint(0, N_CLASSES, (batch,))
    if channels_last:
        net.to(memory_format=torch.channels_last); x = x.contiguous(memory_format=torch.channels_last)
    x2 = x.flip(3)
    if objective == "moco":   # USynthFace's queue of 32768 keys, the key encoder a momentum copy inside the objective
        head = build_objective("moco", ObjectiveContext(net, embedding_size, N_CLASSES, global_batch_size=batch),
                               queue_size=32768 // batch * batch)
        loss_of = lambda: head(net, [x, x2], None)[0]
    else:
        head = get_head("cosface", embedding_size, N_CLASSES)
        loss_of = lambda: F.cross_entropy(head(net(x), y), y)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad] + [p for p in head.parameters() if p.requires_grad],
                          lr=1e-3, momentum=0.9)

    def step():
        loss = loss_of()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()

    with FlopCounterMode(display=False) as fc: step()
    return step, fc.get_total_flops()


def compute_step(name: str, batch: int, repeats: int = 3, threads: int | None = None, objective: str = "cls", **arch):
    step, flops = make_step(batch=batch, objective=objective, **arch)
    before = torch.get_num_threads()
    if threads: torch.set_num_threads(threads)
    try:
        t = best_time(step, repeats=repeats, warmup=1)
        # the matmul reference at the thread count the step ran on
        ref = matmul_gflops(fresh=True)
        eff = efficiency(flops / batch, batch / t, ref)
    finally: torch.set_num_threads(before)
    name = f"{name}, {objective}, {threads or before} thread(s)"
    report(f"{name}: train step, batch {batch}", batch / t, "img/s")
    report(f"{name}: GFLOP per image (fwd + bwd)", flops / batch / 1e9, "GFLOP")
    report(f"{name}: fp32 matmul on the same threads", ref, "GFLOP/s")
    report(f"{name}: FLOP efficiency vs that matmul", eff, "%", "goal >= 50")


def trainer_data_wait(n_images: int = 768, steps: int = 10):
    "The trainer on a folder of 112x112 PNGs with the cpu preset: img/s and the share of time waiting for data"
    cfg = cpu_preset().replace(log_every=1000, checkpoint_every=0)
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for i in range(n_images):
            small = rng.integers(0, 255, (14, 14, 3), dtype=np.uint8)
            save_image(Path(tmp) / f"id{i % N_CLASSES:03d}" / f"{i:05d}.png", small.repeat(8, 0).repeat(8, 1))
        ds = ImageFolderDataset(tmp)
        train_fr(cfg, ds, device="cpu", max_steps=2, progress=False)  # warm-up (first-call imports, allocator)
        res = train_fr(cfg, ds, device="cpu", max_steps=steps, progress=False)
    report(f"cpu preset in the trainer ({cfg.num_workers} worker, PNG folder, {steps} steps)", res.images_per_second, "img/s")
    report("cpu preset: share of step time waiting for data", 100 * res.data_wait_share, "%", "goal <= 10")


def main():
    with section("FR training"):
        c = cpu_preset()
        arch = dict(network=c.network, width=c.width, input_size=c.input_size, embedding_size=c.embedding_size)
        # one thread as well: small convolutions lose most of their time to thread synchronisation when another
        # process competes for the second core
        for threads in (None, 1):
            for objective in ("cls", "moco"):
                compute_step(f"cpu preset ({c.network} x{c.width} @{c.input_size})", c.batch_size, threads=threads,
                             objective=objective, **arch)
        compute_step("iresnet18 @112 (full width)", 8, repeats=2, network="iresnet18", width=1.0, input_size=112,
                     embedding_size=512)
        trainer_data_wait()


if __name__ == "__main__":
    main()
