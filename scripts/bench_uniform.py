"""Decode speed of the uniform-width pruned checkpoint (issue 19) against the padded pruned one and the dense one.

At the Qwen3-0.6B shape (random weights, bf16, ``bench_inputs.py``), 50 % off with the demo's chat_energy gates:
the dense bake, the pruned bake of the threshold cut (padded to its widest layer) and the pruned bake of
``--uniform-width`` (every layer exactly I - k wide). In this one process, batch 1: transformers (bf16, eager,
CPU) and onnxruntime-genai (each checkpoint exported with ``--target cpu``, float32, as-is). Each round runs
every model once in a rotating order: a ``--prompt-len`` prefill, then ``--new-tokens`` greedy steps, timed;
tok/s per round, ratios per round against dense, medians and spread.

    python scripts/bench_uniform.py --workdir /work/bench-gguf --json docs/bench/bench_uniform.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench_inputs import REPO, VARIANT, ensure_inputs, write_report
from bench_onnx import load_genai, prompt_ids, time_genai, time_torch

OFF = 0.5
KINDS = {"dense": ["--layout", "dense"], "pruned": ["--layout", "pruned"],
         "uniform": ["--layout", "pruned", "--uniform-width"]}


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "bake.cli", *args, "--quiet"], cwd=REPO, check=True)


def prepare(workdir: Path) -> dict[str, dict[str, Any]]:
    """Bake the three checkpoints and export each to ONNX (once); their widths and parameter counts."""
    base, gates = ensure_inputs(workdir)
    out = {}
    for kind, flags in KINDS.items():
        folder, onnx = workdir / f"uniform-bench-{kind}", workdir / f"uniform-bench-{kind}-onnx"
        if not (folder / "bake_manifest.json").exists():
            cli("bake", "--base", str(base), "--gates", str(gates.parent), "--variant", VARIANT, "--off-fraction",
                str(OFF), *flags, "--out", str(folder), "--overwrite")
        if not (onnx / "genai_config.json").exists():
            cli("export", "--model", str(folder), "--out", str(onnx), "--target", "cpu", "--overwrite")
        m = json.loads((folder / "bake_manifest.json").read_text())
        out[kind] = {"folder": folder, "onnx": onnx, "intermediate_size": m["intermediate_size"],
                     "params": m["sizes"]["dense" if kind == "dense" else "pruned"]["params"],
                     "off_fraction": m["off_fraction"]}
    return out


def rounds(models: dict[str, Any], run: Any, args: argparse.Namespace, vocab: int, log: Any) -> dict[str, Any]:
    names = list(models)
    ids = prompt_ids(1, args.prompt_len, vocab)
    for model in models.values():
        run(model, prompt_ids(1, 8, vocab), 2)  # warm
    speeds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            speeds[name].append(run(models[name], ids, args.new_tokens)["decode_tok_s"])
        log(f"  round {r + 1}: " + ", ".join(f"{n} {speeds[n][-1]:.2f}" for n in names) + " tok/s")
    result: dict[str, Any] = {"decode_tok_s": {n: [round(x, 2) for x in v] for n, v in speeds.items()},
                              "median_tok_s": {n: round(statistics.median(v), 2) for n, v in speeds.items()}}
    for n in names[1:]:
        ratios = [a / b for a, b in zip(speeds[n], speeds["dense"])]
        result[f"{n}_over_dense"] = {"median": round(statistics.median(ratios), 3), "min": round(min(ratios), 3),
                                     "max": round(max(ratios), 3)}
    ratios = [a / b for a, b in zip(speeds["uniform"], speeds["pruned"])]
    result["uniform_over_pruned"] = {"median": round(statistics.median(ratios), 3), "min": round(min(ratios), 3),
                                     "max": round(max(ratios), 3)}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    import torch
    from transformers import AutoModelForCausalLM

    models = prepare(args.workdir)
    vocab = 151936
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "setup": {"prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "rounds": args.rounds, "batch": 1},
        "models": {k: {x: v[x] for x in ("intermediate_size", "params", "off_fraction")} for k, v in models.items()},
    }
    log("transformers, bf16, eager")
    loaded = {k: AutoModelForCausalLM.from_pretrained(str(v["folder"]), dtype=torch.bfloat16).eval()
              for k, v in models.items()}
    report["transformers_bf16"] = rounds(loaded, time_torch, args, vocab, log)
    del loaded
    gc.collect()
    log("onnxruntime-genai, cpu graph, float32")
    loaded = {k: load_genai(v["onnx"], "cpu", False) for k, v in models.items()}
    report["genai_float32"] = rounds(loaded, time_genai, args, vocab, log)
    write_report(report, args.json)


if __name__ == "__main__":
    main()
