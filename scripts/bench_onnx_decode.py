"""Decode speed of the plain vs fused ONNX graphs on a random mid-size Qwen3 (CPU by default).

    PYTHONPATH=. python scripts/bench_onnx_decode.py --work /tmp/bench [--layers 12 --hidden 1024 ...]

Builds the model once (random weights, demo tokenizer), exports each dtype x variant, loads them all,
then runs them round-robin (prefill, then greedy decode steps through the KV cache, batch 1) so
that load from other processes hits every variant alike. Reports best and median per variant.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bake.demo_assets import TinyQwen3Spec, build_tiny_qwen3
from export.exporter import export_onnx
from export.runtime import OnnxCausalLM, position_ids


def run_once(lm: OnnxCausalLM, prompt: int, steps: int) -> tuple[float, float]:
    """(prefill seconds, decode tokens/s) for one prompt of ``prompt`` tokens and ``steps`` new ones."""
    ids = (np.arange(prompt, dtype=np.int64)[None, :] * 7) % lm.io["vocab_size"]
    mask = np.ones_like(ids)
    start = time.perf_counter()
    logits, past = lm.step(ids, mask, position_ids(mask), lm.empty_past(1))
    prefill = time.perf_counter() - start
    pos = position_ids(mask)[:, -1:]
    start = time.perf_counter()
    for _ in range(steps):
        token = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)
        pos = pos + 1
        logits, past = lm.step(token, mask, pos, past)
    return prefill, steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--intermediate", type=int, default=3072)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ONNX Runtime's default)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    model = args.work / "model"
    if not (model / "config.json").exists():
        spec = TinyQwen3Spec(num_layers=args.layers, hidden_size=args.hidden, intermediate_size=args.intermediate,
                             num_heads=args.heads, num_kv_heads=args.kv_heads, head_dim=args.head_dim)
        build_tiny_qwen3(model, spec)
        config = json.loads((model / "config.json").read_text())
        config["max_position_embeddings"] = 8192  # the fused graph's RoPE tables cover this many positions
        (model / "config.json").write_text(json.dumps(config, indent=2))
    models = {}
    for dtype in ("float32", "float16"):
        for fused in (False, True):
            name = f"{dtype} {'fused' if fused else 'plain'}"
            out = args.work / f"onnx-{dtype}-{'fused' if fused else 'plain'}"
            if not (out / "onnx_io.json").exists():
                export_onnx(model, out, dtype=dtype, fused=fused, device=args.device, progress=False)
            models[name] = OnnxCausalLM(out, device=args.device, threads=args.threads or None)
            run_once(models[name], args.prompt, 4)  # warm-up
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, lm in models.items():
            results[name].append(run_once(lm, args.prompt, args.steps))
    for name, runs in results.items():
        prefills, rates = np.array(runs).T
        print(f"{name:14s} prefill {args.prompt} tok: best {prefills.min() * 1000:6.1f} ms, median "
              f"{np.median(prefills) * 1000:6.1f} ms | decode: best {rates.max():5.1f} tok/s, median "
              f"{np.median(rates):5.1f} tok/s")


if __name__ == "__main__":
    main()
