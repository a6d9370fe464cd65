#!/usr/bin/env python3
"""Benchmark the streaming bake against `cp` and the naive from_pretrained -> modify -> save path.

Builds the real Qwen3-0.6B architecture (28 layers, hidden 1024, MLP 3072, 16/8 heads, head_dim
128, vocab 151936, tied embeddings) with random bf16 weights and a gate file of the real 86,016
shape, then times each job in its own child process and reads that child's peak RSS from
``os.wait4``. Every figure is from one run on one machine; ratios are against `cp` in that run.

    python scripts/bench_bake.py --workdir /tmp/bench --repeats 2 --json docs/bench_bake.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inputs import REPO, ensure_inputs  # noqa: E402

NAIVE = """
import sys, torch
from transformers import AutoModelForCausalLM
from bake.gate_math import Cut, GateSettings, compute_gates
from bake.gates import load_variant
base, gates, out = sys.argv[1:4]
v = load_variant(gates, num_layers=28, intermediate_size=3072)
s = compute_gates(v.logits, GateSettings(Cut("off_fraction", 0.5), "hard", "energy")).scale
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
with torch.no_grad():
    for i, layer in enumerate(model.model.layers):
        w = layer.mlp.down_proj.weight
        w.copy_((w.float() * s[i][None, :]).to(w.dtype))
model.save_pretrained(out)
"""


IN_PROCESS = """
import json, sys, time
from bake.gate_math import Cut, GateSettings
from bake.gates import load_variant
from bake.pipeline import BakeOptions, bake_checkpoint
base, gates, out = sys.argv[1:4]
start = time.perf_counter()
v = load_variant(gates, num_layers=28, intermediate_size=3072)
bake_checkpoint(base, v, GateSettings(Cut("off_fraction", 0.5), "hard", "energy"), out,
                BakeOptions(overwrite=True, progress=False))
print(json.dumps({"in_process_s": time.perf_counter() - start}))
"""


def measure(cmd: list[str]) -> dict[str, float]:
    """Wall time and the child's own peak RSS (os.wait4 gives the rusage of exactly that child)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{err.read().decode()}")
        text = out.read().decode().strip()
    extra = json.loads(text) if text.startswith("{") else {}  # a job may report its own in-process time
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024} | extra


def bake_cmd(base: Path, gates: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bake.cli", "bake", "--base", str(base), "--gates", str(gates),
            "--off-fraction", "0.5", "--out", str(out), "--quiet", "--overwrite", *extra]


def run(workdir: Path, repeats: int) -> dict[str, Any]:
    base, gates = ensure_inputs(workdir)
    size = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    jobs = {
        "cp": lambda: ["cp", "-r", str(base), str(workdir / "cp-copy")],
        "cp+sync": lambda: ["sh", "-c", f"cp -r {base} {workdir / 'cp-copy'} && sync"],
        "python start + imports, no work": lambda: [sys.executable, "-c", "import bake.cli; bake.cli.build_parser()"],
        "bake dense bf16": lambda: bake_cmd(base, gates, workdir / "dense"),
        "bake dense bf16, in-process call": lambda: [sys.executable, "-c", IN_PROCESS, str(base), str(gates),
                                                     str(workdir / "dense-lib")],
        "bake pruned bf16": lambda: bake_cmd(base, gates, workdir / "pruned", "--layout", "pruned"),
        "export dense float32 ONNX (incl. checker + ORT load)": lambda: [
            sys.executable, "-m", "bake.cli", "export", "--model", str(workdir / "dense"), "--out",
            str(workdir / "dense-onnx"), "--overwrite", "--quiet"],
        "naive from_pretrained/save_pretrained": lambda: [sys.executable, "-c", NAIVE, str(base), str(gates),
                                                          str(workdir / "naive")],
    }
    results: dict[str, dict[str, float]] = {}
    for name, cmd in jobs.items():
        best: dict[str, float] | None = None
        for _ in range(repeats):
            shutil.rmtree(workdir / "cp-copy", ignore_errors=True)
            m = measure(cmd())
            best = m if best is None or m["wall_s"] < best["wall_s"] else best
            print(f"{name:<40} {m['wall_s']:7.2f} s  peak RSS {m['peak_rss_mb']:7.0f} MB", file=sys.stderr)
        results[name] = best or {}
    cp = results["cp"]["wall_s"]
    for r in results.values():
        r["x_cp"] = r["wall_s"] / cp
    return {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "checkpoint_bytes": size, "repeats": repeats, "best_of_repeats": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lambda-bake-bench"))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    report = run(args.workdir, args.repeats)
    print(f"\ncheckpoint {report['checkpoint_bytes'] / 1e9:.2f} GB, best of {args.repeats}")
    print(f"{'job':<40} {'wall s':>8} {'x cp':>6} {'peak RSS MB':>12}  in-process s (x cp)")
    for name, r in report["best_of_repeats"].items():
        inner = f"  {r['in_process_s']:.2f} ({r['in_process_s'] / report['best_of_repeats']['cp']['wall_s']:.2f})" \
            if "in_process_s" in r else ""
        print(f"{name:<40} {r['wall_s']:8.2f} {r['x_cp']:6.2f} {r['peak_rss_mb']:12.0f}{inner}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
