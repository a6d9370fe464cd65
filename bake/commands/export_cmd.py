"""``lambda-bake export``: ONNX export (with KV cache and genai_config.json) of a baked model folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bake.commands import COMMANDS
from bake.commands.output import add_output_args, say
from bake.errors import ExportError
from bake.io.paths import MODEL_FOLDER, path_arg
from export.options import (
    DEVICES,
    DTYPES,
    EMBEDDINGS,
    GGUF_TYPES,
    GRAPH_DEFAULTS,
    LAYOUTS,
    QUANT_SCHEMES,
    QUANTIZATIONS,
    TARGETS,
)

EXPORT_EPILOG = """\
targets (the graph):
  portable  standard ONNX ops (opset 21): any ONNX runtime and execution provider, no position limit;
            logits at every position, position_ids input, KV cache concatenated each step
  cpu       (default) ONNX Runtime's fused kernels, the graph onnxruntime-genai runs fastest:
            GroupQueryAttention with rotary inside and the KV cache written in place (one buffer per
            layer shared by past/present), skip + RMSNorm fused, packed QKV and gate/up projections,
            logits of the last token only; right-padded batches
  cuda      the cpu graph with the q/k RMSNorm fused into GroupQueryAttention (a CUDA-only kernel);
            --dtype float16 or bfloat16 (as Qwen3 ships: no float16 overflow); each layer's MLP width
            rounded up to a multiple of 64 with zero neurons (--width-multiple), so ONNX Runtime's fast
            MatMulNBits and aligned fp16/bf16 GEMM kernels run; every node runs on the CUDA execution
            provider, so onnxruntime-genai can capture it as a CUDA graph (--cuda-graph, batch 1)

layouts:
  as-is   the checkpoint's shapes (dense: full width with zero columns; pruned: the padded width)
  ragged  per layer, drop every MLP neuron whose down_proj column is all zero (it adds exactly 0),
          so each layer keeps exactly its own width; works from a dense or a pruned bake

Every export folder holds genai_config.json, so onnxruntime-genai runs it as it is.

examples:
  lambda-bake export --model baked-chat-energy-50 --out baked-onnx
  lambda-bake export --model baked-chat-energy-50 --out baked-onnx-cpu --target cpu --layout ragged
  lambda-bake export --model baked-chat-energy-50 --out baked-onnx-gpu --target cuda --dtype float16 --layout ragged
  lambda-bake export --model baked-chat-energy-50 --out baked-onnx-int4 --target cpu --quantize int4 --layout ragged
"""


def add_graph_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The export's graph options; ``prefix`` 'onnx-' names them for bake --onnx."""
    d = GRAPH_DEFAULTS
    p.add_argument(f"--{prefix}target", default=d["target"], choices=TARGETS,
                   help="graph to build: portable (standard ops), cpu or cuda (ONNX Runtime's fused kernels, "
                        "in-place KV cache, the onnxruntime-genai graph); default cpu")
    p.add_argument(f"--{prefix}dtype", default=d["dtype"], choices=[*DTYPES, "bfloat16"],
                   help="weight and activation dtype (default float32; --target cuda needs float16; bfloat16 is "
                        "refused: no ONNX Runtime CPU kernels)")
    p.add_argument(f"--{prefix}layout", default=d["layout"], choices=LAYOUTS, help="MLP widths in the graph (default as-is)")
    p.add_argument(f"--{prefix}quantize", default=d["quantize"], choices=QUANTIZATIONS,
                   help="weight-only quantization of every linear layer incl. lm_head (com.microsoft MatMulNBits, "
                        "blockwise 32; see --quant-scheme): smaller and faster, but not exact, so verify judges it "
                        "by KL and top-1 (default none)")
    p.add_argument(f"--{prefix}cuda-graph", action="store_true", default=d["cuda_graph"],
                   help="--target cuda: turn on CUDA-graph capture in genai_config.json (onnxruntime-genai captures "
                        "at batch 1 only)")
    p.add_argument(f"--{prefix}width-multiple", type=int, default=d["width_multiple"], metavar="N",
                   help="round every layer's MLP width up to a multiple of N with zero neurons (exact; reported per "
                        "layer): default 64 for --target cuda, whose fast int4/int8 and fp16 kernels need aligned "
                        "widths, and 1 (no rounding) for cpu and portable")
    p.add_argument(f"--{prefix}quant-scheme", default=d["quant_scheme"], choices=QUANT_SCHEMES,
                   help="with --quantize: symmetric (default, as onnxruntime-genai's builder: a scale per block of 32, "
                        "no zero points) or asymmetric (a zero point per block too: every code used on a skewed "
                        "block, 1.6 %% more bytes at int4)")
    p.add_argument(f"--{prefix}embedding", default=d["embedding"], choices=EMBEDDINGS,
                   help="token lookup of a quantized cpu/cuda graph: auto (default) reads it from int codes through "
                        "ONNX Runtime's GatherBlockQuantized, a tied table sharing the lm_head's codes (as "
                        "onnxruntime-genai's builder does: the float table is gone from the file); float keeps the "
                        "exact export-dtype table (vocab x hidden more bytes); quantized insists on the codes. The "
                        "export summary says which was done and its bytes")


FORMATS = ("onnx", "gguf", "mlx")
MLX_DEFAULTS = {"mlx_dtype": None, "mlx_bits": None, "mlx_group_size": 64}


def add_mlx_args(p: argparse.ArgumentParser) -> None:
    """The MLX export's options (export --format mlx, and bake --mlx)."""
    p.add_argument("--mlx-dtype", choices=DTYPES, default=None,
                   help="MLX weight dtype (default: the bake's own, bfloat16 for Qwen3; quantized weights' scales "
                        "are in it too)")
    p.add_argument("--mlx-bits", type=int, choices=(4, 8), default=None,
                   help="quantize every linear layer and the embedding with mlx-lm's own quantizer (affine, per "
                        "group): smaller and faster, judged by verify against its own dequantized weights (default: "
                        "not quantized)")
    p.add_argument("--mlx-group-size", type=int, choices=(32, 64, 128), default=64,
                   help="inputs per quantization group (mlx-lm's default 64); a ragged layer's width is rounded up "
                        "to it with zero neurons")


def add_gguf_args(p: argparse.ArgumentParser) -> None:
    """``--gguf-type`` and ``--gguf-pure`` (export --format gguf, and bake --gguf)."""
    p.add_argument("--gguf-type", default="f16", choices=GGUF_TYPES,
                   help="GGUF file type, each tensor in the type llama-quantize gives it: f32, f16 (default), bf16, "
                        "q8_0 (gguf-py; norms stay f32, a row that is not a whole number of blocks f16), q4_0 and the "
                        "K-quants q6_k, q5_k_m, q4_k_m (llama.cpp's own quantizer, through llama-cpp-python: the "
                        "embedding/output one type up, Q6_K, and the K-quants' per-tensor mix)")
    p.add_argument("--gguf-pure", action="store_true",
                   help="every 2-D tensor in --gguf-type, as llama-quantize --pure (q4_0: written by gguf-py, no "
                        "llama.cpp needed)")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help=COMMANDS["export"].help,
        description=(
            "Build an ONNX graph with KV cache directly from the checkpoint's tensors, check it with "
            "onnx.checker and strict shape inference, load it once in ONNX Runtime, and write the folder "
            "atomically with the tokenizer, chat template, genai_config.json and onnx_io.json. Weights over "
            "2 GB go to model.onnx.data."
        ),
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, type=path_arg("folder", MODEL_FOLDER),
                   help="baked (or base) Qwen3 model folder")
    p.add_argument("--out", required=True, type=Path,
                   help="export folder (ONNX: new, empty, or an earlier export to replace with --overwrite), or the "
                        "*.gguf file (GGUF)")
    p.add_argument("--format", choices=FORMATS, default="onnx",
                   help="onnx (default): a folder for ONNX Runtime and onnxruntime-genai; gguf: one file for "
                        "llama.cpp (arch qwen3 as-is, openelm for --layout ragged); mlx: an mlx-lm folder (qwen3 "
                        "as-is, openelm for --layout ragged)")
    add_graph_args(p)
    add_gguf_args(p)
    add_mlx_args(p)
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="execution provider the export is loaded and run on after writing (default auto: CUDA when "
                        "onnxruntime-gpu has it, else CPU; a cuda-target export is only loaded on a CPU)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_output_args(p)
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from bake.commands.output import emit_json

    given = _given_for_other_formats(args)
    if given:
        raise ExportError(given)
    if args.format == "gguf":
        return run_gguf_export(args)
    if args.format == "mlx":
        return run_mlx_export(args)
    from export.install import require_onnxruntime

    require_onnxruntime()
    from export.onnx.exporter import export_onnx

    report = export_onnx(args.model, args.out, target=args.target, dtype=args.dtype, layout=args.layout,
                         quantize=args.quantize, cuda_graph=args.cuda_graph, width_multiple=args.width_multiple,
                         embedding=args.embedding, quant_scheme=args.quant_scheme, device=args.device,
                         overwrite=args.overwrite, progress=not args.quiet)
    if args.json:
        emit_json(report)
        return 0
    widths = report["mlp_widths"]
    say(f"exported {report['model']} -> {report['out']} in {report['seconds']:.1f} s")
    quantized = "" if report["quantize"] == "none" else f" with {report['quantize']} weights"
    say(f"  target {report['target']}, {report['dtype']}{quantized}, layout {report['layout']}, "
        f"{report['bytes'] / 1e6:.1f} MB{' (weights in model.onnx.data)' if report['external_data'] else ''}")
    padding = (f"; {report['mlp_padding_neurons']:,} zero neurons added to reach multiples of "
               f"{report['width_multiple']}" if report["mlp_padding_neurons"] else "")
    say(f"  MLP neurons kept: {report['mlp_neurons']} of {len(widths) * report['config_intermediate_size']} "
        f"(per layer {min(widths)}..{max(widths)} wide{padding}); checked on {report['checked_on']}")
    say("  " + embedding_line(report["embedding"]))
    say(f"  try it: lambda-bake generate --onnx {report['out']} --prompt \"Hello\"")
    return 0


def embedding_line(e: dict) -> str:
    """What the export did with the token embedding, and its bytes, in one line."""
    float_mb = e["float_bytes"] / 1e6
    if e["form"] == "shared":
        return (f"embedding: looked up in the lm_head's int codes (GatherBlockQuantized): 0 bytes of its own, "
                f"{float_mb:.1f} MB less than the float table (--embedding float keeps it)")
    if e["form"] == "quantized":
        return (f"embedding: its own int codes (GatherBlockQuantized), {e['bytes'] / 1e6:.1f} MB against "
                f"{float_mb:.1f} MB as a float table")
    why = f" ({e['why']})" if e.get("why") else ""
    return f"embedding: float table, {float_mb:.1f} MB{why}"


def _given_for_other_formats(args: argparse.Namespace) -> str | None:
    """Why the options given do not fit --format (an option of another format, set away from its default)."""
    own = {"onnx": [n for n in GRAPH_DEFAULTS if n != "layout"], "gguf": ["gguf_type", "gguf_pure"],
           "mlx": list(MLX_DEFAULTS)}
    defaults = {n: v for n, v in GRAPH_DEFAULTS.items() if n != "layout"} | {"gguf_type": "f16", "gguf_pure": False} \
        | MLX_DEFAULTS
    wrong = [f"--{n.replace('_', '-')}" for fmt, names in own.items() if fmt != args.format for n in names
             if getattr(args, n) != defaults[n]]
    if not wrong:
        return None
    takes = {"onnx": "the graph options (--target, --dtype, --quantize, ...)", "gguf": "--gguf-type and --gguf-pure",
             "mlx": "--mlx-dtype, --mlx-bits and --mlx-group-size"}[args.format]
    return f"{', '.join(wrong)} do not apply to --format {args.format}, which takes {takes} and --layout"


def run_mlx_export(args: argparse.Namespace) -> int:
    from bake.commands.output import emit_json
    from export.mlx.writer import export_mlx

    report = export_mlx(args.model, args.out, layout=args.layout, dtype=args.mlx_dtype, bits=args.mlx_bits,
                        group_size=args.mlx_group_size, overwrite=args.overwrite, progress=not args.quiet)
    if args.json:
        emit_json(report)
        return 0
    say(f"exported {report['model']} -> {report['out']} in {report['seconds']:.1f} s")
    widths = report["mlp_widths"]
    weights = f"{report['bits']}-bit (groups of {report['group_size']})" if report["bits"] else "unquantized"
    say(f"  MLX {report['model_type']}, layout {report['layout']}, {report['dtype']}, {weights}, "
        f"{report['bytes'] / 1e6:.1f} MB; MLP neurons {report['mlp_neurons']:,} (per layer {min(widths)}..{max(widths)}"
        f" wide" + (f", {report['mlp_padding_neurons']:,} zero neurons to whole groups"
                    if report["mlp_padding_neurons"] else "") + ")"
        + (f"; kept float (input not whole groups): {', '.join(report['kept_float'])}" if report["kept_float"] else ""))
    say(f"  try it: lambda-bake generate --mlx {report['out']} --prompt \"Hello\"")
    return 0


def run_gguf_export(args: argparse.Namespace) -> int:
    from bake.commands.output import emit_json
    from export.install import require_gguf

    require_gguf()
    from export.gguf.writer import export_gguf

    report = export_gguf(args.model, args.out, gguf_type_name=args.gguf_type, layout=args.layout,
                         pure=args.gguf_pure, overwrite=args.overwrite, progress=not args.quiet)
    if args.json:
        emit_json(report)
        return 0
    say(f"exported {report['model']} -> {report['out']} in {report['seconds']:.1f} s")
    widths = report["mlp_widths"]
    say(f"  GGUF {report['type']}, arch {report['arch']}, layout {report['layout']}, {report['bytes'] / 1e6:.1f} MB; "
        f"MLP neurons {report['mlp_neurons']:,} (per layer {min(widths)}..{max(widths)} wide"
        + (f", {report['mlp_padding_neurons']:,} zero neurons to whole blocks" if report["mlp_padding_neurons"] else "")
        + ")" + (f"; kept f16 (rows not whole blocks): {len(report['f16_fallback'])} tensors"
                 if report["f16_fallback"] else ""))
    say(f"  try it: lambda-bake generate --gguf {report['out']} --prompt \"Hello\"")
    say(f"  Ollama: ollama create NAME -f {report['modelfile']}  (its chat template, thinking off, and stop tokens)")
    return 0
