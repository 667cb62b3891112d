"""StyleGAN2 (SFace generator): generation img/s and FLOP efficiency for the CPU and 128-px presets, fused vs
non-fused modulated convolution, memory growth of streaming generation for 1k vs 4k images above a warm baseline,
training-step img/s."""
from __future__ import annotations
import subprocess, sys, textwrap, time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, efficiency, report, section  # noqa: E402

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


def _training_step() -> None:
    from synthface_nb.stylegan2_training import build_training_state, training_step
    cfg = training_preset("cpu", 10)
    st = build_training_state(cfg, seed=0)
    n = cfg["batch_size"]
    real = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    cond = lambda idx: torch.nn.functional.one_hot(torch.as_tensor(idx) % 10, 10).float()
    idx = torch.arange(n).numpy()
    training_step(st, cfg, real, idx, cond, 100, seed=0)  # step 0 runs all four phases; warm-up
    st.step = 1
    times = []
    for _ in range(4):
        t = time.perf_counter(); training_step(st, cfg, real, idx, cond, 100, seed=0); times.append(time.perf_counter() - t)
    report("cpu preset: training step (Gmain + Dmain), batch 16", n / min(times), "img/s")
    st.step = 16
    t = time.perf_counter(); training_step(st, cfg, real, idx, cond, 100, seed=0)
    report("cpu preset: training step with lazy R1 (the preset has no path length)", n / (time.perf_counter() - t), "img/s")


def main() -> None:
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
