"""A seed sweep with DVC experiments: does the results table hold over several seeds?

`python tools/seed_sweep.py queue 1 2 3` prints the `dvc exp run --queue -S seed=N` commands (`--run` queues them;
then `dvc queue start -j 1` runs them, one full pipeline each, about 20 minutes per seed on the 2-core CPU here);
`python tools/seed_sweep.py collect --out seed_sweep.md` reads `dvc exp show --json` (or a saved copy, `--json FILE`)
and writes, per FR model, the verification accuracy of every seed, their mean ± sd, and whether each ordering the
README claims (`better > worse` on a benchmark) holds in every seed. Only experiments that differ from the baseline
commit in `seed` alone are counted, so an lr sweep in the same queue does not mix in."""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = "artifacts/evaluate/metrics.json"
BENCHMARK = "procedural"
# The orderings the README reads off one run: (better, worse, benchmark).
ORDERINGS = [("teacher", "sface_cl", BENCHMARK), ("sface_cl", "sface_cls", BENCHMARK), ("usynthface", "untrained", BENCHMARK),
             ("vigface", "untrained", BENCHMARK), ("arcbiface_vis_nir", "arcbiface_vis", "procedural_nir_vis")]


def queue_commands(seeds: list[int]) -> list[list[str]]:
    "One `dvc exp run --queue` command per seed, each experiment named seed-N"
    return [["dvc", "exp", "run", "--queue", "-S", f"seed={s}", "-n", f"seed-{s}"] for s in seeds]


def _states(records: list[dict]):
    "(kind, state) for every record of `dvc exp show --json`: experiments first, then commits, then the workspace"
    exps, commits, workspace = [], [], []
    for rec in records:
        (workspace if rec["rev"] == "workspace" else commits).append(("baseline", rec))
        for rng in rec.get("experiments") or []:
            state = (rng.get("executor") or {}).get("state", "success")   # finished experiments have no executor
            exps.append((state, rng["revs"][0]))
    return exps + commits + workspace


def _params(state: dict) -> dict:
    return ((state.get("data") or {}).get("params") or {}).get("params.yaml", {}).get("data") or {}


def seed_runs(records: list[dict], metrics: str = METRICS) -> tuple[dict[int, dict], list[str]]:
    "Evaluate metrics per seed from `dvc exp show --json` records (seed-only experiments and baselines), and notes on what was left out"
    baseline = next((_params(r) for r in records if r["rev"] != "workspace"), None) or _params(records[0])
    same = lambda p: {k: v for k, v in p.items() if k != "seed"} == {k: v for k, v in baseline.items() if k != "seed"}
    runs, notes = {}, []
    for kind, st in _states(records):
        name = st.get("name") or st["rev"][:7]
        if kind not in ("success", "baseline"):
            notes.append(f"{name}: {kind}, not collected"); continue
        params, m = _params(st), ((st.get("data") or {}).get("metrics") or {}).get(metrics, {}).get("data")
        if not m or "seed" not in params: continue
        if not same(params):
            notes.append(f"{name}: differs from the baseline in more than the seed, left out"); continue
        seed = int(params["seed"])
        if seed in runs:
            if kind != "baseline" and runs[seed] != m: notes.append(f"{name}: seed {seed} already collected, left out")
            continue
        runs[seed] = m
    return runs, notes


def accuracy(m: dict, model: str, bench: str) -> float | None:
    "Verification accuracy (%) of `model` on `bench` in one evaluate metrics dict, None if absent"
    v = m.get(model, {}).get(bench, {}).get("accuracy")
    return None if v is None else 100 * v


def sweep_markdown(runs: dict[int, dict], bench: str = BENCHMARK, orderings=ORDERINGS) -> str:
    "Per model: accuracy per seed and mean ± sd; then whether each ordering holds in every seed"
    seeds = sorted(runs)
    models = sorted({k for m in runs.values() for k, v in m.items() if isinstance(v, dict) and bench in v})
    fmt = lambda x: "–" if x is None else f"{x:.1f}"
    lines = [f"**Verification accuracy (%) on `{bench}` over {len(seeds)} seeds** (sd: sample standard deviation over seeds)", "",
             "| model | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |",
             "|---|" + "---:|" * (len(seeds) + 1)]
    for model in models:
        accs = [accuracy(runs[s], model, bench) for s in seeds]
        got = [a for a in accs if a is not None]
        sd = f" ± {statistics.stdev(got):.1f}" if len(got) > 1 else ""
        lines.append(f"| {model} | " + " | ".join(map(fmt, accs)) + f" | {statistics.fmean(got):.1f}{sd} |")
    lines += ["", "| ordering | benchmark | " + " | ".join(f"seed {s}" for s in seeds) + " | holds in every seed |",
              "|---|---|" + "---|" * (len(seeds) + 1)]
    for better, worse, b in orderings:
        cells = []
        for s in seeds:
            a, w = accuracy(runs[s], better, b), accuracy(runs[s], worse, b)
            cells.append(None if a is None or w is None else a > w)
        known = [c for c in cells if c is not None]
        verdict = "n/a" if not known else ("yes" if all(known) else f"no: fails in {known.count(False)} of {len(known)}")
        lines.append(f"| {better} > {worse} | {b} | " + " | ".join("–" if c is None else ("yes" if c else "no") for c in cells)
                     + f" | {verdict} |")
    return "\n".join(lines) + "\n"


def exp_show_json() -> list[dict]:
    "The records of `dvc exp show --json` in the repository"
    out = subprocess.run(["dvc", "exp", "show", "--json"], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("queue", help="print (or with --run, execute) one `dvc exp run --queue -S seed=N` per seed")
    q.add_argument("seeds", type=int, nargs="+")
    q.add_argument("--run", action="store_true", help="queue the experiments (then `dvc queue start -j 1` runs them)")
    c = sub.add_parser("collect", help="the markdown table of the seed experiments")
    c.add_argument("--json", type=Path, help="a saved `dvc exp show --json` (default: run it here)")
    c.add_argument("--benchmark", default=BENCHMARK)
    c.add_argument("--out", type=Path, help="write the table here (default: print it)")
    args = ap.parse_args(argv)
    if args.cmd == "queue":
        for cmd in queue_commands(args.seeds):
            print(" ".join(cmd))
            if args.run: subprocess.run(cmd, cwd=ROOT, check=True)
        print("dvc queue start -j 1   # runs them; `dvc exp show` lists them as they finish")
        return 0
    records = json.loads(args.json.read_text()) if args.json else exp_show_json()
    runs, notes = seed_runs(records)
    if not runs: raise SystemExit(f"no experiment with {METRICS} found (queue and run some first)")
    text = sweep_markdown(runs, args.benchmark)
    for n in notes: print(n, file=sys.stderr)
    if args.out:
        tmp = args.out.with_name(args.out.name + ".tmp"); tmp.write_text(text); tmp.replace(args.out)
    else: print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
