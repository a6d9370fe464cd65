#!/usr/bin/env python3
"""The one short GPU check of the cuda target: correctness first, then speed, then placement, in one run.

On a machine with an NVIDIA GPU and the wheels of ``../shared/gpu/README.md`` (onnxruntime-gpu,
onnxruntime-genai-cuda), on the random-weight Qwen3-0.6B shape (``bench_inputs.py``), bf16 bake at 50 % off:

(a) correctness: 32 greedy tokens and the last-token logits of prompts of 5/17/64/128 tokens, at batch 1 (each
    prompt alone) and batch 4 (all four, right-padded), through lambda-bake's loop and onnxruntime-genai with and
    without CUDA graph (graph at batch 1; at batch 4 the clear refusal is what is checked), for the cuda exports
    fp16 and bf16, dense and ragged, and int4 dense and ragged; every path against the CPU float32 export of the
    same bake (lambda-bake's loop on ONNX Runtime's CPU provider). Tokens are compared before any speed is trusted
    (onnxruntime-genai has an open report of token doubling on H200 with clean CPU output).
(b) speed: decode tok/s at batch 1 and 8 against onnxruntime-genai's model builder's graph of the same bake (fp16
    and int4), ragged against dense, CUDA graph at batch 1; paired runs (bench_onnx.py's method).
(c) placement: each export loaded once more in a child process with ONNX Runtime's verbose log; its node
    placements and every Memcpy node of the optimized graph are reported (a CUDA graph needs every node on CUDA).

Writes ``--out``/gpu_check.json and ``--out``/gpu_check.md (the table docs/BENCHMARKS.md takes). Exit 0 when every
path ran and stayed within its logit bound with no doubled tokens, 3 when one did not (named in "problems").

Without a GPU it runs end to end on the CPU (``--device cpu``; tests run it on the tiny shape): the cuda-target
exports become cpu-target ones (the fused q/k norm and bfloat16 run only on CUDA), float32 stands in for fp16 in
the speed table, and there is no CUDA graph.

    python scripts/gpu_check.py --out /tmp/gpu-check                      # on the GPU machine, about 5 minutes
    python scripts/gpu_check.py --out /tmp/gpu-check --device cpu --shape tiny --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inputs import ensure_inputs  # noqa: E402
from bench_onnx import builder_export, load_genai, paired, time_genai, time_ort, warm  # noqa: E402

from bake.errors import ExportError  # noqa: E402
from bake.gates.gate_math import Cut, GateSettings  # noqa: E402
from bake.gates.variant import load_variant  # noqa: E402
from bake.write.pipeline import BakeOptions, bake_checkpoint  # noqa: E402
from export.onnx.exporter import export_onnx  # noqa: E402
from export.runtime.genai_loop import GenaiLM  # noqa: E402
from export.runtime.ort_loop import OnnxCausalLM  # noqa: E402

PROMPT_LENGTHS = (5, 17, 64, 128)
# max |logit diff| / max |logit| of the last-token logits against the CPU float32 export: a gross-error bound per
# weight type (a wrong kernel, NaN, a misplaced token gives O(1)); the figures themselves are the report
LOGIT_BOUNDS = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 1e-1, "int4": 0.5}


def exports_to_check(device: str) -> dict[str, dict[str, Any]]:
    """label -> export options: the cuda target on a GPU; its CPU stand-ins without one."""
    if device == "cuda":
        plain = {f"{d} {lay}": {"target": "cuda", "dtype": d, "layout": lay, "quantize": "none"}
                 for d in ("float16", "bfloat16") for lay in ("as-is", "ragged")}
        quant = {f"int4 {lay}": {"target": "cuda", "dtype": "float16", "layout": lay, "quantize": "int4"}
                 for lay in ("as-is", "ragged")}  # the token lookup in the lm_head's codes (GatherBlockQuantized)
        quant["int4 ragged float-embedding"] = quant["int4 ragged"] | {"embedding": "float"}
        quant["int4 bfloat16 ragged"] = quant["int4 ragged"] | {"dtype": "bfloat16"}
    else:
        plain = {f"{d} {lay}": {"target": "cpu", "dtype": d, "layout": lay, "quantize": "none"}
                 for d in ("float32", "float16") for lay in ("as-is", "ragged")}
        quant = {f"int4 {lay}": {"target": "cpu", "dtype": "float32", "layout": lay, "quantize": "int4"}
                 for lay in ("as-is", "ragged")}
        quant["int4 ragged float-embedding"] = quant["int4 ragged"] | {"embedding": "float"}
    return plain | quant


def environment(device: str) -> dict[str, Any]:
    import onnxruntime as ort

    env: dict[str, Any] = {"device": device, "platform": platform.platform(), "python": platform.python_version(),
                           "cpu_count": os.cpu_count(), "onnxruntime": ort.__version__,
                           "providers": ort.get_available_providers()}
    try:
        import onnxruntime_genai as og

        env["onnxruntime_genai"] = og.__version__
        env["genai_cuda"] = bool(og.is_cuda_available())
    except ImportError:
        env["onnxruntime_genai"] = None
    if device == "cuda":
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True)
        env["gpu"] = smi.stdout.strip() or smi.stderr.strip()
    return env


# ---- (a) correctness ----------------------------------------------------------------------------------------------
def prompts_of(vocab: int, special: set[int]) -> list[list[int]]:
    """Random prompts of PROMPT_LENGTHS tokens, none of them a special id (onnxruntime-genai masks its pad id)."""
    rng = np.random.default_rng(7)
    ordinary = np.setdiff1d(np.arange(10, vocab), np.fromiter(special, np.int64, len(special)))
    return [rng.choice(ordinary, size=n).tolist() for n in PROMPT_LENGTHS]


def special_ids(folder: Path) -> set[int]:
    """bos/eos/pad ids of an export's genai_config.json."""
    model = json.loads((folder / "genai_config.json").read_text())["model"]
    ids: set[int] = set()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = model.get(key)
        ids.update(value if isinstance(value, list) else [] if value is None else [value])
    return ids


def ort_run(lm: OnnxCausalLM, prompts: list[list[int]], new_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """lambda-bake's loop on a batch: each row's last-token logits after the prompt, and its greedy tokens."""
    longest = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), longest), np.int64)
    for b, p in enumerate(prompts):
        ids[b, :len(p)] = p
    valid = np.array([len(p) for p in prompts])
    logits = lm.last_rows(lm.forward(ids, valid, lm.new_cache(len(prompts), longest + 1)), valid)
    return logits, lm.greedy(prompts, new_tokens, eos_ids=set(), pad_id=0)


def genai_run(lm: GenaiLM, prompts: list[list[int]], new_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime-genai on a batch: the logits it computes after appending the prompts, and the greedy tokens of
    lambda-bake's ``GenaiLM.stream`` (the path ``generate`` takes)."""
    import onnxruntime_genai as og

    pad = int(json.loads((lm.folder / "genai_config.json").read_text())["model"]["pad_token_id"])
    longest = max(len(p) for p in prompts)
    ids = np.full((len(prompts), longest), pad, np.int32)
    for b, p in enumerate(prompts):
        ids[b, :len(p)] = p
    params = og.GeneratorParams(lm.model)
    params.set_search_options(max_length=longest + 1, do_sample=False, batch_size=len(prompts))
    generator = og.Generator(lm.model, params)
    generator.append_tokens(ids)
    logits = np.asarray(generator.get_output("logits"), np.float32).reshape(len(prompts), -1, lm.io["vocab_size"])
    del generator
    steps = list(lm.stream(prompts, new_tokens, eos_ids=set(), pad_id=pad))
    return logits[:, -1], np.stack(steps, axis=1)


def doubled(tokens: list[int], reference: list[int]) -> float:
    """Share of token pairs (t[2k], t[2k+1]) that both are the reference's token k: near 1 is the token-doubling
    signature (each reference token emitted twice), which a merely repetitive model does not show."""
    pairs = len(tokens) // 2
    return sum(tokens[2 * k] == tokens[2 * k + 1] == reference[k] for k in range(pairs)) / max(pairs, 1)


def greedy_margins(lm: OnnxCausalLM, prompt: list[int], new_tokens: int) -> list[float]:
    """At each greedy step of the reference, its top-2 logit margin over its largest |logit|: how far a precision's
    logit error must move the logits to choose another token there."""
    cache = lm.new_cache(1, len(prompt) + new_tokens)
    valid, one = np.array([len(prompt)]), np.array([1])
    logits = lm.last_rows(lm.forward(np.array([prompt], np.int64), valid, cache), valid)[0].astype(np.float64)
    margins = []
    for _ in range(new_tokens):
        top2 = np.sort(logits)[-2:]
        margins.append(float((top2[1] - top2[0]) / max(np.abs(logits).max(), 1e-30)))
        token = np.array([[int(np.argmax(logits))]], np.int64)
        logits = lm.last_rows(lm.forward(token, one, cache), one)[0].astype(np.float64)
    return margins


def compare(logits: np.ndarray, tokens: np.ndarray, ref_logits: list[np.ndarray], ref_tokens: list[list[int]],
            rows: list[int]) -> list[dict[str, Any]]:
    out = []
    for b, i in enumerate(rows):
        got, want = [int(t) for t in tokens[b]], ref_tokens[i]
        first = next((k for k, (x, y) in enumerate(zip(got, want)) if x != y), None)
        diff = np.abs(logits[b].astype(np.float64) - ref_logits[i])
        out.append({"prompt_tokens": PROMPT_LENGTHS[i], "tokens_equal": got == want, "first_divergence": first,
                    "max_rel_logit_diff": float(np.nan_to_num(diff, nan=np.inf).max() / np.abs(ref_logits[i]).max()),
                    "top1_equal": int(np.argmax(logits[b])) == int(np.argmax(ref_logits[i])),
                    "doubled_pairs": doubled(got, want)})
    return out


def correctness(ref_dir: Path, exports: dict[str, tuple[Path, dict[str, Any]]], device: str, new_tokens: int,
                vocab: int) -> dict[str, Any]:
    prompts = prompts_of(vocab, special_ids(ref_dir))
    ref = OnnxCausalLM(ref_dir, device="cpu")
    ref_logits, ref_tokens, ref_margins = [], [], []
    for p in prompts:
        logits, tokens = ort_run(ref, [p], new_tokens)
        ref_logits.append(logits[0].astype(np.float64))
        ref_tokens.append([int(t) for t in tokens[0]])
        ref_margins.append(greedy_margins(ref, p, new_tokens))
    del ref
    have_genai = _genai_installed()
    paths = [("ort", False)] + ([("genai", False)] + ([("genai+cudagraph", True)] if device == "cuda" else [])
                                if have_genai else [])
    results: dict[str, Any] = {"reference": "lambda-bake's loop, CPU float32 export (cpu target, as-is)",
                               "prompt_tokens": list(PROMPT_LENGTHS), "new_tokens": new_tokens,
                               "reference_tokens": ref_tokens, "reference_margins": ref_margins, "paths": {}}
    for label, (folder, options) in exports.items():
        weights = "int4" if options["quantize"] == "int4" else options["dtype"]
        for path, graph in paths:
            key = f"{label} / {path}"
            try:
                lm = OnnxCausalLM(folder, device=device) if path == "ort" else \
                    GenaiLM(folder, device=device, cuda_graph=graph)
            except ExportError as e:
                results["paths"][key] = {"weights": weights, "error": str(e)}
                continue
            run = ort_run if path == "ort" else genai_run
            entry: dict[str, Any] = {"weights": weights, "bound": LOGIT_BOUNDS[weights], "batch1": [], "batch4": None}
            try:
                for i, p in enumerate(prompts):
                    entry["batch1"] += compare(*run(lm, [p], new_tokens), ref_logits, ref_tokens, [i])
                if graph:  # a captured graph runs at batch 1: a batch is refused with a clear message
                    try:
                        run(lm, prompts, new_tokens)
                        entry["batch4"] = {"error": "a batch of 4 ran with CUDA graph: the refusal did not trigger"}
                    except ExportError as e:
                        entry["batch4"] = {"refused": str(e)}
                else:
                    entry["batch4"] = compare(*run(lm, prompts, new_tokens), ref_logits, ref_tokens,
                                              list(range(len(prompts))))
            except Exception as e:  # noqa: BLE001 - a runtime failure is a finding of this check, recorded, not fatal
                entry["error"] = f"{type(e).__name__}: {e}"
            results["paths"][key] = entry
            del lm
    return results


def problems_of(correct: dict[str, Any]) -> list[str]:
    """The paths that failed: an error, logits outside their bound, doubled tokens the reference does not have, or
    greedy tokens that leave the reference's where its top-2 margin is more than twice the logit error the weight
    type's bound allows (no rounding of that size can explain choosing another token there)."""
    found = []
    for key, entry in correct["paths"].items():
        if "error" in entry:
            found.append(f"{key}: {entry['error']}")
            continue
        rows = entry["batch1"] + (entry["batch4"] if isinstance(entry["batch4"], list) else [])
        if isinstance(entry["batch4"], dict) and "error" in entry["batch4"]:
            found.append(f"{key} batch 4: {entry['batch4']['error']}")
        for batch, r in [("b1", r) for r in entry["batch1"]] + [("b4", r) for r in rows[len(entry["batch1"]):]]:
            where = f"{key} {batch}, {r['prompt_tokens']}-token prompt"
            if not r["max_rel_logit_diff"] <= entry["bound"]:
                found.append(f"{where}: logits {r['max_rel_logit_diff']:.3g} of the largest off the CPU float32 "
                             f"export (bound {entry['bound']:g})")
            if r["doubled_pairs"] >= 0.75 and not r["tokens_equal"]:
                found.append(f"{where}: token doubling ({r['doubled_pairs']:.0%} of pairs are the reference's "
                             "tokens, each twice)")
            step = r.get("first_divergence")
            margins = correct.get("reference_margins")
            if not r["tokens_equal"] and step is not None and margins is not None:
                margin = margins[PROMPT_LENGTHS.index(r["prompt_tokens"])][step]
                if margin > 2 * entry["bound"]:
                    found.append(f"{where}: greedy tokens leave the reference's at step {step}, where its top-2 "
                                 f"margin is {margin:.3g} of the largest logit, more than twice the "
                                 f"{entry['weights']} bound ({entry['bound']:g}): not rounding")
    return found


def _genai_installed() -> bool:
    from export.runtime import genai_loop

    return genai_loop.available()


# ---- (b) speed ----------------------------------------------------------------------------------------------------
def speed(bake: Path, exports: dict[str, tuple[Path, dict[str, Any]]], args: argparse.Namespace, vocab: int,
          deadline: float) -> dict[str, Any]:
    """Decode tok/s of our exports under onnxruntime-genai, each paired with the builder's graph of its kind."""
    if not _genai_installed():
        return {"skipped": "onnxruntime-genai is not installed"}
    cuda = args.device == "cuda"
    float_kind = "float16" if cuda else "float32"
    builders = {"float": "fp16" if cuda else "fp32", "bf16": "bf16", "int4": "int4"}
    timing = SimpleNamespace(rounds=args.rounds, prompt_len=args.prompt_len, new_tokens=args.speed_tokens)
    out: dict[str, Any] = {"batches": [1, 8], "prompt_len": args.prompt_len, "new_tokens": args.speed_tokens,
                           "rounds": args.rounds, "runs": {}}
    plan: list[tuple[str, str, Path, bool, str]] = []  # (name, yardstick kind, folder, cuda graph, loop)
    for label, (folder, options) in exports.items():
        kind = "int4" if options["quantize"] == "int4" else "bf16" if options["dtype"] == "bfloat16" else "float"
        if kind == "float" and options["dtype"] != float_kind:
            continue
        plan.append((f"ours {label} / genai", kind, folder, False, "genai"))
        if cuda and label in (f"{float_kind} as-is", f"{float_kind} ragged", "int4 ragged"):
            plan.append((f"ours {label} / genai+cudagraph", kind, folder, True, "genai"))
        if label == f"{float_kind} ragged":
            plan.append((f"ours {label} / ort", kind, folder, False, "ort"))
    yardsticks: dict[tuple[str, bool], Any] = {}
    for name, kind, folder, graph, loop in plan:
        if time.monotonic() > deadline:
            out["runs"][name] = {"skipped": "time budget (--budget-s) spent"}
            continue
        key = (kind, graph)
        if key not in yardsticks:
            built = builder_export(bake, args.workdir / f"builder-{builders[kind]}-{args.device}", builders[kind],
                                   args.device)
            yardsticks[key] = (load_genai(built, args.device, graph), time_genai)
            warm(*yardsticks[key], vocab)
        lm = OnnxCausalLM(folder, device=args.device) if loop == "ort" else load_genai(folder, args.device, graph)
        candidate = (lm, time_ort if loop == "ort" else time_genai)
        warm(*candidate, vocab)
        batches = [1] if graph else [1, 8]  # onnxruntime-genai captures a CUDA graph at batch 1 only
        ours, theirs = paired(yardsticks[key], candidate, batches, timing, vocab)
        out["runs"][name] = {
            "yardstick": f"builder {builders[kind]} dense{' + cudagraph' if graph else ''}",
            **{b: {"decode_tok_s": ours[b]["decode_tok_s"], "yardstick_decode_tok_s": theirs[b]["decode_tok_s"],
                   "ratio": ours[b]["decode_tok_s"] / theirs[b]["decode_tok_s"]} for b in ours}}
        del lm, candidate
    return out


# ---- (c) placement ------------------------------------------------------------------------------------------------
_PLACEMENT = r"""
import json, sys, onnx, onnxruntime as ort
model, device, optimized = sys.argv[1], sys.argv[2], sys.argv[3]
options = ort.SessionOptions()
options.log_severity_level = 0
options.optimized_model_filepath = optimized
options.add_session_config_entry("session.optimized_model_external_initializers_file_name", optimized.split("/")[-1] + ".data")
options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
providers = (["CUDAExecutionProvider"] if device == "cuda" else []) + ["CPUExecutionProvider"]
ort.InferenceSession(model, options, providers=providers)
graph = onnx.load(optimized, load_external_data=False).graph
print(json.dumps({"nodes": len(graph.node), "memcpy": [n.name for n in graph.node if n.op_type.startswith("Memcpy")]}))
"""


_PLACED = re.compile(r"placed on \[(\w+)\]\. Number of nodes: (\d+)")


def placement(exports: dict[str, tuple[Path, dict[str, Any]]], device: str, workdir: Path) -> dict[str, Any]:
    """Per export: Memcpy nodes of the optimized graph, and the verbose log's placement lines (CPU nodes named)."""
    out = {}
    for label, (folder, _) in exports.items():
        optimized = workdir / f"optimized-{label.replace(' ', '-')}.onnx"
        run = subprocess.run([sys.executable, "-c", _PLACEMENT, str(folder / "model.onnx"), device, str(optimized)],
                             capture_output=True, text=True)
        lines = [ln.split("] ", 1)[-1] if "] " in ln else ln for ln in run.stderr.splitlines()]
        counts = {m.group(1): int(m.group(2)) for m in map(_PLACED.search, lines) if m}
        start = next((i for i, ln in enumerate(lines) if "Node placements" in ln), len(lines))
        entry: dict[str, Any] = {"nodes_per_provider": counts, "placement_lines": lines[start:start + 60],
                                 "fallback_lines": [ln for ln in lines if "fallback" in ln.lower()][:10]}
        if run.returncode:
            entry["error"] = (run.stderr.strip().splitlines() or ["(no message)"])[-1][-500:]
        else:
            entry |= json.loads(run.stdout.strip().splitlines()[-1])
        out[label] = entry
        optimized.unlink(missing_ok=True)
        optimized.with_name(optimized.name + ".data").unlink(missing_ok=True)
    return out


# ---- report -------------------------------------------------------------------------------------------------------
def table(report: dict[str, Any]) -> str:
    """The Markdown tables of the report (what docs/BENCHMARKS.md records)."""
    env = report["environment"]
    lines = [f"GPU check on {env.get('gpu') or env['platform']}, onnxruntime {env['onnxruntime']}, onnxruntime-genai "
             f"{env.get('onnxruntime_genai')}, shape {report['settings']['shape']}, {report['seconds']:.0f} s", "",
             "| path | tokens equal (b1) | first divergence (b1) | max rel logit diff (b1 / b4) | batch 4 |",
             "|---|---|---|---|---|"]
    for key, e in report["correctness"]["paths"].items():
        if "error" in e:
            lines.append(f"| {key} | error: {e['error'][:80]} | | | |")
            continue
        b1 = e["batch1"]
        b4 = e["batch4"]
        b4_text = ("refused (CUDA graph, batch 1 only)" if isinstance(b4, dict) and "refused" in b4 else
                   f"{sum(r['tokens_equal'] for r in b4)}/{len(b4)} rows equal" if isinstance(b4, list) else str(b4))
        rel4 = f"{max(r['max_rel_logit_diff'] for r in b4):.2g}" if isinstance(b4, list) else "-"
        lines.append(f"| {key} | {sum(r['tokens_equal'] for r in b1)}/{len(b1)} | "
                     f"{', '.join(str(r['first_divergence']) for r in b1)} | "
                     f"{max(r['max_rel_logit_diff'] for r in b1):.2g} / {rel4} | {b4_text} |")
    runs = report.get("speed", {}).get("runs", {})
    if runs:
        lines += ["", "| decode tok/s (paired medians) | batch 1 | batch 8 | yardstick |", "|---|---|---|---|"]
        for name, r in runs.items():
            cells = [f"{r[b]['decode_tok_s']:.1f} (x{r[b]['ratio']:.2f})" if b in r else "-"
                     for b in ("batch1", "batch8")]
            lines.append(f"| {name} | {cells[0]} | {cells[1]} | {r.get('yardstick', r.get('skipped', ''))} |")
    lines += ["", "| export | nodes (optimized) | Memcpy nodes | nodes per provider |", "|---|---|---|---|"]
    for label, p in report["placement"].items():
        per = ", ".join(f"{k.replace('ExecutionProvider', '')} {v}" for k, v in p["nodes_per_provider"].items())
        lines.append(f"| {label} | {p.get('nodes', p.get('error', ''))} | {len(p.get('memcpy', []))} | {per} |")
    lines += ["", f"problems: {len(report['problems'])}"] + [f"- {p}" for p in report["problems"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--shape", choices=("0.6b", "tiny"), default="0.6b")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lambda-bake-gpu-check"))
    ap.add_argument("--new-tokens", type=int, default=32, help="greedy tokens compared per prompt")
    ap.add_argument("--prompt-len", type=int, default=128, help="speed: prompt tokens")
    ap.add_argument("--speed-tokens", type=int, default=64, help="speed: decode steps timed")
    ap.add_argument("--rounds", type=int, default=3, help="speed: paired rounds (medians)")
    ap.add_argument("--no-speed", action="store_true", help="correctness and placement only")
    ap.add_argument("--budget-s", type=float, default=420, help="speed runs left out once this much time has passed")
    args = ap.parse_args()
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"environment": environment(args.device),
                              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    print(json.dumps(report["environment"]), file=sys.stderr, flush=True)
    base, gates = ensure_inputs(args.workdir, args.shape)
    config = json.loads((base / "config.json").read_text())
    variant = load_variant(gates, num_layers=config["num_hidden_layers"], intermediate_size=config["intermediate_size"])
    bake = args.workdir / "bake-dense-0.5"
    bake_checkpoint(base, variant, GateSettings(Cut("off_fraction", 0.5), "hard", variant.scale_mode or "energy"),
                    bake, BakeOptions(overwrite=True, progress=False))
    exports: dict[str, tuple[Path, dict[str, Any]]] = {}
    report["exports"] = {}
    for label, options in {"reference cpu float32": {"target": "cpu", "dtype": "float32", "layout": "as-is",
                                                     "quantize": "none"}, **exports_to_check(args.device)}.items():
        t0 = time.monotonic()
        folder = args.workdir / f"onnx-{label.replace(' ', '-')}"
        r = export_onnx(bake, folder, overwrite=True, progress=False,
                        device="cpu" if label.startswith("reference") else args.device, **options)
        report["exports"][label] = {**options, "seconds": round(time.monotonic() - t0, 1), "mlp_widths": r["mlp_widths"],
                                    "padding_neurons": r["mlp_padding_neurons"], "checked_on": r["checked_on"],
                                    "embedding": r["embedding"]["form"], "bytes": r["bytes"]}
        exports[label] = (folder, options)
    ref_dir = exports.pop("reference cpu float32")[0]
    print(f"exports done at {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    report["correctness"] = correctness(ref_dir, exports, args.device, args.new_tokens, config["vocab_size"])
    report["problems"] = problems_of(report["correctness"])
    print(f"correctness done at {time.monotonic() - started:.0f} s: {len(report['problems'])} problems",
          file=sys.stderr, flush=True)
    report["speed"] = {"skipped": "--no-speed"} if args.no_speed else \
        speed(bake, exports, args, config["vocab_size"], started + args.budget_s)
    report["placement"] = placement(exports, args.device, args.workdir)
    report["problems"] += [f"{label}: {len(p['memcpy'])} Memcpy nodes in the optimized graph ({', '.join(p['memcpy'][:3])}"
                           "...): a CUDA graph cannot be captured" if p.get("memcpy") else f"{label}: {p['error']}"
                           for label, p in report["placement"].items() if p.get("memcpy") or "error" in p]
    report["seconds"] = time.monotonic() - started
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    text = table(report)
    (args.out / "gpu_check.md").write_text(text)
    print(text, end="")
    return 3 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
