#!/usr/bin/env python3
"""Decode speed of two ONNX export folders under onnxruntime-genai, A/B, in both load orders.

On a 2-core machine the model loaded second in a process decodes 13-16 % slower whichever it is
(docs/BENCHMARKS.md), so a paired run in one load order is biased. This script runs two child
processes, one loading A first and one loading B first; each alternates A and B for --rounds rounds
(prefill of a --prompt-len random prompt, --new-tokens greedy steps, batch 1 and 4) and the report
gives B/A per order and their geometric mean, which cancels the order bias.

    python scripts/bench_ab.py /tmp/ab/old-dense /tmp/ab/new-dense --rounds 6
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def one_order(first: Path, second: Path, rounds: int, prompt_len: int, new_tokens: int) -> dict[str, dict[int, list]]:
    """In this process: load ``first`` then ``second``; alternate their runs; decode tok/s per batch size."""
    from bench_onnx import load_genai, prompt_ids, time_genai

    models = {str(f): load_genai(f, "cpu", False) for f in (first, second)}
    vocab = json.loads((first / "genai_config.json").read_text())["model"]["vocab_size"]
    out: dict[str, dict[int, list]] = {k: {1: [], 4: []} for k in models}
    for m in models.values():
        time_genai(m, prompt_ids(1, 8, vocab), 2)  # first-run allocations
    for r in range(rounds):
        for b in (1, 4):
            ids = prompt_ids(b, prompt_len, vocab)
            for k in (list(models) if r % 2 == 0 else list(models)[::-1]):
                out[k][b].append(time_genai(models[k], ids, new_tokens)["decode_tok_s"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one_order(args.a, args.b, args.rounds, args.prompt_len, args.new_tokens)))
        return
    report: dict[str, object] = {"a": str(args.a), "b": str(args.b), "orders": {}}
    ratios: dict[int, list[float]] = {1: [], 4: []}
    for first, second in ((args.a, args.b), (args.b, args.a)):
        run = subprocess.run([sys.executable, __file__, str(first), str(second), "--child", "--rounds", str(args.rounds),
                              "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens)],
                             capture_output=True, text=True, check=True)
        tok = json.loads(run.stdout.strip().splitlines()[-1])
        order = f"{first.name} first"
        report["orders"][order] = {}
        for b in (1, 4):
            a_runs, b_runs = tok[str(args.a)][str(b)], tok[str(args.b)][str(b)]
            r = statistics.median(y / x for x, y in zip(a_runs, b_runs))
            ratios[b].append(r)
            report["orders"][order][f"batch{b}"] = {"a_tok_s": a_runs, "b_tok_s": b_runs, "b_over_a_median": r}
            print(f"{order:<28} batch {b}: A {statistics.median(a_runs):6.2f} tok/s, B {statistics.median(b_runs):6.2f} "
                  f"tok/s, B/A x{r:.3f}", file=sys.stderr)
    report["b_over_a"] = {f"batch{b}": math.sqrt(r[0] * r[1]) for b, r in ratios.items()}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
