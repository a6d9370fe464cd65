#!/usr/bin/env python3
"""mlx-lm decode speed of the ragged MLX export against the dense one at the same bits, in one process.

On the random-weight Qwen3-0.6B shape (``bench_inputs.py``), a dense bf16 bake at --off (default 50 %) off, exported
twice with the same dtype and bits: ``--layout as-is`` (mlx-lm's qwen3, every layer 3072 wide) and ``--layout ragged``
(mlx-lm's openelm, each layer its own width). Each round decodes --tokens greedy tokens from a --prompt-token prompt
with mlx-lm's ``generate_step`` in both, alternating which goes first (a paired design: the machine's drift hits both).

Decoding one token reads every weight once, so the size-predicted gain is the ratio of the weight bytes read per
token (every 2-D weight, the tied embedding counted once as the output projection: its lookup reads one row). The
target: the measured gain (ragged tok/s / dense tok/s - 1) is at least 90 % of the predicted one.

    python scripts/bench_mlx.py --workdir /tmp/bench --bits 4 --json docs/bench/bench_mlx.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inputs import ensure_inputs, write_report  # noqa: E402

from bake.gates.gate_math import Cut, GateSettings  # noqa: E402
from bake.gates.variant import load_variant  # noqa: E402
from bake.write.pipeline import BakeOptions, bake_checkpoint  # noqa: E402


def weight_bytes(folder: Path) -> int:
    """Bytes of every weight a decoding step reads (norm vectors aside: they are small and the same in both)."""
    from safetensors import safe_open

    total = 0
    for file in folder.glob("model*.safetensors"):
        with safe_open(str(file), framework="np") as f:
            for name in f.keys():
                if "norm" not in name:
                    total += f.get_tensor(name).nbytes
    return total


def decode_seconds(model: Any, prompt: list[int], tokens: int) -> float:
    """Seconds for ``tokens`` greedy steps after the prompt's prefill (the prefill is not timed)."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    steps = generate_step(mx.array(prompt), model, max_tokens=tokens + 1)
    next(steps)  # the prefill and the first token
    start = time.perf_counter()
    for _ in steps:
        pass
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lambda-bake-bench"))
    ap.add_argument("--off", type=float, default=0.5)
    ap.add_argument("--bits", type=int, choices=(4, 8), default=4)
    # float32: mlx's CPU build has no fast bfloat16/float16 kernels (4-bit bf16 decodes at 0.25 tok/s here)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from export.mlx.writer import export_mlx
    from export.runtime.mlx_loop import MlxLM

    base, gates = ensure_inputs(args.workdir)
    bake = args.workdir / f"dense-{args.off}"
    if not (bake / "model.safetensors").is_file():
        v = load_variant(gates, num_layers=28, intermediate_size=3072)
        bake_checkpoint(base, v, GateSettings(Cut("off_fraction", args.off), "hard", "energy"), bake,
                        BakeOptions(overwrite=True, progress=False))
    folders, reports = {}, {}
    for layout in ("as-is", "ragged"):
        folders[layout] = args.workdir / f"mlx-{layout}-{args.dtype}-{args.bits}bit-{args.off}"
        reports[layout] = export_mlx(bake, folders[layout], layout=layout, dtype=args.dtype, bits=args.bits,
                                     overwrite=True, progress=False)
    models = {layout: MlxLM(folder).model for layout, folder in folders.items()}
    prompt = list(range(100, 100 + args.prompt_tokens))
    for model in models.values():  # warm-up: the first call compiles and pages the weights in
        decode_seconds(model, prompt, 4)
    seconds: dict[str, list[float]] = {layout: [] for layout in models}
    for r in range(args.rounds):
        order = list(models) if r % 2 == 0 else list(reversed(models))
        for layout in order:
            seconds[layout].append(decode_seconds(models[layout], prompt, args.tokens))
    tps = {layout: [args.tokens / s for s in seconds[layout]] for layout in models}
    ratios = [r / d for r, d in zip(tps["ragged"], tps["as-is"])]  # paired: the same round
    sizes = {layout: weight_bytes(folder) for layout, folder in folders.items()}
    predicted = sizes["as-is"] / sizes["ragged"]
    measured = statistics.median(ratios)
    report = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "mlx_device": str(
            __import__("mlx.core", fromlist=["default_device"]).default_device())},
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "mlp_neurons": {layout: reports[layout]["mlp_neurons"] + reports[layout]["mlp_padding_neurons"]
                        for layout in models},
        "weight_bytes_per_token": sizes,
        "tokens_per_second": {layout: {"median": round(statistics.median(v), 2), "min": round(min(v), 2),
                                       "max": round(max(v), 2)} for layout, v in tps.items()},
        "ragged_over_dense": {"median": round(measured, 4), "min": round(min(ratios), 4), "max": round(max(ratios), 4)},
        "predicted_ratio": round(predicted, 4),
        "share_of_predicted_gain": round((measured - 1) / (predicted - 1), 3) if predicted > 1 else None,
    }
    write_report(report, args.json)


if __name__ == "__main__":
    main()
