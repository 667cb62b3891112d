"""Stage efficiency: each training stage of the last pipeline run against its own step, benchmarked now.

A stage's speed is the images it trained on divided by its recorded wall time (`artifacts/stage_times/`:
papermill, kernel start, imports, data, logging, checkpoints, callbacks, saving). Its step is the same
computation on a fixed in-memory batch: the run's own config (network, objective and its arguments, the
teacher's forward for KT/CL, batch, threads) for FR runs; SFace's StyleGAN2-ADA step at the stage's settings,
with its lazy R1 iteration averaged in, for the GAN. The ratio is the share of the stage spent on training
steps; the goal is >= 80 %. The loop's own img/s (recorded by the trainer, start-up and saving excluded) is
shown beside it to tell in-loop overhead from start-up.

Run after `dvc repro`, on a quiet machine: `python bench/bench_stages.py` or `python bench/run_all.py stages`.
"""
from __future__ import annotations
import json, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_time, cpu_gan_step, report, section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOAL = "goal >= 80"


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def fr_step(cfg, num_classes: int, teacher_path: str | None):
    "One training step of FR run config `cfg` on a fixed random batch (the trainer's forward, backward, clipping, SGD)"
    from synthface_nb.backbones import build_backbone
    from synthface_nb.fr_models import load_fr_model
    from synthface_nb.objectives import ObjectiveContext, build_objective, objectives
    obj_cls = objectives.get(cfg.objective)
    teacher = load_fr_model(ROOT/teacher_path) if obj_cls.needs_teacher else None
    torch.manual_seed(0)
    net = build_backbone(cfg.network, width=cfg.width, embedding_size=cfg.embedding_size, input_size=cfg.input_size,
                         dropout=cfg.dropout)
    if cfg.channels_last: net.to(memory_format=torch.channels_last)
    objective = build_objective(cfg.objective, ObjectiveContext(net, cfg.embedding_size, num_classes, teacher, cfg.batch_size),
                                **cfg.objective_kwargs)
    mf = torch.channels_last if cfg.channels_last else torch.contiguous_format
    xs = [torch.rand(cfg.batch_size, 3, 112, 112).mul(2).sub(1).contiguous(memory_format=mf) for _ in range(obj_cls.n_views)]
    labels = torch.randint(0, num_classes, (cfg.batch_size,))
    params = [p for p in list(net.parameters()) + list(objective.parameters()) if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=cfg.weight_decay)

    def step():
        loss, _ = objective(net, xs, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad_norm: torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_grad_norm)
        opt.step()
    return step


def fr_stages() -> None:
    from synthface_nb.trainer import TrainConfig
    for metrics_path in sorted((ROOT/"artifacts/train_fr").glob("*/metrics.json")):
        m, name = _json(metrics_path), metrics_path.parent.name
        times = _json(ROOT/f"artifacts/stage_times/train_fr_{name}.json")
        if not m.get("steps") or times is None: continue
        cfg = TrainConfig.from_dict(m["config"])
        n_classes = m.get("n_identities") or 128
        before = torch.get_num_threads()
        if cfg.num_threads: torch.set_num_threads(cfg.num_threads)
        try: step_ips = cfg.batch_size / best_time(fr_step(cfg, n_classes, m.get("teacher")), repeats=5, warmup=2)
        finally: torch.set_num_threads(before)
        images = m["steps"] * m["environment"]["global_batch"]
        stage_ips = images / times["seconds"]
        report(f"train_fr_{name} ({cfg.objective}): step, benchmarked now", step_ips, "img/s")
        report(f"train_fr_{name}: the trainer's loop in the stage", m["images_per_second"], "img/s")
        report(f"train_fr_{name}: the whole stage ({images} images, {times['seconds']:.0f} s)", stage_ips, "img/s")
        report(f"train_fr_{name}: stage efficiency (stage / step)", 100 * stage_ips / step_ips, "%", GOAL)


def gan_stage() -> None:
    m = _json(ROOT/"artifacts/generators/sface/metrics.json")
    times = _json(ROOT/"artifacts/stage_times/train_generator_sface.json")
    if m is None or times is None: return
    cfg, step = cpu_gan_step(int(m["num_classes"]))
    n, interval = cfg["batch_size"], int(cfg["D_reg_interval"])
    if cfg["loss"]["pl_weight"]: raise NotImplementedError("the cpu preset has no path-length phase; average Greg in too")
    before = torch.get_num_threads()
    torch.set_num_threads(m["environment"]["threads"])
    try:
        step(0)   # step 0 runs every phase: warm-up
        plain = best_time(lambda: step(1), repeats=4, warmup=0)
        t = time.perf_counter(); step(interval); with_r1 = time.perf_counter() - t
    finally: torch.set_num_threads(before)
    step_ips = n * interval / (plain * (interval - 1) + with_r1)
    stage_ips = m["kimg"] * 1000 / times["seconds"]
    report(f"train_generator_sface: step, R1 every {interval} averaged in", step_ips, "img/s")
    report("train_generator_sface: the training loop in the stage", m["img_per_s"], "img/s")
    report(f"train_generator_sface: the whole stage ({m['kimg']:.0f} kimg, {times['seconds']:.0f} s)", stage_ips, "img/s")
    report("train_generator_sface: stage efficiency (stage / step)", 100 * stage_ips / step_ips, "%", GOAL)


def main():
    with section("Stage efficiency of the last pipeline run"):
        fr_stages()
        gan_stage()


if __name__ == "__main__":
    main()
