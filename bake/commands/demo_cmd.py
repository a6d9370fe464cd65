"""``lambda-bake demo``: the embedded default, offline: bake a built-in model and check every cut."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..demo import DEMO_VARIANT, format_demo_table, run_demo
from ..demo_assets import SEED_VARIANTS
from . import COMMANDS
from .common import add_output_args, say

DESCRIPTION = """\
Run the whole job offline on built-in inputs: a small random-weight Qwen3 (real chat template on a
small tokenizer) and the published card's four variants as gate folders. The chosen variant is baked
at each of its selected thresholds (dense and pruned), each checkpoint is loaded with plain
AutoModelForCausalLM, and its logits are compared with the hooked model on chat prompts.
Exit code 3 if any bake does not match.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help=COMMANDS["demo"].help,
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default=DEMO_VARIANT, choices=[v.name for v in SEED_VARIANTS],
                   help=f"seed variant to bake (default {DEMO_VARIANT})")
    p.add_argument("--workdir", type=Path, help="keep the built inputs and baked models here (default: temporary)")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    say(f"demo: building a tiny Qwen3 and the card's 4 variants, baking {args.variant} at each selected threshold")
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # one line per step below instead of a bar per file
    rows = run_demo(args.workdir, args.variant, log=None if args.quiet else say)
    ok = all(r["passed"] for r in rows)
    if args.json:
        from ..cli import emit_json

        emit_json({"ok": ok, "variant": args.variant, "rows": rows})
    else:
        print(format_demo_table(rows))
        say(f"{len(rows)} bakes, {'all match' if ok else 'MISMATCH'} the hooked model "
            f"({time.perf_counter() - start:.1f} s)")
    return 0 if ok else 3
