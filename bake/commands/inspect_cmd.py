"""``lambda-bake inspect``: what a gate variant holds and what each selected threshold would do."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bake.commands import COMMANDS
from bake.commands.output import add_output_args, show
from bake.fold.plan import DEFAULT_PAD_MULTIPLE
from bake.gates.report import inspect_report
from bake.gates.variant import ALL_VARIANTS, load_variant, variant_folders
from bake.io.base_model import open_base_model
from bake.io.paths import GATE_FILE_SUFFIXES, GATES_PATH, MODEL_FOLDER, path_arg
from bake.plots import figure as plots
from bake.plots import inspect_plot

DESCRIPTION = f"""\
Show a gate variant: neuron count, sigmoid statistics, scale mode, and for every selected
threshold the off-fraction it really gives, the off count per layer and what a pruned bake would
keep (kept width per layer, padded common width). With a folder of variants and no --variant (or
--variant all), every variant is shown.

--plot FILE.png|FILE.svg draws the same numbers as one figure: a column per variant with the share
of neurons switched off per layer at each threshold, the per-layer lambda quantiles, and the kept
neurons per layer against the pruned layout's padded width. It needs matplotlib:
{plots.INSTALL_HINT}.

A flat gate file (one long tensor) does not say how many layers it covers: give --base (recommended:
the shape is then also checked against the model) or --num-layers.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help=COMMANDS["inspect"].help,
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gates", required=True, type=path_arg("folder", GATES_PATH, accept_files=GATE_FILE_SUFFIXES),
                   help="gate variant folder, or a folder holding several variants")
    p.add_argument("--variant", help=f"variant subfolder, or '{ALL_VARIANTS}' (the default): every variant")
    p.add_argument("--base", type=path_arg("folder", MODEL_FOLDER),
                   help="base model folder, to check the gate shape against it")
    p.add_argument("--num-layers", type=int, default=None,
                   help="layer count of a flat gate file when there is no --base (an [L, I] tensor, a list or a dict "
                        "by layer says it itself)")
    p.add_argument("--pad-multiple", type=int, default=DEFAULT_PAD_MULTIPLE, help="pruned padding multiple")
    p.add_argument("--thresholds", type=float, nargs="*", default=None,
                   help="extra thresholds to evaluate besides the selected ones")
    p.add_argument("--uniform-width", action="store_true",
                   help="also show, for each threshold, the uniform-width cut at its off-fraction (the same number "
                        "of neurons off in every layer): its width and what it switches differently; --plot draws "
                        "its width next to the threshold cut's")
    plots.add_plot_args(p, "the report", "120 + 420 per variant, at least 800, by 1300")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.plot:
        plots.plot_format(args.plot)  # refuse a bad --plot before the work
        plots.require_matplotlib()
    shape: dict[str, int | None] = {"num_layers": args.num_layers, "intermediate_size": None}
    if args.base:
        base = open_base_model(Path(args.base))
        shape = {"num_layers": base.num_layers, "intermediate_size": base.intermediate_size}
    folders = variant_folders(Path(args.gates), args.variant or ALL_VARIANTS)
    report = inspect_report([load_variant(f, **shape) for f in folders], args.pad_multiple, args.thresholds or [],
                            uniform=args.uniform_width)
    if args.plot:
        write_plot(report, args.plot, args.plot_size)
    if args.json:
        from bake.commands.output import emit_json

        emit_json(report)
    else:
        for r in report["variants"]:
            print_report(r)
    return 0


def write_plot(report: dict[str, Any], path: Path, size: tuple[int, int] | None) -> None:
    """Draw the inspect report (the dict --json prints) to ``path``."""
    size = size or inspect_plot.inspect_size(report)
    plots.write_figure(inspect_plot.inspect_figure(report, size), path)
    show(f"figure: {path} ({size[0]}x{size[1]} px)")


def print_report(r: dict[str, Any]) -> None:
    show(f"variant {r['variant']}  ({r['gate_file']}, sha256 {r['sha256'][:12]})")
    show(f"  neurons {r['num_neurons']:,} = {r['num_layers']} layers x {r['intermediate_size']}; "
        f"sigmoid mean {r['sigmoid_mean']:.4f} std {r['sigmoid_std']:.4f} "
        f"[{r['sigmoid_min']:.4f}, {r['sigmoid_max']:.4f}]")
    show(f"  scale mode {r['scale_mode'] or 'unknown'} (from {r['scale_mode_source']}); "
        f"knowledge neurons listed {r['knowledge_neurons_listed']}, lambda < 0.5: {r['below_0_5']}")
    if not r["thresholds"]:
        show("  no selected_thresholds.txt: use --threshold or --off-fraction")
    for row in r["thresholds"]:
        show(f"  {row['label']:<14} t={row['threshold']:.6f}  off {row['off_fraction']:7.2%}  "
            f"pruned width {row['pruned_width']} (pad {r['pad_multiple']})")
        show(f"      off per layer:  {' '.join(map(str, row['off_per_layer']))}")
        show(f"      kept per layer: {' '.join(map(str, row['kept_per_layer']))}")
        if "uniform_cut" in row:
            u = row["uniform_cut"]
            show(f"      uniform width: {u['kept_per_layer'][0]} kept in every layer (pruned width {u['pruned_width']}); "
                 f"{u['on_to_off']:,} on -> off, {u['off_to_on']:,} off -> on against this cut; per layer "
                 f"on -> off: {' '.join(map(str, u['on_to_off_per_layer']))}")

