#!/usr/bin/env python3
"""Export time and generation speed: hooked PyTorch, baked PyTorch, and ONNX Runtime dense/pruned/ragged.

On the random-weight Qwen3-0.6B architecture (see bench_inputs.py), for each cut in --fractions:
bake dense and pruned (bf16), export to ONNX (dense at the middle cut; pruned and ragged at every
cut; with --onnx-quantize also weight-quantized dense and ragged at the middle cut), then time
prefill of a --prompt-len prompt and --new-tokens greedy decode steps through the KV cache, for
every batch size in --batches. Tokens/s count batch x tokens; each figure is the best of --repeats
runs. Each configuration is loaded, measured and freed in turn, in one process, so all figures come
from the same run.

    python scripts/bench_onnx.py --workdir /tmp/lambda-bake-bench --json docs/bench_onnx.json
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inputs import ensure_inputs  # noqa: E402

from bake.gate_math import Cut, GateSettings, compute_gates  # noqa: E402
from bake.gates import load_variant  # noqa: E402
from bake.pipeline import BakeOptions, bake_checkpoint  # noqa: E402
from bake.reference import load_hooked_model  # noqa: E402
from export.exporter import export_onnx  # noqa: E402
from export.runtime import OnnxCausalLM, position_ids  # noqa: E402

Timing = dict[str, float]


def prompt_ids(batch: int, length: int, vocab: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(10, vocab, size=(batch, length), dtype=np.int64)


def time_torch(model: Any, ids: np.ndarray, new_tokens: int) -> Timing:
    """Prefill and greedy decode through transformers' KV cache (eager attention)."""
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    x = torch.from_numpy(ids)
    with torch.no_grad():
        start = time.perf_counter()
        out = model(x, use_cache=True)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(new_tokens):
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            cache = out.cache if cache_arg == "cache" else out.past_key_values
            out = model(token, use_cache=True, logits_to_keep=1, **{cache_arg: cache})
        decode = time.perf_counter() - start
    return rates(ids.shape, new_tokens, prefill, decode)


def time_onnx(lm: OnnxCausalLM, ids: np.ndarray, new_tokens: int) -> Timing:
    """Prefill and greedy decode through the ONNX graph's KV cache (IO binding)."""
    mask = np.ones_like(ids)
    start = time.perf_counter()
    logits, past = lm.step(ids, mask, position_ids(mask), lm.empty_past(len(ids)))
    prefill = time.perf_counter() - start
    pos = position_ids(mask)[:, -1:]
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones((len(mask), 1), np.int64)], axis=1)
        pos = pos + 1
        logits, past = lm.step(token, mask, pos, past)
    decode = time.perf_counter() - start
    return rates(ids.shape, new_tokens, prefill, decode)


def rates(shape: tuple[int, ...], new_tokens: int, prefill: float, decode: float) -> Timing:
    batch, length = shape
    return {"prefill_s": prefill, "prefill_tok_s": batch * length / prefill,
            "decode_s": decode, "decode_tok_s": batch * new_tokens / decode}


def measure(name: str, load: Callable[[], Any], run: Callable[[Any, np.ndarray, int], Timing],
            batches: list[int], args: argparse.Namespace, vocab: int) -> dict[str, Any]:
    model = load()
    out: dict[str, Any] = {}
    run(model, prompt_ids(1, 8, vocab), 2)  # warm-up: first-run allocations and kernel selection
    for b in batches:
        tries = [run(model, prompt_ids(b, args.prompt_len, vocab), args.new_tokens) for _ in range(args.repeats)]
        t = {k: (min if k.endswith("_s") and not k.endswith("tok_s") else max)(x[k] for x in tries) for k in tries[0]}
        out[f"batch{b}"] = t
        print(f"{name:<34} batch {b}: prefill {t['prefill_tok_s']:8.1f} tok/s  decode {t['decode_tok_s']:7.2f} tok/s",
              file=sys.stderr, flush=True)
    del model
    gc.collect()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lambda-bake-bench"))
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="runs per configuration; the best is kept")
    ap.add_argument("--torch-dtypes", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--fp16-dense", action=argparse.BooleanOptionalAction, default=True,
                    help="also export the middle cut's dense model in float16")
    ap.add_argument("--onnx-quantize", choices=("none", "int4", "int8"), default="none",
                    help="also export and time the middle cut's dense and ragged models with these weights")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    base, gates = ensure_inputs(args.workdir)
    v = load_variant(gates, num_layers=28, intermediate_size=3072)
    vocab = json.loads((base / "config.json").read_text())["vocab_size"]
    mid = sorted(args.fractions)[len(args.fractions) // 2]
    report: dict[str, Any] = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads()},
        "settings": vars(args) | {"workdir": str(args.workdir), "json": None}, "exports": {}, "runs": {},
        "sizes": {},
    }
    onnx_runs: list[tuple[str, Path]] = []
    for f in args.fractions:
        settings = GateSettings(Cut("off_fraction", f), "hard", v.scale_mode or "energy")
        for layout in ("dense", "pruned"):
            out = args.workdir / f"{layout}-{f}"
            m = bake_checkpoint(base, v, settings, out, BakeOptions(layout=layout, overwrite=True, progress=False))
            report["sizes"][f"{f}"] = m["sizes"]
        plans = [("pruned", "as-is", f"pruned-{f}", "float32", "none"),
                 ("dense", "ragged", f"ragged-{f}", "float32", "none")]
        if f == mid:
            plans.insert(0, ("dense", "as-is", f"dense-{f}", "float32", "none"))
            if args.fp16_dense:
                plans.insert(1, ("dense", "as-is", f"dense-fp16-{f}", "float16", "none"))
            if args.onnx_quantize != "none":
                q = args.onnx_quantize
                plans += [("dense", "as-is", f"dense-{q}-{f}", "float32", q),
                          ("dense", "ragged", f"ragged-{q}-{f}", "float32", q)]
        for src, layout, name, dtype, quantize in plans:
            start = time.perf_counter()
            export_onnx(args.workdir / f"{src}-{f}", args.workdir / f"onnx-{name}", layout=layout, dtype=dtype,
                        quantize=quantize, overwrite=True, progress=False)
            report["exports"][name] = {"seconds": time.perf_counter() - start}
            print(f"export {name}: {report['exports'][name]['seconds']:.1f} s", file=sys.stderr, flush=True)
            onnx_runs.append((f"onnx {name.removesuffix(f'-{f}').replace('-', ' ')} @ {f} off",
                              args.workdir / f"onnx-{name}"))
    scale = compute_gates(v.logits, GateSettings(Cut("off_fraction", mid), "hard", v.scale_mode or "energy")).scale
    for dtype_name in args.torch_dtypes:
        dtype = getattr(torch, dtype_name)
        report["runs"][f"torch hooked eager {dtype_name}"] = measure(
            f"torch hooked eager {dtype_name}", lambda dtype=dtype: load_hooked_model(base, scale, dtype), time_torch,
            args.batches, args, vocab)
        report["runs"][f"torch baked dense {dtype_name}"] = measure(
            f"torch baked dense {dtype_name}", lambda dtype=dtype: _plain(args.workdir / f"dense-{mid}", dtype), time_torch,
            args.batches, args, vocab)
    for name, folder in onnx_runs:
        report["runs"][name] = measure(name, lambda folder=folder: OnnxCausalLM(folder, device="cpu"), time_onnx,
                                       args.batches, args, vocab)
    print_summary(report, mid, args.batches)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def _plain(folder: Path, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).eval()


def print_summary(report: dict[str, Any], mid: float, batches: list[int]) -> None:
    print(f"\n{'configuration':<34} " + " ".join(f"{'b' + str(b) + ' prefill':>12} {'b' + str(b) + ' decode':>11}"
                                                  for b in batches))
    for name, r in report["runs"].items():
        cells = [f"{r[f'batch{b}']['prefill_tok_s']:12.1f} {r[f'batch{b}']['decode_tok_s']:11.2f}" for b in batches]
        print(f"{name:<34} " + " ".join(cells))
    hooked = {k: v for k, v in report["runs"].items() if k.startswith("torch hooked")}
    if hooked:
        print("\nONNX decode speed over the hooked PyTorch eager model (batch 1 / batch 8):")
        for name, r in report["runs"].items():
            if not name.startswith("onnx"):
                continue
            parts = []
            for hooked_name, h in hooked.items():
                ratio = "/".join(f"x{r[f'batch{b}']['decode_tok_s'] / h[f'batch{b}']['decode_tok_s']:.2f}"
                                 for b in batches)
                parts.append(f"{hooked_name.split()[-1]} {ratio}")
            print(f"  {name:<30} vs " + ", ".join(parts))
    dense = report["runs"].get(f"onnx dense @ {mid} off")
    if dense is None:
        return
    print("\nspeedup over ONNX dense (decode, batch 1) vs what the size reduction predicts:")
    sizes = report["sizes"]
    for name, r in report["runs"].items():
        if not name.startswith(("onnx pruned", "onnx ragged", "onnx dense int")):
            continue
        speed = r["batch1"]["decode_tok_s"] / dense["batch1"]["decode_tok_s"]
        if name.split(" @")[0].endswith(("int4", "int8")):  # smaller weights, same parameter count
            print(f"  {name:<30} decode x{speed:.2f}   (weight-only quantized)")
            continue
        f = name.split("@ ")[1].split(" ")[0]
        layout = "pruned" if "pruned" in name else "ragged"
        s = sizes[f]
        params = s["dense"]["params"] / s[layout]["params"]
        flops = s["dense"]["mlp_flops_per_token"] / s[layout]["mlp_flops_per_token"]
        print(f"  {name:<30} decode x{speed:.2f}   params x{params:.2f}   MLP FLOPs x{flops:.2f}   "
              f"achieved {(speed - 1) / (params - 1):.0%} of the params-predicted gain")


if __name__ == "__main__":
    main()
