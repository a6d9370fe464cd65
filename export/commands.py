"""``lambda-bake export`` and ``lambda-bake generate``: ONNX export of a baked model, and running it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bake.commands import COMMANDS
from bake.commands.common import add_output_args, say

EXPORT_EPILOG = """\
layouts:
  as-is   the checkpoint's shapes (dense: full width with zero columns; pruned: the padded width)
  ragged  per layer, drop every MLP neuron whose down_proj column is all zero (it adds exactly 0),
          so each layer keeps exactly its own width; works from a dense or a pruned bake

examples:
  lambda-bake export --model baked-chat-energy-50 --out baked-onnx
  lambda-bake export --model baked-chat-energy-50 --out baked-onnx-fp16 --dtype float16 --layout ragged
  lambda-bake export --model baked-chat-energy-50 --out baked-onnx-int4 --quantize int4 --layout ragged
"""


def register(sub: Any) -> None:
    """Register both subcommands of this module (bake.cli calls this)."""
    register_export(sub)
    register_generate(sub)


def register_export(sub: Any) -> None:
    from .exporter import EXPORT_DTYPES, LAYOUTS, QUANTIZATIONS  # torch and onnx: only for the export command

    p = sub.add_parser(
        "export",
        help=COMMANDS["export"].help,
        description=(
            "Build an ONNX graph (inputs input_ids, attention_mask, position_ids, past_key_values.*; outputs "
            "logits, present.*) directly from the checkpoint's tensors, check it with onnx.checker and strict "
            "shape inference, load it once in ONNX Runtime, and write the folder atomically with the "
            "tokenizer, chat template and onnx_io.json. Weights over 2 GB go to model.onnx.data."
        ),
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, type=Path, help="baked (or base) Qwen3 model folder")
    p.add_argument("--out", required=True, type=Path, help="export folder to create")
    p.add_argument("--dtype", default="float32", choices=[*EXPORT_DTYPES, "bfloat16"],
                   help="weight and activation dtype (default float32; bfloat16 is refused: no ORT CPU kernels)")
    p.add_argument("--layout", default="as-is", choices=LAYOUTS, help="MLP widths in the graph (default as-is)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="execution provider the export is checked on after writing (default cpu)")
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=False,
                   help="use ONNX Runtime's fused com.microsoft ops (GroupQueryAttention, "
                        "SkipSimplifiedLayerNormalization, RotaryEmbedding); default: portable standard ops")
    p.add_argument("--quantize", default="none", choices=QUANTIZATIONS,
                   help="weight-only quantization of every linear layer incl. lm_head (com.microsoft MatMulNBits, "
                        "blockwise 32, asymmetric; float32 only): smaller and faster on CPU but not exact, so "
                        "verify judges it by KL and top-1 (default none)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_output_args(p)
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from bake.cli import emit_json

    from .exporter import export_onnx

    report = export_onnx(args.model, args.out, dtype=args.dtype, layout=args.layout, fused=args.fused,
                         quantize=args.quantize, device=args.device, overwrite=args.overwrite,
                         progress=not args.quiet)
    if args.json:
        emit_json(report)
        return 0
    widths = report["mlp_widths"]
    say(f"exported {report['model']} -> {report['out']} in {report['seconds']:.1f} s")
    quantized = "" if report["quantize"] == "none" else f" with {report['quantize']} weights"
    say(f"  {report['dtype']}{quantized}, layout {report['layout']}, {'fused' if report['fused'] else 'standard'} ops, "
        f"{report['bytes'] / 1e6:.1f} MB{' (weights in model.onnx.data)' if report['external_data'] else ''}")
    say(f"  MLP neurons kept: {report['mlp_neurons']} of {len(widths) * report['config_intermediate_size']} "
        f"(per layer {min(widths)}..{max(widths)})")
    say(f"  try it: lambda-bake generate --onnx {report['out']} --prompt \"Hello\"")
    return 0


def register_generate(sub: Any) -> None:
    p = sub.add_parser(
        "generate",
        help=COMMANDS["generate"].help,
        description=(
            "Render the prompt with the export's chat template (add_generation_prompt, thinking off), then "
            "decode greedily through the KV cache until the end-of-turn token or --max-new-tokens, and print "
            "the reply. Uses CUDA when onnxruntime-gpu provides it, else the CPU."
        ),
    )
    p.add_argument("--onnx", required=True, type=Path, help="folder written by lambda-bake export")
    p.add_argument("--prompt", required=True, help="the user message")
    p.add_argument("--system", help="optional system message")
    p.add_argument("--max-new-tokens", type=_positive_int, default=256, help="upper bound on reply length (default 256)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda if available")
    p.set_defaults(func=run_generate)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run_generate(args: argparse.Namespace) -> int:
    from .runtime import OnnxCausalLM

    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}]
    lm = OnnxCausalLM(args.onnx, device=args.device)
    print(f"running {args.onnx} on {lm.device}", file=sys.stderr)
    print(lm.generate(messages, max_new_tokens=args.max_new_tokens))
    return 0
