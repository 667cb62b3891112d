import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def run_stage(stage: str, cwd: Path, **params) -> Path:
    "Execute nbs/stages/<stage>.ipynb in `cwd` with papermill on a parameter file (`-f`, as a user runs a stage by hand)"
    import yaml
    out = cwd / "runs" / f"{stage}.ipynb"
    out.parent.mkdir(exist_ok=True)
    (cwd / "runs" / f"{stage}.yaml").write_text(yaml.safe_dump(params))
    args = [Path(sys.executable).parent / "papermill", ROOT / "nbs" / "stages" / f"{stage}.ipynb", out,
            "--log-level", "WARNING", "-f", cwd / "runs" / f"{stage}.yaml"]
    res = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert res.returncode == 0, f"stage {stage} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return out
