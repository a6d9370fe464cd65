#!/usr/bin/env python3
"""Scoring throughput of ``lambda-bake eval`` against each runtime's own prefill, in one run on one machine.

On the random-weight Qwen3-0.6B shape (``bench_inputs.py``), a dense bf16 bake at 50 % off, its float32 ragged
ONNX export (cpu target) and its q8_0 ragged GGUF: --rows rows of --tokens random tokens. Per runtime, alternating
for --rounds rounds (medians):

- prefill: the runtime's own forward pass over the rows as a deployment runs it (transformers: batched by
  length, logits of the last position only; ONNX Runtime: the shipped last-token graph, batched; llama.cpp:
  ``eval`` of each row without logits);
- scoring: what eval does (``bake.eval.runtimes``: logits at every position, then each row's NLL and log-softmax
  from ``bake.eval.metrics``).

Tokens/s count every row token; the target is scoring >= 0.8x prefill.

    python scripts/bench_eval.py --workdir /tmp/bench --json docs/bench/bench_eval.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inputs import ensure_inputs, write_report  # noqa: E402

from bake.eval.metrics import row_nll  # noqa: E402
from bake.eval.models import resolve  # noqa: E402
from bake.eval.runtimes import batches_by_length, open_model, token_budget  # noqa: E402
from bake.gates.gate_math import Cut, GateSettings  # noqa: E402
from bake.gates.variant import load_variant  # noqa: E402
from bake.write.pipeline import BakeOptions, bake_checkpoint  # noqa: E402


def score_all(lm: Any, rows: list[list[int]]) -> None:
    for i, logits in lm.score(rows):
        row_nll(logits, rows[i])


def torch_prefill(lm: Any, rows: list[list[int]]) -> None:
    import torch

    for batch in batches_by_length(rows, token_budget(int(lm.model.config.vocab_size))):
        ids = torch.tensor([rows[i] for i in batch])  # equal lengths here
        with torch.no_grad():
            lm.model(input_ids=ids, logits_to_keep=1)


def ort_prefill(ort_lm: Any) -> Callable[[Any, list[list[int]]], None]:
    def run(_: Any, rows: list[list[int]]) -> None:
        for batch in batches_by_length(rows, token_budget(int(ort_lm.io["vocab_size"]))):
            ids = np.array([rows[i] for i in batch], np.int64)
            ort_lm.forward(ids, np.full(len(batch), ids.shape[1]), ort_lm.new_cache(len(batch), ids.shape[1]))
    return run


def llama_prefill(llama_lm: Any) -> Callable[[Any, list[list[int]]], None]:
    def run(_: Any, rows: list[list[int]]) -> None:
        for row in rows:
            llama_lm.llm.reset()
            llama_lm.llm.eval(row)
    return run


def timed(fn: Callable[..., None], *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lambda-bake-bench"))
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runtimes", nargs="+", default=["transformers", "onnx", "gguf"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    base, gates = ensure_inputs(args.workdir)
    config = json.loads((base / "config.json").read_text())
    bake = args.workdir / "dense-0.5"
    if not (bake / "model.safetensors").is_file():
        v = load_variant(gates, num_layers=28, intermediate_size=3072)
        bake_checkpoint(base, v, GateSettings(Cut("off_fraction", 0.5), "hard", "energy"), bake,
                        BakeOptions(overwrite=True, progress=False))
    rng = np.random.default_rng(0)
    rows = [rng.integers(10, config["vocab_size"] - 300, size=args.tokens).tolist() for _ in range(args.rows)]
    report: dict[str, Any] = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
                              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                              "runtimes": {}}
    total = args.rows * args.tokens
    for runtime in args.runtimes:
        if runtime == "transformers":
            spec = resolve(bake)[0]
            lm = open_model(spec, args.tokens)
            prefill = torch_prefill
        elif runtime == "onnx":
            from export.onnx.exporter import export_onnx
            from export.runtime.ort_loop import OnnxCausalLM

            folder = args.workdir / "eval-onnx-cpu-ragged-float32"
            if not (folder / "onnx_io.json").is_file():
                export_onnx(bake, folder, target="cpu", layout="ragged", overwrite=True, progress=False)
            lm = open_model(resolve(folder)[0], args.tokens)
            prefill = ort_prefill(OnnxCausalLM(folder, device="cpu"))
        else:
            from export.gguf.writer import export_gguf
            from export.runtime.llama_loop import LlamaCppLM

            path = args.workdir / "eval-ragged-Q8_0.gguf"
            if not path.is_file():
                export_gguf(bake, path, gguf_type_name="q8_0", layout="ragged", overwrite=True, progress=False)
            lm = open_model(resolve(path)[0], args.tokens)
            prefill = llama_prefill(LlamaCppLM(path, n_ctx=args.tokens + 64))
        timed(score_all, lm, rows[:2])  # first-run allocations
        timed(prefill, lm, rows[:2])
        tries: dict[str, list[float]] = {"prefill": [], "scoring": []}
        for r in range(args.rounds):
            order = (("prefill", prefill), ("scoring", score_all))
            for name, fn in order if r % 2 == 0 else order[::-1]:
                tries[name].append(total / timed(fn, lm, rows))
        ratios = [s / p for s, p in zip(tries["scoring"], tries["prefill"])]
        report["runtimes"][runtime] = {"prefill_tok_s": statistics.median(tries["prefill"]),
                                       "scoring_tok_s": statistics.median(tries["scoring"]),
                                       "ratio_median": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
                                       "runs": tries}
        print(f"{runtime:<13} prefill {report['runtimes'][runtime]['prefill_tok_s']:8.1f} tok/s, scoring "
              f"{report['runtimes'][runtime]['scoring_tok_s']:8.1f} tok/s: x{statistics.median(ratios):.2f} "
              f"({min(ratios):.2f}-{max(ratios):.2f})", file=sys.stderr, flush=True)
        lm.close()
        del lm, prefill
    write_report(report, args.json)


if __name__ == "__main__":
    main()
