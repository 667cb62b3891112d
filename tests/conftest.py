import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def run_stage(stage: str, cwd: Path, *params: tuple[str, str]) -> Path:
    "Execute nbs/stages/<stage>.ipynb with papermill in `cwd` (parameters as (name, value) pairs); the executed copy"
    out = cwd / "runs" / f"{stage}.ipynb"
    out.parent.mkdir(exist_ok=True)
    args = [Path(sys.executable).parent / "papermill", ROOT / "nbs" / "stages" / f"{stage}.ipynb", out,
            "--log-level", "WARNING"]
    for k, v in params: args += ["-p", k, v]
    res = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert res.returncode == 0, f"stage {stage} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return out
