"""``lambda-bake inspect``: what a gate variant holds and what each selected threshold would do."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..base_model import open_base_model
from ..fold import padded_width
from ..gate_math import Cut, GateSettings, compute_gates, gate_values
from ..gates import GateVariant, find_variant_folder, list_variants, load_variant
from ..plan import DEFAULT_PAD_MULTIPLE
from . import COMMANDS
from .common import add_output_args, say

DESCRIPTION = """\
Show a gate variant: neuron count, sigmoid statistics, scale mode, and for every selected
threshold the off-fraction it really gives, the off count per layer and what a pruned bake would
keep (kept width per layer, padded common width). With a folder of variants and no --variant,
every variant is shown.

Flat gate files need the layer count: give --base (recommended) or --num-layers (default 28,
Qwen3-0.6B).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help=COMMANDS["inspect"].help,
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gates", required=True, help="gate variant folder, or a folder holding several variants")
    p.add_argument("--variant", help="variant subfolder (default: all of them)")
    p.add_argument("--base", help="base model folder, to check the gate shape against it")
    p.add_argument("--num-layers", type=int, default=28, help="layer count for flat gate files without --base")
    p.add_argument("--pad-multiple", type=int, default=DEFAULT_PAD_MULTIPLE, help="pruned padding multiple")
    p.add_argument("--thresholds", type=float, nargs="*", default=None,
                   help="extra thresholds to evaluate besides the selected ones")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    gates = Path(args.gates)
    shape: dict[str, int | None] = {"num_layers": args.num_layers, "intermediate_size": None}
    if args.base:
        base = open_base_model(Path(args.base))
        shape = {"num_layers": base.num_layers, "intermediate_size": base.intermediate_size}
    if args.variant is None and gates.is_dir() and len(list_variants(gates)) > 1:
        folders = [gates / name for name in list_variants(gates)]
    else:
        folders = [find_variant_folder(gates, args.variant)]
    reports = [describe_variant(load_variant(f, **shape), args.pad_multiple, args.thresholds or []) for f in folders]
    if args.json:
        from ..cli import emit_json

        emit_json({"variants": reports})
    else:
        for r in reports:
            print_report(r)
    return 0


def describe_variant(v: GateVariant, pad_multiple: int, extra: list[float]) -> dict[str, Any]:
    """Statistics and, per threshold, the achieved off-fraction and pruned widths."""
    lam = gate_values(v.logits)
    rows = []
    candidates = [(f"preset {i + 1}", t) for i, t in enumerate(v.selected_thresholds)]
    candidates += [(f"threshold {t:g}", t) for t in extra]
    for label, t in candidates:
        g = compute_gates(v.logits, GateSettings(Cut("threshold", t), "hard", "none"))
        kept = g.kept_per_layer
        rows.append({
            "label": label, "threshold": t, "off_fraction": g.off_fraction, "off_per_layer": g.off_per_layer,
            "kept_per_layer": kept, "pruned_width": padded_width(kept, pad_multiple),
        })
    return {
        "variant": v.name, "gate_file": str(v.gate_file), "sha256": v.sha256,
        "num_layers": v.num_layers, "intermediate_size": v.intermediate_size, "num_neurons": int(lam.size),
        "sigmoid_mean": float(lam.mean()), "sigmoid_std": float(lam.std(ddof=1)),
        "sigmoid_min": float(lam.min()), "sigmoid_max": float(lam.max()),
        "scale_mode": v.scale_mode, "scale_mode_source": v.scale_mode_source,
        "knowledge_neurons_listed": v.knowledge_neurons, "below_0_5": int((lam < 0.5).sum()),
        "pad_multiple": pad_multiple, "thresholds": rows,
    }


def print_report(r: dict[str, Any]) -> None:
    say(f"variant {r['variant']}  ({r['gate_file']}, sha256 {r['sha256'][:12]})")
    say(f"  neurons {r['num_neurons']:,} = {r['num_layers']} layers x {r['intermediate_size']}; "
        f"sigmoid mean {r['sigmoid_mean']:.4f} std {r['sigmoid_std']:.4f} "
        f"[{r['sigmoid_min']:.4f}, {r['sigmoid_max']:.4f}]")
    say(f"  scale mode {r['scale_mode'] or 'unknown'} (from {r['scale_mode_source']}); "
        f"knowledge neurons listed {r['knowledge_neurons_listed']}, lambda < 0.5: {r['below_0_5']}")
    if not r["thresholds"]:
        say("  no selected_thresholds.txt: use --threshold or --off-fraction")
    for row in r["thresholds"]:
        say(f"  {row['label']:<14} t={row['threshold']:.6f}  off {row['off_fraction']:7.2%}  "
            f"pruned width {row['pruned_width']} (pad {r['pad_multiple']})")
        say(f"      off per layer:  {' '.join(map(str, row['off_per_layer']))}")
        say(f"      kept per layer: {' '.join(map(str, row['kept_per_layer']))}")
