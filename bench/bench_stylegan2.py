"""StyleGAN2 (SFace generator): generation img/s and FLOP efficiency for the CPU and 128-px presets, fused vs
non-fused modulated convolution, memory growth of streaming generation for 1k vs 4k images above a warm baseline,
training-step img/s and FLOP efficiency with lazy R1, conv calls per step with the reference vs the custom
upfirdn2d backward."""
from __future__ import annotations
import subprocess, sys, textwrap, time
from contextlib import contextmanager, nullcontext
from unittest import mock
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, cpu_gan_step, efficiency, matmul_gflops, report, section  # noqa: E402

from synthface_nb.stylegan2 import StyleGAN2FaceGenerator, build_generator  # noqa: E402
from synthface_nb.stylegan2_training import training_preset  # noqa: E402


def _generator(preset: str, classes: int) -> StyleGAN2FaceGenerator:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        G = build_generator(training_preset(preset, classes)["networks"]["G"])
    return StyleGAN2FaceGenerator(G, batch_size=64)


def _generation(name: str, fg: StyleGAN2FaceGenerator, n: int, repeats: int = 2) -> None:
    cond = fg.identity_conditions([i % fg.num_identities for i in range(n)])
    seeds = list(range(1, n + 1))
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        fg.G(torch.zeros(1, fg.G.z_dim), cond.values[:1], noise_mode="const", fused_modconv=False)
    flops = fc.get_total_flops()
    report(f"{name}: generator FLOPs per image (conv + matmul)", flops / 1e9, "GFLOP")
    variants = [("non-fused, channels_last (CPU default)", False, True), ("non-fused, contiguous", False, False),
                ("fused grouped conv", True, False)]
    for label, fused, cl in variants:
        def run():
            with torch.inference_mode():
                for s in range(0, n, fg.batch_size):
                    fg.G(torch.randn(min(fg.batch_size, n - s), fg.G.z_dim), cond.values[s:s + fg.batch_size],
                         noise_mode="const", fused_modconv=fused, channels_last=cl)
        ips = n / best_time(run, repeats=repeats)
        report(f"{name}: {label}", ips, "img/s")
        report(f"{name}:   FLOP efficiency vs in-process matmul", efficiency(flops, ips), "%", "(goal >= 50 %)")
    t0 = time.perf_counter()
    fg.generate(cond[:n], seeds)
    report(f"{name}: FaceGenerator.generate (seeds -> z, per-image noise)", n / (time.perf_counter() - t0), "img/s")


_MEM_SCRIPT = textwrap.dedent("""
    import sys, tempfile, torch
    from pathlib import Path
    from synthface_nb.stylegan2 import Generator, StyleGAN2FaceGenerator
    from synthface_nb.generation import write_generated_dataset
    def status_mb(field):  # from /proc/self/status: VmRSS now, VmHWM the peak since the last reset
        line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
        return int(line.split()[1]) / 1024
    n_ids = int(sys.argv[1])
    torch.manual_seed(0)
    # a 16-px generator: the writer's memory, not the network's, is what this measures
    G = Generator(z_dim=32, c_dim=n_ids, w_dim=32, img_resolution=16, mapping=dict(num_layers=1),
                  synthesis=dict(channel_base=256, channel_max=32))
    fg = StyleGAN2FaceGenerator(G, batch_size=64)
    with tempfile.TemporaryDirectory() as warm, tempfile.TemporaryDirectory() as out:
        # warm-up: one batch through the whole path (network, PNG encoder, allocator); then the baseline and a fresh peak
        write_generated_dataset(fg, warm, images_per_identity=10, identities=6, seed=0, batch_size=64, progress=False)
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)
        base = status_mb("VmRSS")
        write_generated_dataset(fg, out, images_per_identity=10, seed=0, batch_size=64, progress=False)
        print(base, status_mb("VmHWM") - base)
""")


def _rss_mb(n_ids: int) -> tuple[float, float, float]:
    "Warm RSS before generating, the peak growth above it while writing `n_ids` x 10 images, and the seconds taken"
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _MEM_SCRIPT, str(n_ids)], capture_output=True, text=True, check=True)
    base, growth = map(float, out.stdout.split()[-2:])
    return base, growth, time.perf_counter() - t


@contextmanager
def _reference_upfirdn2d():
    "Run upfirdn2d through its plain-op reference (autograd differentiates it op by op), as before the custom Function"
    import synthface_nb.stylegan2 as sg2
    ref = lambda x, f, up, down, padding, gain, flip: sg2._upfirdn2d_ref(x, f, up, down, padding, gain, flip)
    with mock.patch.object(sg2._UpFirDn2d, "apply", staticmethod(ref)): yield


class _FlopCount(TorchDispatchMode):
    "Conv + matmul FLOPs by torch's flop formulas (FlopCounterMode's module tracker cannot follow autograd.grad to a leaf, R1's case)"
    def __init__(self):
        super().__init__(); self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None: self.total += formula(*args, **(kwargs or {}), out_val=out)
        return out


def _conv_calls(fn) -> int:
    "Convolution kernel calls (forward dispatches and backward ops, the double backward's included) while `fn()` runs"
    with profile(activities=[ProfilerActivity.CPU]) as p: fn()
    return sum(e.count for e in p.key_averages() if e.key in ("aten::_convolution", "aten::convolution_backward"))


def _training_step(rounds: int = 4) -> None:
    cfg, step = cpu_gan_step(10)
    n, interval = cfg["batch_size"], cfg["D_reg_interval"]
    step(0)  # runs all four phases; warm-up
    flops = {}
    for s in (1, interval):
        with _FlopCount() as fc: step(s)
        flops[s] = fc.total
    report("cpu preset: step FLOPs (conv + matmul), plain step", flops[1] / 1e9, "GFLOP")
    report("cpu preset: step FLOPs, step with lazy R1", flops[interval] / 1e9, "GFLOP")
    paths = {"reference upfirdn2d (op-by-op autograd)": _reference_upfirdn2d, "custom upfirdn2d Function": nullcontext}
    for label, ctx in paths.items():
        with ctx():
            step(interval)  # warm-up of this path
            report(f"{label}: conv calls in a step with lazy R1", _conv_calls(lambda: step(interval)), "calls")
            report(f"{label}: conv calls in a plain step", _conv_calls(lambda: step(1)), "calls")
    # the machine is shared: rounds alternate the two paths and the matmul, and each figure is its best round
    best = {(label, s): float("inf") for label in paths for s in (1, interval)}
    mm = 0.0
    for _ in range(rounds):
        for label, ctx in paths.items():
            with ctx():
                for s in (1, interval):
                    t = time.perf_counter(); step(s); best[label, s] = min(best[label, s], time.perf_counter() - t)
        mm = max(mm, matmul_gflops(fresh=True))  # same thread count as the steps
    report("fp32 matmul, best round", mm, "GFLOP/s")
    for label in paths:
        t_plain, t_r1 = best[label, 1], best[label, interval]
        report(f"{label}: plain step (Gmain + Dmain), batch {n}", n / t_plain, "img/s")
        report(f"{label}:   FLOP efficiency vs in-process matmul", efficiency(flops[1] / n, n / t_plain, mm), "%")
        report(f"{label}: step with lazy R1", n / t_r1, "img/s")
        report(f"{label}:   FLOP efficiency vs in-process matmul", efficiency(flops[interval] / n, n / t_r1, mm), "%")
        # every `interval`-th step adds R1: the GAN stage's average step
        t_avg = ((interval - 1) * t_plain + t_r1) / interval
        f_avg = ((interval - 1) * flops[1] + flops[interval]) / interval
        report(f"{label}: average step, R1 every {interval}", n / t_avg, "img/s")
        report(f"{label}:   FLOP efficiency vs in-process matmul", efficiency(f_avg / n, n / t_avg, mm), "%", "(goal >= 70 %)")
        report(f"{label}:   R1 step time / plain step time", t_r1 / t_plain, "x")
    report("R1 step time, reference / custom", best[list(paths)[0], interval] / best[list(paths)[1], interval], "x")


def main() -> None:
    if "--training-only" in sys.argv:  # [--rounds N]: only the training-step figures
        rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 4
        with section("StyleGAN2 training"): _training_step(rounds)
        return
    with section("StyleGAN2 generation"):
        _generation("cpu preset (32 px)", _generator("cpu", 10), 128)
        _generation("paper_sface (128 px, 10,572 classes)", _generator("paper_sface", 10572), 4, repeats=1)
    with section("StyleGAN2 streaming generation memory"):
        # growth above a warm baseline: whole-process RSS is mostly torch, which would hide a leak of tens of MB
        b1, g1, _ = _rss_mb(100)
        b4, g4, t4 = _rss_mb(400)
        report("warm RSS before generating (torch, network, one batch)", b4, "MB")
        report("peak RSS growth above it, 1,000 images (100 ids x 10)", g1, "MB")
        report("peak RSS growth above it, 4,000 images (400 ids x 10)", g4, "MB")
        report("growth for the 3,000 extra images", g4 - g1, "MB", "(flat: ~0; 10 kB/image kept would be 30 MB)")
        report("peak RSS ratio 4k / 1k (whole process)", (b4 + g4) / (b1 + g1), "x", "(goal <= 1.1)")
        report("16-px generation + PNG writing, 4k images, incl. start-up", 4000 / t4, "img/s")
    with section("StyleGAN2 training"):
        _training_step()


if __name__ == "__main__":
    main()
