"""torch.compile against eager for the four trained networks at the cpu preset's sizes: the iResNet (FR training
step), StyleGAN2's G and D (forward and backward of each alone) and the diffusion DiT (training step). For each:
the eager step time, the compiled step time after warm-up, the compile time (first calls less steady steps, with
inductor's on-disk caches off, so a cold start), the speed-up and the number of steps after which compiling pays
for itself. The figures decide `runloop.COMPILE_AUTO` for the CPU. Times on a shared machine drift: read the ratios,
taken in the same process minutes apart, and the matmul reference printed next to them.
Run: `python bench/bench_compile.py` or `python bench/run_all.py compile`.
"""
from __future__ import annotations
import copy, sys, time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, matmul_gflops, report, section  # noqa: E402


def _cold_compiles() -> None:
    "Switch inductor's on-disk caches off: a cached graph or kernel would hide the compile time a fresh machine pays"
    import os, tempfile
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_compile_")   # no kernel built before
    import torch._inductor.config as ic
    ic.fx_graph_cache = False
    if hasattr(ic, "autotune_local_cache"): ic.autotune_local_cache = False
    try:
        import torch._functorch.config as fc
        fc.enable_autograd_cache = False
    except (ImportError, AttributeError): pass


def _iresnet():
    from synthface_nb.backbones import build_backbone
    from synthface_nb.fr_stages import fr_settings
    from synthface_nb.heads import get_head
    c = fr_settings({}, "cpu")[0]
    torch.manual_seed(0)
    net = build_backbone(c.network, width=c.width, input_size=c.input_size, embedding_size=c.embedding_size,
                         dropout=c.dropout).to(memory_format=torch.channels_last)
    head = get_head("cosface", c.embedding_size, 150)
    x = torch.randn(c.batch_size, 3, c.input_size, c.input_size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 150, (c.batch_size,))
    opt = torch.optim.SGD(list(net.parameters()) + list(head.parameters()), lr=1e-3, momentum=0.9)

    def step(): opt.zero_grad(); F.cross_entropy(head(net(x), y), y).backward(); opt.step()
    return f"iResNet ({c.network} x{c.width} @{c.input_size}, batch {c.batch_size}): train step", net, step


def _gan():
    from synthface_nb.stylegan2_training import build_training_state, training_preset
    cfg = training_preset("cpu", 10)
    st = build_training_state(cfg, seed=0)
    n, G, D = cfg["batch_size"], st.G, st.D
    head = next(iter(D.keys()))
    G.requires_grad_(True); D.requires_grad_(True)
    c = F.one_hot(torch.arange(n) % 10, 10).float()
    z, gen = torch.randn(n, G.z_dim), torch.Generator().manual_seed(0)
    x = torch.randn(n, G.img_channels, G.img_resolution, G.img_resolution)

    def g_step():
        G.zero_grad(); G.synthesis(G.mapping(z, c), noise_mode="random", generator=gen).square().mean().backward()

    def d_step(): D.zero_grad(); D[head](x, c).square().mean().backward()
    res = G.img_resolution
    return ((f"G ({res} px, batch {n}): mapping + synthesis fwd + bwd", [G.mapping, G.synthesis], g_step),
            (f"D ({res} px, batch {n}): fwd + bwd", [D[head]], d_step))


def _dit():
    from synthface_nb.core import torch_generator
    from synthface_nb.diffusion import NoiseSchedule, build_denoiser, diffusion_loss, landmark_image
    from synthface_nb.align import ARCFACE_TEMPLATE_112
    from synthface_nb.pipeline import resolve_preset
    from synthface_nb.vigface import vigface_defaults
    cpu = resolve_preset("vigface", vigface_defaults(), "cpu")
    res, batch = int(cpu["resolution"]), int(cpu["batch_size"])
    torch.manual_seed(0)
    net = build_denoiser({"resolution": res, "cond_dim": 512, "denoiser": cpu["denoiser"]}).train()
    sched = NoiseSchedule("cosine", 1000)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x0 = torch.rand(batch, 3, res, res) * 2 - 1
    cond = F.normalize(torch.randn(batch, 512), dim=1)
    lm = landmark_image(torch.as_tensor(ARCFACE_TEMPLATE_112, dtype=torch.float32)[None].repeat(batch, 1, 1) * res / 112, res)

    def step(s=[0]):
        loss, _ = diffusion_loss(net, sched, x0, cond, lm, torch_generator(0, s[0]))
        opt.zero_grad(); loss.backward(); opt.step(); s[0] += 1
    d = cpu["denoiser"]
    return f"DiT ({d['patch_size']}-px patches, width {d['width']}, depth {d['depth']}, batch {batch}): train step", net, step


def compare(name: str, modules, step, repeats: int = 5) -> dict:
    "Eager vs compiled step time of `step` when `modules` are compiled in place; compile time; break-even steps"
    modules = modules if isinstance(modules, list) else [modules]
    eager_first = best_time(step, repeats=1, warmup=1)
    torch._dynamo.reset()
    for m in modules: m.compile()
    t0 = time.perf_counter(); step(); step(); first2 = time.perf_counter() - t0    # tracing, kernels, a recompile if any
    impls = [m._compiled_call_impl for m in modules]

    def use(compiled: bool):
        for m, impl in zip(modules, impls): m._compiled_call_impl = impl if compiled else None
    # alternate eager and compiled steps: on a shared machine the load drifts, and both see the same drift
    times = {False: [], True: []}
    for _ in range(repeats):
        for compiled in (False, True):
            use(compiled); t = time.perf_counter(); step(); times[compiled].append(time.perf_counter() - t)
    use(False)   # back to eager for the next network
    eager, compiled = min(times[False] + [eager_first]), min(times[True])
    ref = matmul_gflops(fresh=True)
    compile_s = max(first2 - 2 * compiled, 0.0)
    gain = eager - compiled
    report(f"{name}: eager", 1e3 * eager, "ms/step")
    report(f"{name}: compiled (after warm-up)", 1e3 * compiled, "ms/step")
    report(f"{name}: speed-up compiled / eager", eager / compiled, "x")
    report(f"{name}: compile time (cold caches)", compile_s, "s")
    report(f"{name}: break-even", compile_s / gain if gain > 0 else float("inf"), "steps", "(inf: never)")
    report(f"{name}: fp32 matmul right after", ref, "GFLOP/s")
    return {"eager": eager, "compiled": compiled, "compile_s": compile_s}


def main() -> None:
    _cold_compiles()
    with section("torch.compile vs eager at the cpu preset's sizes (inductor C++ kernels)"):
        name, net, step = _iresnet(); compare(name, net, step)
        for name, mods, step in _gan(): compare(name, mods, step)
        name, net, step = _dit(); compare(name, net, step)


if __name__ == "__main__":
    main()
