"""Diffusion generator: a tiny denoiser overfits one image; an image sampled alone equals the same image sampled in a
batch at the CPU configuration's size (exactly for the DiT, to the last bits for the U-Net)."""
import numpy as np
import torch

from synthface_nb.align import ARCFACE_TEMPLATE_112
from synthface_nb.core import torch_generator
from synthface_nb.diffusion import (NoiseSchedule, build_denoiser, diffusion_loss, landmark_image, sample)


def _net(kind: str, res: int, cond_dim: int = 16):
    cfg = {"dit": {"name": "dit", "patch_size": 4, "width": 128, "depth": 4, "heads": 4},
           "unet": {"name": "unet", "channels": [32, 64, 64], "blocks": 1, "emb": 128}}[kind]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_denoiser({"resolution": res, "cond_dim": cond_dim, "denoiser": cfg})
        with torch.no_grad():   # away from the zero initialisation, so that v depends on every input
            for p in net.parameters(): p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


def test_a_tiny_denoiser_overfits_one_image():
    torch.manual_seed(0)
    net = build_denoiser({"resolution": 16, "cond_dim": 8, "denoiser": {"name": "unet", "channels": [16, 32], "blocks": 1, "emb": 64}})
    sched = NoiseSchedule("cosine", 1000)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    x0 = torch.stack([xx, yy, (xx * yy)]).clamp(-1, 1)[None].repeat(16, 1, 1, 1)   # one image, 16 noisy copies a step
    cond = torch.nn.functional.normalize(torch.ones(16, 8), dim=1)
    lm = landmark_image(torch.as_tensor(ARCFACE_TEMPLATE_112, dtype=torch.float32)[None].repeat(16, 1, 1) * 16 / 112, 16)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    losses = []
    for step in range(300):
        loss, _ = diffusion_loss(net, sched, x0, cond, lm, torch_generator(0, step), cond_drop=0.0)
        opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    assert last < first / 10, f"loss {first:.4f} -> {last:.4f}: not down 10x"


def test_image_alone_equals_image_in_a_batch_at_cpu_size():
    sched = NoiseSchedule("cosine", 1000)
    n = 6
    cond = torch.nn.functional.normalize(torch.randn(n, 16, generator=torch.Generator().manual_seed(1)), dim=1)
    pts = torch.as_tensor(ARCFACE_TEMPLATE_112, dtype=torch.float32)[None] * 32 / 112 + torch.randn(n, 5, 2, generator=torch.Generator().manual_seed(2))
    seeds = list(range(100, 100 + n))
    # DiT: exact (its per-sample linears are SampleLinear; its token layers see batch x 64 rows either way).
    # U-Net: CPU convolutions (oneDNN, and torch's own fallback alike) pick another algorithm for one image than for
    # several, so the last bits differ; the bound is ~30x the largest difference seen (3.5e-6)
    cases = [("dit", {"steps": 4, "guidance": 4.0}, 0.0), ("dit", {"sampler": "ancestral", "steps": 4, "guidance": 1.0}, 0.0),
             ("unet", {"steps": 4, "guidance": 4.0}, 1e-4)]
    for kind, settings, tol in cases:
        net = _net(kind, 32)
        batch = sample(net, sched, cond, pts, seeds, settings)
        for i in (0, n - 1):
            alone = sample(net, sched, cond[[i]], pts[[i]], [seeds[i]], settings)
            diff = (alone[0] - batch[i]).abs().max().item()
            assert diff <= tol, f"{kind} {settings}: image {i} alone differs from it in a batch of {n} by {diff:.3g}"
