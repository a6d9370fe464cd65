#!/usr/bin/env python3
"""Benchmark the CLI bake, a five-cut sweep and the ONNX export against copying the base.

Inputs are random-weight Qwen3 checkpoints of the real shapes (``bench_inputs.py``): Qwen3-0.6B for the
bakes, Qwen3-1.7B for the export (bf16, 3.4 GB; baked at 50 % off, then exported ragged float16).

Timing is paired: each pair runs the baseline (``cp -r`` of the base folder, then ``sync``) and the
candidate back to back, in alternating order, with outputs removed and the disk synced before each
run (outside the timing); the ratio is taken per pair and the median of the pairs is reported, so
load from other processes on a shared machine cancels out. Peak memory is the candidate process's
own maximum resident set (``os.wait4``: what ``/usr/bin/time -f %M`` reports), whole process.

    flock /work/bench.lock python scripts/bench_bake.py --workdir /work/bench-data --pairs 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inputs import REPO, ensure_inputs  # noqa: E402

CLI = [sys.executable, "-m", "bake.cli"]
NAIVE = """
import sys, torch
from transformers import AutoModelForCausalLM
from bake.gates.gate_math import Cut, GateSettings, compute_gates
from bake.gates.variant import load_variant
base, gates, out = sys.argv[1:4]
v = load_variant(gates, num_layers=28, intermediate_size=3072)
s = torch.from_numpy(compute_gates(v.logits, GateSettings(Cut("off_fraction", 0.5), "hard", "energy")).scale)
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
with torch.no_grad():
    for i, layer in enumerate(model.model.layers):
        w = layer.mlp.down_proj.weight
        w.copy_((w.float() * s[i][None, :]).to(w.dtype))
model.save_pretrained(out)
"""


def measure(cmd: list[str], clear: list[Path], reports: bool = False) -> dict[str, Any]:
    """Wall time and the process's own peak RSS (MiB), after removing ``clear`` and syncing (untimed).

    With ``reports``, the child prints one JSON object (its own in-process figures), merged in.
    """
    for path in clear:
        shutil.rmtree(path, ignore_errors=True)
    os.sync()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out if reports else subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd[:6])} ... failed:\n{err.read().decode()}")
        out.seek(0)
        extra = json.loads(out.read()) if reports else {}
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024} | extra


def copy_and_sync(base: Path, dests: list[Path]) -> list[str]:
    return ["sh", "-c", " && ".join(f"cp -r {base} {d} && sync" for d in dests)]


def paired(name: str, pairs: int, baseline: tuple[list[str], list[Path]], candidate: tuple[list[str], list[Path]],
           log: Callable[[str], None]) -> dict[str, Any]:
    """``pairs`` runs of baseline and candidate, alternating which goes first; ratios per pair, medians."""
    rows = []
    for i in range(pairs):
        order = [("baseline", baseline), ("candidate", candidate)]
        results = dict((label, measure(*job)) for label, job in (order if i % 2 == 0 else order[::-1]))
        row = {"baseline_s": results["baseline"]["wall_s"], "candidate_s": results["candidate"]["wall_s"],
               "candidate_peak_rss_mib": results["candidate"]["peak_rss_mib"]}
        row["ratio"] = row["candidate_s"] / row["baseline_s"]
        rows.append(row)
        log(f"{name:<28} pair {i + 1}: baseline {row['baseline_s']:6.2f} s  candidate {row['candidate_s']:6.2f} s  "
            f"ratio {row['ratio']:5.2f}  peak RSS {row['candidate_peak_rss_mib']:6.0f} MiB")
    return {
        "pairs": rows,
        "median_ratio": statistics.median(r["ratio"] for r in rows),
        "median_baseline_s": statistics.median(r["baseline_s"] for r in rows),
        "median_candidate_s": statistics.median(r["candidate_s"] for r in rows),
        "max_peak_rss_mib": max(r["candidate_peak_rss_mib"] for r in rows),
    }


def bake_jobs(workdir: Path, pairs: int, naive: bool, log: Callable[[str], None]) -> dict[str, Any]:
    root = workdir / "bake-0.6b"
    base, gates = ensure_inputs(root, "0.6b")
    copies = [root / f"copy-{i}" for i in range(5)]
    out = root / "out"
    bake = [*CLI, "bake", "--base", str(base), "--gates", str(gates), "--quiet"]
    results = {
        "single bake (dense, bf16, 50 % off)": paired(
            "bake vs cp+sync", pairs, (copy_and_sync(base, copies[:1]), copies[:1]),
            ([*bake, "--off-fraction", "0.5", "--out", str(out)], [out]), log),
        "sweep --preset all (5 cuts)": paired(
            "sweep vs 5 x (cp+sync)", pairs, (copy_and_sync(base, copies), copies),
            ([*bake, "--preset", "all", "--out", str(out)], [out]), log),
        "single bake, pruned": paired(
            "pruned bake vs cp+sync", pairs, (copy_and_sync(base, copies[:1]), copies[:1]),
            ([*bake, "--off-fraction", "0.5", "--layout", "pruned", "--out", str(out)], [out]), log),
    }
    start = measure([sys.executable, "-c", "import bake.cli; bake.cli.build_parser('bake')"], [])
    results["start-up: import + parser for bake"] = start
    if naive:
        results["naive from_pretrained / save_pretrained"] = measure(
            [sys.executable, "-c", NAIVE, str(base), str(gates), str(out)], [out])
    for path in [*copies, out]:
        shutil.rmtree(path, ignore_errors=True)
    return {"checkpoint_bytes": (base / "model.safetensors").stat().st_size, "jobs": results}


def export_job(workdir: Path, repeats: int, log: Callable[[str], None]) -> dict[str, Any]:
    root = workdir / "export-1.7b"
    base, gates = ensure_inputs(root, "1.7b")
    baked, out = root / "dense-50", root / "onnx"
    if not (baked / "model.safetensors").exists():
        measure([*CLI, "bake", "--base", str(base), "--gates", str(gates), "--off-fraction", "0.5", "--out",
                 str(baked), "--quiet"], [baked])
    runs = []
    for i in range(repeats):
        m = measure([*CLI, "export", "--model", str(baked), "--out", str(out), "--layout", "ragged", "--dtype",
                     "float16", "--quiet"], [out])
        io = json.loads((out / "onnx_io.json").read_text())
        weights = io["external_data_bytes"] or (out / io["model_file"]).stat().st_size
        m |= {"weight_bytes": weights, "peak_over_weights": m["peak_rss_mib"] * 2**20 / weights}
        runs.append(m)
        log(f"export ragged float16 run {i + 1}: {m['wall_s']:6.1f} s  peak RSS {m['peak_rss_mib']:6.0f} MiB  "
            f"weights {weights / 2**20:6.0f} MiB  ratio {m['peak_over_weights']:.2f}")
    shutil.rmtree(out, ignore_errors=True)
    return {"runs": runs, "max_peak_over_weights": max(r["peak_over_weights"] for r in runs),
            "max_peak_rss_mib": max(r["peak_rss_mib"] for r in runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lambda-bake-bench"))
    ap.add_argument("--pairs", type=int, default=5, help="paired runs per timing (default 5; medians reported)")
    ap.add_argument("--jobs", nargs="+", choices=("bake", "export"), default=["bake", "export"])
    ap.add_argument("--export-repeats", type=int, default=3)
    ap.add_argument("--naive", action="store_true", help="also time from_pretrained -> save_pretrained (slow, 1.5 GB)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    report: dict[str, Any] = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor()},
        "command": " ".join(sys.argv),
    }
    if "bake" in args.jobs:
        report["bake"] = bake_jobs(args.workdir, args.pairs, args.naive, log)
        for name, r in report["bake"]["jobs"].items():
            if "median_ratio" in r:
                print(f"{name:<40} median ratio {r['median_ratio']:5.2f}  (median {r['median_candidate_s']:.2f} s vs "
                      f"{r['median_baseline_s']:.2f} s)  peak RSS {r['max_peak_rss_mib']:.0f} MiB")
            else:
                print(f"{name:<40} {r['wall_s']:.2f} s  peak RSS {r['peak_rss_mib']:.0f} MiB")
    if "export" in args.jobs:
        report["export"] = export_job(args.workdir, args.export_repeats, log)
        print(f"export 1.7B ragged float16: peak RSS {report['export']['max_peak_rss_mib']:.0f} MiB = "
              f"{report['export']['max_peak_over_weights']:.2f} x the exported weights")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
