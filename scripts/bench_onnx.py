#!/usr/bin/env python3
"""Generation speed of our ONNX exports against other people's tools, in one run on one machine.

On the random-weight Qwen3-0.6B architecture (see bench_inputs.py): bake dense and pruned (bf16)
at each cut in --fractions, export them for each --targets graph (dense as-is at the middle cut,
ragged at every cut), and time prefill of a --prompt-len prompt plus --new-tokens greedy decode
steps, for every batch size in --batches, under each --engines loop:

- ``ort``: lambda-bake's own loop over ONNX Runtime (export/runtime.py, IO binding);
- ``genai``: onnxruntime-genai's C++ loop (the export's genai_config.json as written);

and, as yardsticks, onnxruntime-genai's own model builder's graph of the same dense bake
(``python -m onnxruntime_genai.models.builder -i BAKE -o OUT -p fp32|fp16|int4 -e cpu|cuda``) run by
onnxruntime-genai, and transformers' eager PyTorch (hooked reference and baked checkpoint). On CUDA
(--device cuda), genai runs are repeated with CUDA-graph capture (--cuda-graph).

Tokens/s count batch x tokens. Measurement is paired: the yardstick (the builder's graph with
--builder, else the first configuration) stays loaded, and each other configuration is loaded next
to it and run alternately with it for --rounds rounds, so slow drifts of a shared machine hit both
alike. Reported per configuration: the median over rounds, and its ratio to the yardstick's median
from the same pairing (decode tokens/s).

    python scripts/bench_onnx.py --workdir /tmp/bench --targets portable cpu --engines ort genai --builder \\
        --json docs/bench/bench_onnx.json
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inputs import ensure_inputs  # noqa: E402

from bake.gates.gate_math import Cut, GateSettings, compute_gates  # noqa: E402
from bake.gates.variant import load_variant  # noqa: E402
from bake.verify.reference import load_hooked_model  # noqa: E402
from bake.write.pipeline import BakeOptions, bake_checkpoint  # noqa: E402
from export.onnx.exporter import export_onnx  # noqa: E402
from export.runtime.genai_loop import load_model  # noqa: E402
from export.runtime.ort_loop import OnnxCausalLM  # noqa: E402

Timing = dict[str, float]
BUILDER_PRECISION = {("float32", "none"): "fp32", ("float16", "none"): "fp16", ("float32", "int4"): "int4",
                     ("float16", "int4"): "int4"}


def prompt_ids(batch: int, length: int, vocab: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(10, vocab, size=(batch, length), dtype=np.int64)


def rates(shape: tuple[int, ...], new_tokens: int, prefill: float, decode: float) -> Timing:
    batch, length = shape
    return {"prefill_s": prefill, "prefill_tok_s": batch * length / prefill,
            "decode_s": decode, "decode_tok_s": batch * new_tokens / decode}


def time_torch(model: Any, ids: np.ndarray, new_tokens: int) -> Timing:
    """Prefill and greedy decode through transformers' KV cache (eager attention)."""
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    x = torch.from_numpy(ids).to(next(model.parameters()).device)

    def sync() -> None:
        if x.is_cuda:
            torch.cuda.synchronize()

    with torch.no_grad():
        start = time.perf_counter()
        out = model(x, use_cache=True)
        sync()
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(new_tokens):
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            cache = out.cache if cache_arg == "cache" else out.past_key_values
            out = model(token, use_cache=True, logits_to_keep=1, **{cache_arg: cache})
        sync()
        decode = time.perf_counter() - start
    return rates(ids.shape, new_tokens, prefill, decode)


def time_ort(lm: OnnxCausalLM, ids: np.ndarray, new_tokens: int) -> Timing:
    """Prefill and greedy decode in lambda-bake's loop (IO binding, cache on the device)."""
    batch, length = ids.shape
    cache = lm.new_cache(batch, length + new_tokens)
    valid, ones = np.full(batch, length), np.ones(batch, np.int64)
    start = time.perf_counter()
    logits = lm.last_rows(lm.forward(ids, valid, cache), valid)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = logits.argmax(-1)[:, None].astype(np.int64)
        logits = lm.last_rows(lm.forward(token, ones, cache), ones)
    decode = time.perf_counter() - start
    return rates(ids.shape, new_tokens, prefill, decode)


def load_genai(folder: Path, device: str, cuda_graph: bool) -> Any:
    """onnxruntime-genai on ``folder`` exactly as lambda-bake's generate loads it (on the CPU: every core);
    the builder's folder goes through the same function, so both get the same settings."""
    return load_model(folder, device, cuda_graph=cuda_graph)


def time_genai(model: Any, ids: np.ndarray, new_tokens: int) -> Timing:
    """Prefill (append_tokens) and greedy decode (generate_next_token) in onnxruntime-genai's loop."""
    import onnxruntime_genai as og

    batch, length = ids.shape
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=length + new_tokens, min_length=length + new_tokens, do_sample=False,
                              batch_size=batch)
    generator = og.Generator(model, params)
    start = time.perf_counter()
    generator.append_tokens(ids.astype(np.int32))
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(new_tokens):
        generator.generate_next_token()
    decode = time.perf_counter() - start
    return rates(ids.shape, new_tokens, prefill, decode)


def median_timing(tries: list[Timing]) -> Timing:
    return {k: statistics.median(t[k] for t in tries) for k in tries[0]}


def paired(yardstick: tuple[Any, Callable[..., Timing]], candidate: tuple[Any, Callable[..., Timing]],
           batches: list[int], args: argparse.Namespace, vocab: int) -> tuple[dict[str, Timing], dict[str, Timing]]:
    """Alternate candidate and yardstick runs for every batch size; medians over --rounds for both."""
    tries: dict[str, tuple[list[Timing], list[Timing]]] = {f"batch{b}": ([], []) for b in batches}
    for _ in range(args.rounds):
        for b in batches:
            ids = prompt_ids(b, args.prompt_len, vocab)
            for (model, run), out in zip((candidate, yardstick), tries[f"batch{b}"]):
                out.append(run(model, ids, args.new_tokens))
    return ({k: median_timing(c) for k, (c, _) in tries.items()}, {k: median_timing(y) for k, (_, y) in tries.items()})


def warm(model: Any, run: Callable[..., Timing], vocab: int) -> None:
    run(model, prompt_ids(1, 8, vocab), 2)  # first-run allocations and kernel selection


def builder_export(bake: Path, out: Path, precision: str, device: str) -> Path:
    """onnxruntime-genai's model builder on our bake (its own graph, genai_config.json and tokenizer)."""
    if not (out / "genai_config.json").exists():
        run = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(bake), "-o",
                              str(out), "-p", precision, "-e", device], capture_output=True, text=True)
        if run.returncode:
            sys.exit(f"the builder failed (exit {run.returncode}):\n{run.stderr[-4000:]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lambda-bake-bench"))
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.5])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5, help="paired measurement rounds (medians are reported)")
    ap.add_argument("--targets", nargs="+", default=["portable", "cpu"], help="export targets (graphs) to time")
    ap.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="export dtype")
    ap.add_argument("--quantize", choices=("none", "int4", "int8"), default="none", help="export weights")
    ap.add_argument("--engines", nargs="+", choices=("ort", "genai"), default=["ort", "genai"])
    ap.add_argument("--builder", action="store_true", help="also onnxruntime-genai's builder graph of the dense bake")
    ap.add_argument("--cuda-graph", action="store_true", help="--device cuda: also genai runs with CUDA graphs")
    ap.add_argument("--torch-dtypes", nargs="*", default=["bfloat16"], help="transformers eager runs (none: skip)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    base, gates = ensure_inputs(args.workdir)
    v = load_variant(gates, num_layers=28, intermediate_size=3072)
    vocab = json.loads((base / "config.json").read_text())["vocab_size"]
    mid = sorted(args.fractions)[len(args.fractions) // 2]
    report: dict[str, Any] = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "settings": vars(args) | {"workdir": str(args.workdir), "json": None}, "exports": {}, "runs": {},
        "sizes": {},
    }
    configs: dict[str, tuple[Callable[[], Any], Callable[..., Timing]]] = {}
    suffix = f"{args.dtype}{'' if args.quantize == 'none' else ' ' + args.quantize}"
    for f in args.fractions:
        settings = GateSettings(Cut("off_fraction", f), "hard", v.scale_mode or "energy")
        bake = args.workdir / f"dense-{f}"
        report["sizes"][f"{f}"] = bake_checkpoint(base, v, settings, bake, BakeOptions(overwrite=True,
                                                                                      progress=False))["sizes"]
        for target in args.targets:
            for layout in (("as-is", "ragged") if f == mid else ("ragged",)):
                name = f"{target} {'dense' if layout == 'as-is' else 'ragged'} {suffix} @ {f} off"
                folder = args.workdir / f"onnx-{target}-{layout}-{args.dtype}-{args.quantize}-{f}"
                start = time.perf_counter()
                export_onnx(bake, folder, target=target, layout=layout, dtype=args.dtype, quantize=args.quantize,
                            device=args.device, overwrite=True, progress=False)
                report["exports"][name] = {"seconds": time.perf_counter() - start}
                for engine in args.engines:
                    if engine == "ort":
                        configs[f"ours/ort-loop {name}"] = (
                            lambda folder=folder: OnnxCausalLM(folder, device=args.device), time_ort)
                    for graph in (False, True) if engine == "genai" and args.cuda_graph else (False,):
                        if engine == "genai":
                            label = f"ours/genai{'+cudagraph' if graph else ''} {name}"
                            configs[label] = (lambda folder=folder, graph=graph: load_genai(folder, args.device, graph),
                                              time_genai)
    if args.builder:
        precision = BUILDER_PRECISION[(args.dtype, args.quantize)]
        start = time.perf_counter()
        folder = builder_export(args.workdir / f"dense-{mid}", args.workdir / f"builder-{precision}-{args.device}",
                                precision, args.device)
        report["exports"]["builder"] = {"seconds": time.perf_counter() - start}
        for graph in (False, True) if args.cuda_graph else (False,):
            configs[f"builder/genai{'+cudagraph' if graph else ''} dense {precision} @ {mid} off"] = (
                lambda folder=folder, graph=graph: load_genai(folder, args.device, graph), time_genai)
    scale = compute_gates(v.logits, GateSettings(Cut("off_fraction", mid), "hard", v.scale_mode or "energy")).scale
    for dtype_name in args.torch_dtypes:
        dtype = getattr(torch, dtype_name)
        configs[f"torch hooked eager {dtype_name}"] = (
            lambda dtype=dtype: load_hooked_model(base, scale, dtype).to(args.device), time_torch)
        configs[f"torch baked dense {dtype_name}"] = (
            lambda dtype=dtype: _plain(args.workdir / f"dense-{mid}", dtype).to(args.device), time_torch)
    yard_name = next((n for n in configs if n.startswith("builder/genai ")), next(iter(configs)))
    yard_load, yard_run = configs.pop(yard_name)
    yardstick = (yard_load(), yard_run)
    warm(*yardstick, vocab)
    report["yardstick"], report["yardstick_runs"], report["ratios"] = yard_name, {}, {}
    for name, (load, run) in configs.items():
        candidate = (load(), run)
        warm(*candidate, vocab)
        batches = batches_for(name, args.batches)
        report["runs"][name], report["yardstick_runs"][name] = paired(yardstick, candidate, batches, args, vocab)
        report["ratios"][name] = {b: report["runs"][name][b]["decode_tok_s"]
                                  / report["yardstick_runs"][name][b]["decode_tok_s"] for b in report["runs"][name]}
        cells = "  ".join(f"b{b} decode {report['runs'][name][f'batch{b}']['decode_tok_s']:8.2f} "
                          f"(x{report['ratios'][name][f'batch{b}']:.2f})" for b in batches)
        print(f"{name:<58} {cells}", file=sys.stderr, flush=True)
        del candidate
        gc.collect()
    report["runs"][yard_name] = {b: median_timing([r[b] for r in report["yardstick_runs"].values() if b in r])
                                 for b in (f"batch{b}" for b in args.batches)}
    print_summary(report, args.batches)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def batches_for(name: str, batches: list[int]) -> list[int]:
    """The batch sizes a configuration runs: a CUDA-graph one at batch 1 only (onnxruntime-genai's captured graph
    aborts at batch > 1: with its static mask GroupQueryAttention sees a past at the prompt)."""
    if "+cudagraph" not in name:
        return batches
    if any(b != 1 for b in batches):
        print(f"{name}: batch {', '.join(str(b) for b in batches if b != 1)} skipped (CUDA graph: batch 1 only)",
              file=sys.stderr)
    return [b for b in batches if b == 1]


def _plain(folder: Path, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).eval()


def print_summary(report: dict[str, Any], batches: list[int]) -> None:
    runs = report["runs"]
    print(f"\n{'configuration':<60} " + " ".join(f"{'b' + str(b) + ' prefill':>12} {'b' + str(b) + ' decode':>11}"
                                                  for b in batches) + "   decode vs yardstick")
    for name, r in runs.items():
        cells = [f"{r[f'batch{b}']['prefill_tok_s']:12.1f} {r[f'batch{b}']['decode_tok_s']:11.2f}"
                 if f"batch{b}" in r else f"{'-':>12} {'-':>11}" for b in batches]
        ratio = report["ratios"].get(name)
        paired_with = " / ".join(f"x{ratio[f'batch{b}']:.2f}" for b in batches if f"batch{b}" in ratio) \
            if ratio else "(yardstick)"
        print(f"{name:<60} " + " ".join(cells) + f"   {paired_with}")
    print(f"\nyardstick: {report['yardstick']}; ratios are paired medians (decode tok/s)")


if __name__ == "__main__":
    main()
