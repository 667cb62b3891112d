"""Diffusion generator (VIGFace stage 2): sampling img/s and FLOP efficiency of the CPU-scale denoisers (DiT and
U-Net, 32 px), DDIM-50 against ancestral-1000 wall time, training-step img/s."""
from __future__ import annotations
import sys, time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, efficiency, report, section  # noqa: E402

from synthface_nb.align import ARCFACE_TEMPLATE_112  # noqa: E402
from synthface_nb.core import torch_generator  # noqa: E402
from synthface_nb.diffusion import NoiseSchedule, build_denoiser, diffusion_loss, landmark_image, sample  # noqa: E402
from synthface_nb.pipeline import resolve_preset  # noqa: E402
from synthface_nb.vigface import vigface_defaults  # noqa: E402

CPU = resolve_preset("vigface", vigface_defaults(), "cpu")   # the pipeline's cpu preset: what the budget pays for
RES, COND = int(CPU["resolution"]), 512
DENOISERS = {"dit, cpu preset ({patch_size}-px patches, width {width}, depth {depth})".format(**CPU["denoiser"]): CPU["denoiser"],
             "unet (channels 32/64/64)": {"name": "unet", "channels": [32, 64, 64], "blocks": 1, "emb": 128}}


def _inputs(n: int):
    cond = torch.nn.functional.normalize(torch.randn(n, COND, generator=torch.Generator().manual_seed(0)), dim=1)
    pts = torch.as_tensor(ARCFACE_TEMPLATE_112, dtype=torch.float32)[None].repeat(n, 1, 1) * RES / 112
    return cond, pts


def _net(cfg: dict):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_denoiser({"resolution": RES, "cond_dim": COND, "denoiser": cfg}).eval()


def _sampling(name: str, net, n: int = 16, steps: int = 50) -> None:
    sched = NoiseSchedule("cosine", 1000)
    cond, pts = _inputs(n)
    lm = landmark_image(pts, RES)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        net(torch.zeros(1, 3, RES, RES), torch.zeros(1, dtype=torch.long), cond[:1], lm[:1])
    flops = fc.get_total_flops() * steps * 2          # guidance 4: a conditional and an unconditional pass per step
    report(f"{name}: FLOPs per image, DDIM-{steps} with guidance", flops / 1e9, "GFLOP")
    settings = {"steps": steps, "guidance": 4.0}
    ips = n / best_time(lambda: sample(net, sched, cond, pts, list(range(n)), settings), repeats=1)
    report(f"{name}: sampling, batch {n}", ips, "img/s")
    report(f"{name}:   FLOP efficiency vs in-process matmul", efficiency(flops, ips), "%", "(goal >= 50 %)")
    with torch.inference_mode():   # the denoiser alone on the doubled batch: what the sampler adds on top
        x, t = torch.randn(2 * n, 3, RES, RES), torch.full((2 * n,), 500)
        c2, l2 = torch.cat([cond, 0 * cond]), torch.cat([lm, lm])
        fps = 2 * n / best_time(lambda: net(x, t, c2, l2), repeats=3)
    report(f"{name}:   denoiser forward alone, batch {2 * n}", fps, "img/s")
    report(f"{name}:   FLOP efficiency of the forward alone", efficiency(flops / steps / 2, fps), "%", "(goal >= 50 %)")


def _ddim_vs_ancestral(name: str, net, n: int = 2) -> None:
    sched = NoiseSchedule("cosine", 1000)
    cond, pts = _inputs(n)
    t = {}
    for label, settings in (("DDIM-50", {"steps": 50}), ("ancestral-1000", {"sampler": "ancestral", "steps": 1000})):
        t0 = time.perf_counter(); sample(net, sched, cond, pts, list(range(n)), {**settings, "guidance": 4.0})
        t[label] = time.perf_counter() - t0
        report(f"{name}: {label}, {n} images", t[label], "s")
    report(f"{name}: ancestral-1000 / DDIM-50 wall time", t["ancestral-1000"] / t["DDIM-50"], "x", "(steps ratio 20)")


def _training(name: str, cfg: dict, batch: int = 32) -> None:
    net = _net(cfg).train()
    sched = NoiseSchedule("cosine", 1000)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x0 = torch.rand(batch, 3, RES, RES) * 2 - 1
    cond, pts = _inputs(batch)
    lm = landmark_image(pts, RES)
    with FlopCounterMode(display=False) as fc:
        diffusion_loss(net, sched, x0, cond, lm, torch_generator(0, 0))[0].backward()
    flops = fc.get_total_flops() / batch

    def step(s=[0]):
        loss, _ = diffusion_loss(net, sched, x0, cond, lm, torch_generator(0, s[0]))
        opt.zero_grad(); loss.backward(); opt.step(); s[0] += 1
    ips = batch / best_time(step, repeats=4)
    report(f"{name}: training step, batch {batch}", ips, "img/s")
    report(f"{name}:   FLOP efficiency vs in-process matmul", efficiency(flops, ips), "%", "(goal >= 50 %)")


def main() -> None:
    with section("Diffusion sampling (32 px, DDIM-50, guidance 4)"):
        for name, cfg in DENOISERS.items(): _sampling(name, _net(cfg))
    with section("Diffusion samplers"):
        name, cfg = next(iter(DENOISERS.items()))
        _ddim_vs_ancestral(name, _net(cfg))
    with section("Diffusion training"):
        for name, cfg in DENOISERS.items(): _training(name, cfg)


if __name__ == "__main__":
    main()
