"""Run every benchmark in bench/ (files named bench_*.py) in one process and print their figures."""
import importlib.util, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import matmul_gflops, report  # noqa: E402

if __name__ == "__main__":
    only = sys.argv[1:]
    report("fp32 matmul 2048^3 (reference for FLOP efficiency)", matmul_gflops(), "GFLOP/s")
    for path in sorted(Path(__file__).parent.glob("bench_*.py")):
        if only and not any(o in path.stem for o in only): continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
        mod.main()
