#!/usr/bin/env python3
"""How long ``push SWEEP --repo-prefix ... --dry-run`` takes to plan a whole study, and what it reads.

On the random-weight Qwen3 shape (``bench_inputs.py``; default 0.6B), bakes once a five-cut sweep (--off-fraction
0.1 ... 0.5, ``--layout ragged``) with its int4 ONNX and q8_0 GGUF exports, then runs the dry run --runs times, each
in a fresh process as a user runs it (interpreter start and imports included). The plan reads the manifests, the
cards' inputs and each GGUF's metadata, never the weights; the bytes it would upload are in the report.

    python scripts/bench_study_plan.py --workdir /tmp/bench --json docs/bench/bench_study_plan.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inputs import REPO, VARIANT, cpu_model, ensure_inputs, write_report  # noqa: E402

CUTS = ["0.1", "0.2", "0.3", "0.4", "0.5"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--shape", default="0.6b", help="0.6b (default), 1.7b, 4b or tiny")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    base, gates = ensure_inputs(args.workdir, args.shape)
    sweep = args.workdir / f"study-{args.shape}"
    cli = [sys.executable, "-m", "bake.cli"]
    if not any(sweep.glob("*/bake_manifest.json")):
        print(f"baking the sweep into {sweep} ...", file=sys.stderr)
        subprocess.run([*cli, "bake", "--base", str(base), "--gates", str(gates.parent), "--variant", VARIANT,
                        "--off-fraction", *CUTS, "--layout", "ragged", "--onnx", "--onnx-quantize", "int4",
                        "--gguf", "--gguf-type", "q8_0", "--out", str(sweep), "--quiet"], cwd=REPO, check=True)
    dry_run = [*cli, "push", str(sweep), "--repo-prefix", "me/qwen3-study", "--collection", "Lambda gates study",
               "--dry-run", "--json", "--quiet"]
    seconds, plan = [], {}
    for _ in range(args.runs):
        start = time.perf_counter()
        done = subprocess.run(dry_run, cwd=REPO, check=True, capture_output=True, text=True)
        seconds.append(time.perf_counter() - start)
        plan = json.loads(done.stdout)
    sweep_bytes = sum(f.stat().st_size for f in sweep.rglob("*") if f.is_file())
    cpu = cpu_model()
    write_report({
        "command": " ".join(["lambda-bake", *dry_run[3:]]),
        "shape": args.shape, "cuts": len(plan["repos"]), "sweep_bytes_on_disk": sweep_bytes,
        "planned_upload_bytes": sum(r["bytes"] for r in plan["repos"]),
        "planned_files": sum(len(r["files"]) for r in plan["repos"]),
        "seconds": {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds), "runs": seconds},
        "machine": {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version()},
    }, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
