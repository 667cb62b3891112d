"""`torch.compile` (inductor's C++ kernels on the CPU) against eager for tiny configurations of the four trained
networks: the iResNet backbone, StyleGAN2's G (mapping + synthesis, random noise from a seeded generator) and D, and
the diffusion DiT. Forward outputs and every parameter's gradient agree within float reassociation: inductor fuses
and reorders reductions, so results differ in the last bits, not more (tolerances below). R1 and the path-length
penalty (double backward, which compiled graphs do not support) run eager through a compiled G and D. A trainer run
with `compile: on` trains as an eager run does and writes state_dicts without `_orig_mod.` keys (checkpoint round
trip). Without a C++ compiler a run warns once and stays eager. Compiling costs tens of seconds per network on a
small CPU: the per-network comparisons and the GAN and FR training runs are `slow` (`pytest -m slow
tests/test_compile.py`, ~10 min on the shared 2-core machine here with cold caches); the default run compiles one
tiny DiT (~60 s here, cold).
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from synthface_nb.runloop import compile_problem

FWD = dict(rtol=1e-4, atol=1e-5)    # outputs: float32 reassociation in fused kernels
GRAD = dict(rtol=1e-3, atol=1e-5)   # gradients: longer reductions (over batch and space), more reordering

pytestmark = pytest.mark.skipif(compile_problem("cpu") is not None, reason=f"torch.compile unusable here: {compile_problem('cpu')}")


def _pair(module):
    "An eager module and a compiled copy with the same weights"
    compiled = copy.deepcopy(module); compiled.compile()
    return module, compiled


def _check(eager, compiled, run):
    "run(module) -> output: outputs and every parameter's gradient of sum(out²) agree"
    outs = []
    for m in (eager, compiled):
        m.zero_grad(set_to_none=True)
        out = run(m); out.square().sum().backward(); outs.append(out.detach())
    torch.testing.assert_close(outs[1], outs[0], **FWD)
    for (name, pe), (_, pc) in zip(eager.named_parameters(), compiled.named_parameters()):
        if pe.grad is None: assert pc.grad is None, name; continue
        torch.testing.assert_close(pc.grad, pe.grad, **GRAD, msg=lambda m: f"{name}: {m}")


@pytest.mark.slow
def test_iresnet_compiled_matches_eager():
    from synthface_nb.backbones import build_backbone
    torch.manual_seed(0)
    net = build_backbone("iresnet18", width=0.125, input_size=32, embedding_size=16, dropout=0.0).train()
    x = torch.randn(4, 3, 32, 32)
    _check(*_pair(net), lambda m: m(x))


def _tiny_gan():
    from synthface_nb.stylegan2 import build_discriminators, build_generator, stylegan2_config
    torch.manual_seed(0)
    cfg = stylegan2_config(16, 5, z_dim=16, w_dim=16, channel_base=256, channel_max=32, d_map_layers=1,
                           mbstd_group_size=2, conv_clamp=None)
    return build_generator(cfg["G"]), build_discriminators(cfg["D"])


@pytest.mark.slow
def test_generator_compiled_matches_eager():
    G, _ = _tiny_gan()
    z, c = torch.randn(4, 16), F.one_hot(torch.arange(4) % 5, 5).float()
    eager, compiled = G, copy.deepcopy(G)
    compiled.mapping.compile(); compiled.synthesis.compile()
    def run(m):   # the training loop's calls: mapping, then synthesis with noise from a seeded generator
        gen = torch.Generator().manual_seed(1)
        return m.synthesis(m.mapping(z, c), noise_mode="random", generator=gen)
    _check(eager, compiled, run)
    torch.testing.assert_close(compiled.mapping.w_avg, eager.mapping.w_avg, **FWD)   # the tracked mean w updates alike


@pytest.mark.slow
def test_discriminator_compiled_matches_eager():
    _, D = _tiny_gan()
    D = D[next(iter(D.keys()))]
    x, c = torch.randn(4, D.img_channels, 16, 16), F.one_hot(torch.arange(4) % 5, 5).float()
    _check(*_pair(D), lambda m: m(x, c))


@pytest.mark.slow
def test_dit_compiled_matches_eager():
    from synthface_nb.diffusion import denoisers
    torch.manual_seed(0)
    net = denoisers.build("dit", resolution=16, cond_dim=8, patch_size=4, width=32, depth=2, heads=2).train()
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([3, 250, 600, 900])
    cond, lm = F.normalize(torch.randn(4, 8), dim=1), torch.rand(4, 3, 16, 16)
    _check(*_pair(net), lambda m: m(x, t, cond, lm))


def test_r1_and_path_length_run_eager_through_compiled_networks():
    from synthface_nb.stylegan2_training import StyleGAN2Loss
    from synthface_nb.runloop import maybe_compile
    G, D = _tiny_gan()
    G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
    test = maybe_compile([G2.mapping, G2.synthesis, *D2.values()], "on", "cpu")
    assert test == {"compile": True, "compile_setting": "on", "compile_error": None}
    real, c = torch.randn(4, 3, 16, 16), F.one_hot(torch.arange(4) % 5, 5).float()
    z = torch.randn(4, 16)
    grads = []
    for g, d in ((G, D), (G2, D2)):
        loss = StyleGAN2Loss(g, d, r1_gamma=1.0, style_mixing_prob=0.0)
        g.requires_grad_(True); d.requires_grad_(True)
        loss.accumulate_gradients("Dreg", real, c, z, c, gen=torch.Generator().manual_seed(0))
        loss.accumulate_gradients("Greg", real, c, z, c, gen=torch.Generator().manual_seed(0))
        grads.append([p.grad for p in [*g.parameters(), *d.parameters()]])
    for ge, gc in zip(*grads):
        assert (ge is None) == (gc is None)
        if ge is not None: torch.testing.assert_close(gc, ge, rtol=1e-6, atol=1e-7)   # the same eager code: equal


def test_diffusion_training_with_compile_on_matches_eager_and_round_trips(tmp_path):
    "Two training steps of a tiny DiT compiled and eager: the same weights; the checkpoint loads into an eager denoiser"
    import numpy as np
    from synthface_nb.core import load_checkpoint
    from synthface_nb.diffusion import build_denoiser, diffusion_defaults, train_diffusion
    from synthface_nb.recordio import open_face_dataset
    from synthface_nb.testing import write_shape_classes
    ds = open_face_dataset(write_shape_classes(tmp_path / "data", n_classes=2, per_class=4, size=16))
    cfg = {**diffusion_defaults(), "resolution": 16, "cond_dim": 8, "batch_size": 4, "total_kimg": 0.008,
           "snapshot_kimg": 0.008, "denoiser": {"name": "dit", "patch_size": 4, "width": 32, "depth": 2, "heads": 2},
           "schedule": {"name": "cosine", "timesteps": 100}, "sampling": {"steps": 2, "guidance": 1.0}}
    cond = lambda idx: F.one_hot(torch.as_tensor(np.asarray(idx)) % 8, 8).float()
    lms = lambda idx: torch.full((len(idx), 5, 2), 8.0)
    run = lambda c, name: train_diffusion(c, ds, cond, lms, tmp_path / name, progress=False, grid=(2, 2))
    on, off = run({**cfg, "compile": "on"}, "on"), run({**cfg, "compile": "off"}, "off")
    assert (on["environment"]["compile"], off["environment"]["compile"], on["step"]) == (True, False, 2)
    ck_on, ck_off = (load_checkpoint(tmp_path / n / "training-state.pt", kind="diffusion_training") for n in ("on", "off"))
    fresh = build_denoiser(cfg)
    assert list(ck_on["model"]) == list(fresh.state_dict())       # no `_orig_mod.` prefix
    fresh.load_state_dict(ck_on["model"])
    for k, v in ck_off["model"].items(): torch.testing.assert_close(ck_on["model"][k], v, **GRAD, msg=lambda m: f"{k}: {m}")
    longer = {**cfg, "compile": "off", "total_kimg": 0.012}   # compile may change on a resume: one more step, eager
    assert run(longer, "on")["step"] == 3


@pytest.mark.slow
def test_gan_training_steps_with_compile_on_match_eager():
    "Two StyleGAN2-ADA steps (step 0 runs all four phases) with G and D compiled match eager ones"
    from synthface_nb.stylegan2 import stylegan2_config
    from synthface_nb.stylegan2_training import build_training_state, training_preset, training_step
    from synthface_nb.runloop import maybe_compile
    cfg = training_preset("cpu", 5, batch_size=4, G_reg_interval=1, D_reg_interval=1, loss={"pl_weight": 2.0})
    cfg["networks"] = stylegan2_config(16, 5, z_dim=16, w_dim=16, channel_base=256, channel_max=32, d_map_layers=1,
                                       mbstd_group_size=2, conv_clamp=None)
    real = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    cond = lambda idx: F.one_hot(torch.as_tensor(idx) % 5, 5).float()
    states = []
    for setting in ("off", "on"):
        st = build_training_state(cfg, seed=0)
        assert maybe_compile([st.G.mapping, st.G.synthesis, *st.D.values()], setting, "cpu")["compile"] == (setting == "on")
        for _ in range(2): training_step(st, cfg, real, torch.arange(4).numpy(), cond, 100, seed=0)
        states.append(st)
    for part in ("G", "D", "G_ema"):
        eager, compiled = (getattr(s, part).state_dict() for s in states)
        assert list(compiled) == list(eager)
        for k in eager: torch.testing.assert_close(compiled[k], eager[k], **GRAD, msg=lambda m: f"{part}.{k}: {m}")


@pytest.mark.slow
def test_fr_training_with_compile_on_matches_eager_and_round_trips(tmp_path):
    "Three FR steps with the backbone compiled match eager ones; the model file loads as an eager FR model"
    from synthface_nb.data import ImageFolderDataset
    from synthface_nb.fr_models import load_fr_model
    from synthface_nb.testing import write_color_folder
    from synthface_nb.trainer import TrainConfig, train_fr
    ds = ImageFolderDataset(write_color_folder(tmp_path / "data", n_identities=3, per_identity=4, size=32))
    cfg = TrainConfig(network="iresnet18", width=0.125, input_size=32, embedding_size=16, dropout=0.0, batch_size=4,
                      lr_batch=4, epochs=1, num_workers=0, log_every=1, eval_at_end=False)
    runs = {s: train_fr(cfg.replace(compile=s), ds, tmp_path / s, device="cpu", progress=False) for s in ("off", "on")}
    assert (runs["on"].environment["compile"], runs["off"].environment["compile"]) == (True, False)
    torch.testing.assert_close(runs["on"].losses, runs["off"].losses, **GRAD)
    on, off = (load_fr_model(tmp_path / s / "model.pt") for s in ("on", "off"))
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(on.embed(x), off.embed(x), **GRAD)


def test_no_compiler_warns_once_and_runs_eager(monkeypatch):
    "Without a working C++ compiler the probe fails: one warning, the module stays eager, the record says why"
    import warnings
    import torch._inductor.config as ic
    from synthface_nb import runloop
    torch.compile(lambda x: x + 1)(torch.ones(2))          # a compiler found before must not be remembered
    monkeypatch.setattr(ic.cpp, "cxx", ("/nonexistent/g++",))
    monkeypatch.setattr(runloop, "_COMPILE_PROBLEMS", {})
    torch._dynamo.reset()
    lin = torch.nn.Linear(3, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recs = [runloop.maybe_compile(lin, "on", "cpu") for _ in range(2)]
    assert recs[0] == recs[1] and recs[0]["compile"] is False and "No working C++ compiler" in recs[0]["compile_error"]
    assert [str(w.message).split(" (")[0] for w in caught] == ["torch.compile does not work on cpu"]
    assert lin._compiled_call_impl is None
    torch._dynamo.reset()
