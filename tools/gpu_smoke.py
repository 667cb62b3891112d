"""GPU smoke check (`make gpu-smoke`): on one CUDA device, a few FR steps with AMP (stopped, resumed, compared with
an uninterrupted run), a few StyleGAN2-ADA steps (likewise), a generation batch and a verification run; prints
each check and its result, and exits non-zero if one fails. Minutes on one GPU; `--device cpu` runs the same
checks here (AMP then is off: there is no CUDA autocast to check)."""
import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthface_nb.ada_augment import resample
from synthface_nb.core import load_checkpoint                                           # noqa: E402
from synthface_nb.data import ImageFolderDataset                                       # noqa: E402
from synthface_nb.fr_models import load_fr_model                                        # noqa: E402
from synthface_nb.runloop import run_environment                                        # noqa: E402
from synthface_nb.generators import load_generator                                      # noqa: E402
from synthface_nb.objectives import ClassificationObjective, objectives                 # noqa: E402
from synthface_nb.stylegan2_training import train_stylegan2, training_preset            # noqa: E402
from synthface_nb.testing import write_color_folder, write_shape_classes                # noqa: E402
from synthface_nb.trainer import TrainConfig, resolve_amp, train_fr                     # noqa: E402
from synthface_nb.verification import verify                                            # noqa: E402

CHECKS: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> bool:
    CHECKS.append((name, bool(ok), detail))
    print(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)
    return ok


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if torch.is_floating_point(a[k]))


class _AmpProbe(ClassificationObjective):
    "SFace's CLS objective that records the dtype of the first convolution's output inside the training step"
    dtypes: list = []
    def forward(self, backbone, views, labels):
        if self.dtypes: return super().forward(backbone, views, labels)
        hook = backbone.conv1.register_forward_hook(lambda m, i, o: self.dtypes.append(str(o.dtype)))
        try: return super().forward(backbone, views, labels)
        finally: hook.remove()


def fr_checks(tmp: Path, device: torch.device) -> None:
    ds = ImageFolderDataset(write_color_folder(tmp / "colours", n_identities=8, per_identity=16, size=112))
    objectives.register("smoke_cls")(_AmpProbe)
    cfg = TrainConfig(network="iresnet18", width=0.5, input_size=112, embedding_size=128, dropout=0.0, epochs=4,
                      batch_size=32, lr_batch=32, schedule="cosine", num_workers=2, log_every=1, amp="auto",
                      objective="smoke_cls", objective_kwargs={"head": "cosface", "head_kwargs": {"s": 32.0, "m": 0.2}})
    amp = resolve_amp(cfg.amp, device)
    t0 = time.perf_counter()
    whole = train_fr(cfg, ds, tmp / "fr_whole", device=device, progress=False)
    seconds = time.perf_counter() - t0
    part = train_fr(cfg, ds, tmp / "fr_part", device=device, max_steps=7, progress=False)
    rest = train_fr(cfg, ds, tmp / "fr_part", device=device, progress=False)
    check("FR losses finite", all(math.isfinite(x) for x in whole.losses), f"{len(whole.losses)} steps, "
          f"loss {whole.losses[0]:.3f} -> {whole.losses[-1]:.3f}, {whole.images_per_second:.0f} img/s ({seconds:.1f} s)")
    want = {"bf16": "torch.bfloat16", "fp16": "torch.float16", "none": "torch.float32"}[amp]
    check("FR AMP actually used" if amp != "none" else "FR without AMP (CPU)", _AmpProbe.dtypes[:1] == [want],
          f"amp={amp}; first convolution's output inside the step: {_AmpProbe.dtypes[:1]}")
    check("FR stopped at step 7, resumed to the end", (part.step, rest.step, rest.finished) == (7, whole.step, True),
          f"{part.step} + {rest.step - part.step} steps")
    d_loss = max(abs(a - b) for a, b in zip(rest.losses, whole.losses))
    d_w = max_diff(load_checkpoint(tmp / "fr_whole" / "model.pt")["model"], load_checkpoint(tmp / "fr_part" / "model.pt")["model"])
    if d_loss == 0 and d_w == 0: check("FR resume exact", True, "every logged loss and every weight identical")
    else:   # nondeterministic GPU kernels: compare with a second uninterrupted run
        train_fr(cfg, ds, tmp / "fr_again", device=device, progress=False)
        noise = max_diff(load_checkpoint(tmp / "fr_whole" / "model.pt")["model"], load_checkpoint(tmp / "fr_again" / "model.pt")["model"])
        check("FR resume within run-to-run noise", d_w <= 3 * noise,
              f"max |weight diff| resumed vs whole {d_w:.3g}; two uninterrupted runs {noise:.3g}; max |loss diff| {d_loss:.3g}")
    model = load_fr_model(tmp / "fr_whole" / "model.pt", device=device)
    imgs = torch.stack([torch.from_numpy(ds.load_image(i).transpose(2, 0, 1).copy()) for i in range(len(ds))])
    labels = np.asarray(ds.labels)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(ds), 400), rng.integers(0, len(ds), 400)
    b[:200] = [rng.choice(np.flatnonzero(labels == labels[i])) for i in a[:200]]   # half same-identity pairs
    res = verify(model, torch.stack([imgs[a], imgs[b]], 1).flatten(0, 1), labels[a] == labels[b], "colours", device=device)
    check("verification on the device", 0.5 <= res.metrics["accuracy"] <= 1.0,
          json.dumps({k: round(v, 4) for k, v in res.metrics.items() if isinstance(v, float)}))
    print(json.dumps(whole.environment), flush=True)


def gan_checks(tmp: Path, device: torch.device) -> None:
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64, device=device, requires_grad=True)
    theta = torch.tensor([[[0.9, 0.2, 0.1], [-0.3, 1.1, 0.0]]], dtype=torch.float64, device=device).expand(2, 2, 3)
    grid = torch.nn.functional.affine_grid(theta, (2, 3, 6, 6), align_corners=False)
    check("ADA resampling twice differentiable (R1)", torch.autograd.gradgradcheck(lambda t: resample(t, grid), (x,)),
          "gradgradcheck of the augment pipe's grid sampling in float64")
    ds = ImageFolderDataset(write_shape_classes(tmp / "shapes", n_classes=8, per_class=16, size=32))
    cfg = training_preset("cpu", ds.num_classes, resolution=32, batch_size=16, total_kimg=0.128, G_reg_interval=2,
                          D_reg_interval=4, loss={"pl_weight": 2.0, "style_mixing_prob": 0.9}, augment={"p": 0.2})
    t0 = time.perf_counter()
    whole = train_stylegan2(cfg, ds, tmp / "gan_whole", seed=1, device=device, snapshot_kimg=1, log_every=1, progress=False)
    seconds = time.perf_counter() - t0
    train_stylegan2(cfg, ds, tmp / "gan_part", seed=1, device=device, snapshot_kimg=1, log_every=1, max_steps=3, progress=False)
    rest = train_stylegan2(cfg, ds, tmp / "gan_part", seed=1, device=device, snapshot_kimg=1, log_every=1, progress=False)
    losses = [r[k] for r in whole["history"] for k in ("loss/G", "loss/D") if k in r]
    check("GAN losses finite", bool(losses) and all(math.isfinite(x) for x in losses),
          f"{whole['step']} steps in {seconds:.1f} s (R1 and path-length phases included); fp32: G and D have no mixed precision")
    ema = lambda name: load_checkpoint(tmp / name / "training-state.pt")["G_ema"]
    d = max_diff(ema("gan_whole"), ema("gan_part"))
    if d == 0: check("GAN resume exact", True, f"stopped at step 3, resumed to {rest['step']}; G_ema identical")
    else:   # CUDA's convolution and grid-sampling backward use atomics: two uninterrupted runs differ too
        train_stylegan2(cfg, ds, tmp / "gan_again", seed=1, device=device, snapshot_kimg=1, log_every=1, progress=False)
        noise = max_diff(ema("gan_whole"), ema("gan_again"))
        check("GAN resume within run-to-run noise", d <= 3 * noise,
              f"max |G_ema diff| resumed vs whole {d:.3g}; two uninterrupted runs {noise:.3g} (nondeterministic GPU kernels)")
    g = load_generator(tmp / "gan_whole" / "generator.pt", device=device)
    t0 = time.perf_counter()
    imgs = g.generate(g.identity_conditions(np.arange(8).repeat(4), 0), list(range(32)))
    check("generation batch", tuple(imgs.shape[-3:]) == (3, 32, 32) and len(imgs) == 32 and bool(torch.isfinite(imgs).all()),
          f"{tuple(imgs.shape)} on {imgs.device} in {time.perf_counter() - t0:.2f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu-smoke: no CUDA device is visible; run it on a GPU node (or --device cpu to try the checks here)")
        return 2
    device = torch.device(a.device)
    print(json.dumps(run_environment(device)), flush=True)
    tmp = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    for part in (fr_checks, gan_checks):
        try: part(tmp, device)
        except Exception as e:   # report and go on: one failed part should not hide the others
            import traceback; traceback.print_exc()
            check(part.__name__, False, f"{type(e).__name__}: {e}")
    failed = [n for n, ok, _ in CHECKS if not ok]
    print(f"gpu-smoke: {len(CHECKS) - len(failed)}/{len(CHECKS)} checks passed in {time.perf_counter() - t0:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
