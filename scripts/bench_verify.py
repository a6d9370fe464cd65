#!/usr/bin/env python3
"""Peak memory and time of ``lambda-bake verify`` at the real Qwen3 shapes: a checkpoint and one export, or the
whole ``bake --onnx --gguf --verify`` job.

Builds (once, under --workdir) the random-weight bf16 Qwen3 of ``bench_inputs.py`` at each --shape, a
dense bf16 bake at 50 % off (hard gates, energy scale) and its exports, then runs
``lambda-bake verify --baked BAKE --onnx EXPORT --json`` (``--gguf FILE`` for the GGUF case) in a fresh child
process per case and repeat, recording its wall time and peak RSS (``os.wait4``), the verdict and verify's own
stages. The targets (issue 30) are, at the 0.6B shape: checkpoint + float32 ONNX <= 60 s and <= 1.5x the model's
float32 size; checkpoint + ragged q8_0 GGUF <= 90 s and <= 2.0x.

``--exports bake-int4-q4_0`` times the whole job instead, in one fresh process per repeat: bake the same cut, export
int4 ragged ONNX and q4_0 ragged GGUF, and verify all three (issue 30: within 2.0x the float32 model at the 1.7B
shape; at the 4B shape a peak of 12 GB or less, in 15 minutes or less).

    python scripts/bench_verify.py --workdir /work/bench-verify --shape 0.6b 1.7b --json docs/bench/bench_verify.json
    python scripts/bench_verify.py --workdir /work/bench-verify --shape 4b --exports bake-int4-q4_0
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

# name -> export options (the checkpoint is always a candidate too)
EXPORTS = {
    "float32": ["--target", "cpu"],
    "int4-ragged": ["--target", "cpu", "--quantize", "int4", "--layout", "ragged"],
    "gguf-q8_0-ragged": ["--format", "gguf", "--gguf-type", "q8_0", "--layout", "ragged"],
    "gguf-q4_0-ragged": ["--format", "gguf", "--gguf-type", "q4_0", "--layout", "ragged"],
}
BAKE_JOBS = {"bake-int4-q4_0": ["--onnx", "--onnx-quantize", "int4", "--onnx-layout", "ragged",
                                "--gguf", "--gguf-type", "q4_0", "--gguf-layout", "ragged", "--verify"]}
CUT = ["--off-fraction", "0.5"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bake.cli", *args, "--quiet"]


def run_shape(shape: str, workdir: Path, exports: list[str], repeats: int) -> dict:
    base, gates = ensure_inputs(workdir / shape, shape)
    bake = workdir / shape / "bake-50-dense"
    if not bake.exists():
        subprocess.run(cli("bake", "--base", str(base), "--gates", str(gates), *CUT, "--out", str(bake)), cwd=REPO,
                       check=True)
    params = json.loads((bake / "bake_manifest.json").read_text())["sizes"]["dense"]["params"]
    cases = {}
    for name in exports:
        if name in BAKE_JOBS:
            cases[name] = run_job(name, base, gates, workdir / shape / f"out-{name}", params, repeats)
            continue
        gguf = name.startswith("gguf")
        export = workdir / shape / (f"export-{name}.gguf" if gguf else f"export-{name}")
        if not export.exists():
            subprocess.run(cli("export", "--model", str(bake), "--out", str(export), *EXPORTS[name]), cwd=REPO,
                           check=True)
        runs = []
        for _ in range(repeats):
            r = measure(cli("verify", "--baked", str(bake), "--gguf" if gguf else "--onnx", str(export), "--json"), [],
                        reports=True)
            runs.append({"wall_s": round(r["wall_s"], 1), "peak_rss_mib": round(r["peak_rss_mib"]),
                         "passed": r["passed"], "positions": r["positions"],
                         "candidates": [{k: c[k] for k in ("name", "passed", "max_rel_diff", "top1_agreement")}
                                        | {"checks": [(k["against"], k["max_rel_diff"]) for k in c["checks"]],
                                           "weights_s": (c["weights"] or {}).get("seconds")}
                                        for c in r["candidates"]],
                         "stages": r.get("stages")})
            print(f"{shape} checkpoint + {name}: {runs[-1]['wall_s']} s, peak RSS {runs[-1]['peak_rss_mib']} MiB "
                  f"(float32 size {params * 4 / 2**20:.0f} MiB), passed {r['passed']}", file=sys.stderr)
        cases[name] = {"runs": runs, "best_s": min(r["wall_s"] for r in runs),
                       "peak_rss_mib": max(r["peak_rss_mib"] for r in runs)}
    return {"params": params, "float32_mib": round(params * 4 / 2**20), "cases": cases}


def run_job(name: str, base: Path, gates: Path, out: Path, params: int, repeats: int) -> dict:
    """The whole bake job (``BAKE_JOBS[name]``) in a fresh process per repeat, its output removed before each."""
    runs = []
    for _ in range(repeats):
        r = measure(cli("bake", "--base", str(base), "--gates", str(gates), *CUT, "--out", str(out), *BAKE_JOBS[name],
                        "--json"), [out], reports=True)
        verification = r["manifest"]["verification"]
        runs.append({"wall_s": round(r["wall_s"], 1), "peak_rss_mib": round(r["peak_rss_mib"]),
                     "passed": verification["passed"], "verify_s": verification["seconds"],
                     "candidates": [{k: c[k] for k in ("name", "passed", "max_rel_diff", "top1_agreement")}
                                    for c in verification["candidates"]],
                     "stages": verification.get("stages")})
        print(f"bake {name}: {runs[-1]['wall_s']} s (verify {runs[-1]['verify_s']} s), peak RSS "
              f"{runs[-1]['peak_rss_mib']} MiB (float32 size {params * 4 / 2**20:.0f} MiB), passed "
              f"{runs[-1]['passed']}", file=sys.stderr)
    return {"runs": runs, "best_s": min(r["wall_s"] for r in runs), "peak_rss_mib": max(r["peak_rss_mib"] for r in runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lambda-bake-bench-verify"))
    ap.add_argument("--shape", nargs="+", choices=("0.6b", "1.7b", "4b"), default=["0.6b"])
    ap.add_argument("--exports", nargs="+", choices=(*EXPORTS, *BAKE_JOBS), default=["float32", "gguf-q8_0-ragged"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": "lambda-bake verify --baked BAKE --onnx EXPORT (or --gguf FILE) --json (a fresh process per run)",
        "shapes": {s: run_shape(s, args.workdir, args.exports, args.repeats) for s in args.shape},
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
