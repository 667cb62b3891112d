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


def test_two_process_training_keeps_ranks_identical(tmp_path):
    """`train_diffusion` under torchrun with 2 processes (gloo, CPU): each rank draws its own batch and noise, the
    gradients are averaged, so both ranks end with the same denoiser and EMA; rank 0's checkpoint records both."""
    import os, subprocess, sys, textwrap
    from pathlib import Path
    from synthface_nb.core import load_checkpoint
    from synthface_nb.testing import write_color_folder
    data = write_color_folder(tmp_path / "data", n_identities=4, per_identity=4, size=16)
    script = tmp_path / "ddp_diffusion.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np, torch
        import synthface_nb.diffusion as d
        from synthface_nb.data import ImageFolderDataset
        from synthface_nb.distributed import init_distributed, shutdown_distributed
        info, device = init_distributed("cpu")
        ds = ImageFolderDataset({str(data)!r})
        cfg = {{**d.diffusion_defaults(), "resolution": 16, "cond_dim": 8, "batch_size": 4, "total_kimg": 0.024,
               "snapshot_kimg": 0.024, "landmark_bank_size": 8,
               "denoiser": {{"name": "dit", "patch_size": 4, "width": 32, "depth": 1, "heads": 2}}, "sampling": {{"steps": 2}}}}
        protos = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=1)
        labels = torch.as_tensor(np.asarray(ds.labels))
        models = []
        orig = d.update_ema
        def keep(ema, model, decay):
            models[:] = [model, ema]; return orig(ema, model, decay)
        d.update_ema = keep
        d.train_diffusion(cfg, ds, lambda idx: protos[labels[torch.as_tensor(np.asarray(idx))]],
                          lambda idx: torch.full((len(idx), 5, 2), 8.0), {str(tmp_path / "out")!r}, device=device,
                          progress=False, grid=(2, 2))
        torch.save({{"model": models[0].state_dict(), "ema": models[1].state_dict()}},
                   {str(tmp_path)!r} + f"/rank{{torch.distributed.get_rank()}}.pt")
        shutdown_distributed()
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)],
                         env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for part in ("model", "ema"):
        assert [k for k in r0[part] if not torch.equal(r0[part][k], r1[part][k])] == [], part
    ckpt = load_checkpoint(tmp_path / "out" / "training-state.pt", kind="diffusion_training")
    assert (ckpt["step"], ckpt["world_size"]) == (6, 2)          # 24 images, 4 per step: 6 steps
    assert all(torch.equal(ckpt["ema"][k], r0["ema"][k]) for k in r0["ema"])
