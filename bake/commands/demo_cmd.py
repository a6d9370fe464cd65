"""``lambda-bake demo``: the embedded default, offline: bake a built-in model and check every cut."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bake.commands import COMMANDS
from bake.commands.output import add_output_args, say
from bake.demo.assets import SEED_VARIANTS
from bake.demo.deploy import format_deployment
from bake.demo.run import DEMO_VARIANT, WORKDIR_ENTRIES, format_demo_table, run_demo

DESCRIPTION = """\
Run the whole job offline on built-in inputs: a small random-weight Qwen3 (real chat template on a
small tokenizer) and the published card's four variants as gate folders. The chosen variant is baked
at each of its selected thresholds (dense, pruned and ragged), each checkpoint is loaded (dense and
pruned with plain AutoModelForCausalLM, ragged, whose layers each keep their own width, with
lambda-bake's loader of plain transformers classes), and its logits are compared with the hooked
model on chat prompts. What each
cut costs is then measured (lambda-bake eval) on a briefly trained copy of the same shape: NLL on a
retain and a forget set against the base, and exact match on a QA set of sums.
Then its most pruned cut takes every deployment path: its ragged checkpoint baked with an ONNX export (CPU graph, float32,
ragged widths) and a GGUF (f32, ragged widths), all verified against the hooked model (weights and
logits), and each export generates a short reply in its runtime (onnxruntime-genai, llama.cpp). An
export whose runtime is not installed is skipped and named (pip install -e ".[demo]" brings both).
Exit code 3 if any bake or export does not match.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help=COMMANDS["demo"].help,
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default=DEMO_VARIANT, choices=[v.name for v in SEED_VARIANTS],
                   help=f"seed variant to bake (default {DEMO_VARIANT})")
    p.add_argument("--workdir", type=workdir_arg,
                   help="keep the built inputs and baked models here: a new or empty folder, or an earlier demo's "
                        "(default: temporary)")
    add_output_args(p)
    p.set_defaults(func=run)


def workdir_arg(text: str) -> Path:
    """--workdir: new (created), empty, or an earlier demo's; never a file or a folder holding other things."""
    path = Path(text)
    wanted = "give a new or empty folder, or an earlier demo's --workdir"
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, not a folder; {wanted}")
    other = sorted(p.name for p in path.iterdir() if p.name not in WORKDIR_ENTRIES) if path.is_dir() else []
    if other:
        raise argparse.ArgumentTypeError(
            f"{path} holds other things ({', '.join(other[:5])}{' ...' if len(other) > 5 else ''}) and the demo "
            f"writes {', '.join(WORKDIR_ENTRIES)} into it; {wanted}")
    return path


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    say(f"demo: building a tiny Qwen3 and the card's 4 variants, baking {args.variant} at each selected threshold")
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # one line per step below instead of a bar per file
    result = run_demo(args.workdir, args.variant, log=None if args.quiet else say)
    rows, deployed = result["rows"], result["deployment"]
    ok = all(r["passed"] for r in rows) and deployed["passed"]
    if args.json:
        from bake.commands.output import emit_json

        emit_json({"ok": ok, "variant": args.variant, **result})
    else:
        print(format_demo_table(rows))
        print()
        if result["costs"] is not None:
            from bake.eval.report import format_table

            print("What each cut costs (a briefly trained copy of the demo shape, its seed gates; lambda-bake eval):")
            print(format_table(result["costs"]))
            print()
        print(format_deployment(deployed))
        exports = len(deployed["verification"]["candidates"]) - 1 if deployed["verification"] else 0
        say(f"{len(rows)} bakes and {exports} exports, {'all match' if ok else 'MISMATCH'} the hooked model "
            f"({time.perf_counter() - start:.1f} s)" + (f"; kept in {args.workdir}" if args.workdir else ""))
    return 0 if ok else 3
