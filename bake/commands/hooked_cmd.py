"""``lambda-bake hooked``: chat with the hooked reference (base model + down_proj pre-hooks), no bake."""

from __future__ import annotations

import argparse

from bake.commands import COMMANDS
from bake.commands.common import BASE_ARG, add_gate_args, load_base_and_gates, settings_from_args
from bake.commands.output import add_output_args, say
from bake.gates.gate_math import compute_gates

DESCRIPTION = """\
Run the gates the way they were trained and published: the unmodified base model with a forward
pre-hook on every down_proj that multiplies its input by the gate scale s. Renders the prompt with
the chat template (add_generation_prompt=True, enable_thinking=False), decodes greedily and prints
the reply. Use it to see what a bake must reproduce; `lambda-bake verify` compares the two.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hooked", help=COMMANDS["hooked"].help,
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, type=BASE_ARG, help="base Qwen3 model: a local folder or a Hub repo id")
    add_gate_args(p)
    p.add_argument("--prompt", required=True, help="the user message")
    p.add_argument("--max-new-tokens", type=int, default=128, help="upper bound on the reply length")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoTokenizer

    from bake.verify.reference import load_hooked_model

    base, variant, _ = load_base_and_gates(args)
    settings, _ = settings_from_args(args, variant)
    gates = compute_gates(variant.logits, settings, variant.selected_thresholds)
    say(f"hooked {base.folder} with {variant.name} ({settings.cut.describe()}): {gates.off_fraction:.2%} off")
    model = load_hooked_model(base.folder, gates.scale)
    tokenizer = AutoTokenizer.from_pretrained(str(base.folder))
    text = tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=args.max_new_tokens, do_sample=False)
    reply = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    if args.json:
        from bake.commands.output import emit_json

        emit_json({"reply": reply, "off_fraction": gates.off_fraction, "threshold": gates.threshold})
    else:
        print(reply)
    return 0
