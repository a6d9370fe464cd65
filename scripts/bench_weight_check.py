#!/usr/bin/env python3
"""Time verify's weight check (``bake.verify.weights.weight_check``) on the int4 export of a 0.6B-shape bake.

Builds (once, under --workdir) the random-weight Qwen3-0.6B of ``bench_inputs.py``, a dense bf16
bake at 50 % off (hard gates, energy scale) and its ``--target cpu --quantize int4`` export, then
runs the check in a fresh child process per repeat (numpy, one thread; the child records that it
never imported torch). Reported: the check's own time (reading the graph and the bake, dequantizing
and comparing every weight), the child's wall time with interpreter start-up and imports, and its
peak RSS (``os.wait4``).

    flock /work/bench.lock python scripts/bench_weight_check.py --workdir /work/bench-data11 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bake import measure  # noqa: E402
from bench_inputs import REPO, ensure_inputs  # noqa: E402

CHECK = """
import json, sys, time
from bake.verify.weights.bake_tensors import BakeFolder
from bake.verify.weights.weight_check import check_export_weights
start = time.perf_counter()
report = check_export_weights(sys.argv[2], BakeFolder(sys.argv[1]))
print(json.dumps({"check_s": time.perf_counter() - start, "passed": report.passed,
                  "weights_checked": report.weights_checked, "elements_checked": report.elements_checked,
                  "max_quant_error_steps": report.max_quant_error_steps, "torch_loaded": "torch" in sys.modules}))
"""


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bake.cli", *args, "--quiet"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lambda-bake-bench"))
    ap.add_argument("--quantize", choices=("int4", "int8"), default="int4")
    ap.add_argument("--repeats", type=int, default=3, help="runs of the check; the best is kept")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    base, gates = ensure_inputs(args.workdir)
    bake = args.workdir / "bake-50-dense"
    export = args.workdir / f"bake-50-dense-cpu-{args.quantize}"
    if not bake.exists():
        subprocess.run(cli("bake", "--base", str(base), "--gates", str(gates), "--off-fraction", "0.5",
                           "--out", str(bake)), cwd=REPO, check=True)
    if not export.exists():
        subprocess.run(cli("export", "--model", str(bake), "--out", str(export), "--target", "cpu", "--quantize",
                           args.quantize), cwd=REPO, check=True)
    runs = [measure([sys.executable, "-c", CHECK, str(bake), str(export)], [], reports=True)
            for _ in range(args.repeats)]
    best = min(runs, key=lambda r: r["check_s"])
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "bake": str(bake), "export": str(export), "quantize": args.quantize,
        "export_bytes": sum(p.stat().st_size for p in export.iterdir()),
        "runs": runs, "best": best,
    }
    print(f"weight check of {export.name}: best {best['check_s']:.2f} s of {args.repeats} "
          f"(child wall {best['wall_s']:.2f} s, peak RSS {best['peak_rss_mib']:.0f} MiB, {best['elements_checked']:,} "
          f"elements, passed {best['passed']}, worst {best['max_quant_error_steps']:.4f} steps)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
