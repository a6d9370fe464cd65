"""``lambda-bake bake`` with several cuts or variants: load once, plan all, write each (``bake.write.sweep``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bake.commands.common import ALL, check_gguf_layout, load_base, load_gates, settings_from_args
from bake.commands.output import say, show
from bake.errors import CutError, OutputError, PlotError
from bake.fold.plan import BakeOptions
from bake.gates.gate_math import Cut
from bake.gates.variant import GateVariant
from bake.hub.sources import gate_variant_names
from bake.plots import figure as plots
from bake.plots import sweep_plot
from bake.write.pipeline import Check, Extras
from bake.write.sweep import CutOutcome, SweepCut, plan_sweep, run_sweep, sweep_exit_code

_CUT_KINDS = ("threshold", "off_fraction", "preset")  # the cut options, named as the Cut kinds


def is_sweep(args: argparse.Namespace) -> bool:
    """--variant all, --preset all, or several values of a cut option."""
    values = [getattr(args, kind) or [] for kind in _CUT_KINDS]
    return args.variant == ALL or any(len(v) > 1 or ALL in v for v in values)


def one_cut(args: argparse.Namespace) -> None:
    """Not a sweep: each cut option holds at most one value; make it that value (as verify and hooked take it)."""
    for kind in _CUT_KINDS:
        values = getattr(args, kind)
        setattr(args, kind, values[0] if values else None)


def cuts_for(args: argparse.Namespace, variant: GateVariant) -> list[Cut]:
    """The cuts the command line asks of one variant (``--preset all``: each of its selected thresholds)."""
    for kind in _CUT_KINDS:
        values = getattr(args, kind)
        if not values:
            continue
        if ALL in values:
            if values != [ALL]:
                raise CutError("--preset all already takes every preset; give 'all' or numbers, not both")
            if not variant.selected_thresholds:
                raise CutError(f"--preset all: variant {variant.name} has no selected_thresholds.txt; "
                               "use --threshold or --off-fraction")
            return [Cut("preset", k) for k in range(1, len(variant.selected_thresholds) + 1)]
        return [Cut(kind, v) for v in values]
    return [Cut("none")]


def run_sweep_command(args: argparse.Namespace, options: BakeOptions, check: Check | None, extras: Extras | None
                      ) -> int:
    if args.push_to:
        raise OutputError(
            "--push-to uploads one model folder, but this is a sweep that writes one folder per cut; drop "
            "--push-to and push the ones you want afterwards: lambda-bake push OUT/<variant>-p<K> --repo-id USER/NAME"
        )
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise OutputError(f"{args.out} is a file; a sweep writes its outputs into a folder: choose another --out")
    if args.plot:
        check_plot(Path(args.plot), Path(args.out))
    base, base_sources = load_base(args)
    check_gguf_layout(args, base)
    names = gate_variant_names(str(args.gates), args.gates_revision) if args.variant == ALL else [args.variant]
    cuts = []
    for name in names:
        variant, gate_sources = load_gates(args, base, name)
        for cut in cuts_for(args, variant):
            settings, scale_source = settings_from_args(args, variant, cut)
            cuts.append(SweepCut(variant, settings, scale_source, base_sources | gate_sources))
    planned = plan_sweep(base, cuts, Path(args.out), options)
    say(f"sweep: {len(planned)} cuts of {', '.join(dict.fromkeys(c.variant.name for c in cuts))} "
        f"from {base.folder} into {args.out}/")
    outcomes = run_sweep(planned, check, extras, log=say)
    report = sweep_report(outcomes, Path(args.out))
    print_sweep(report, args.json)
    if args.plot:
        write_plot(report, Path(args.plot), args.plot_size)
    return sweep_exit_code(outcomes)


def sweep_report(outcomes: list[CutOutcome], out: Path) -> dict[str, Any]:
    """What ``--json`` prints and ``--plot`` draws: every output with its figures; the failed ones named."""
    return {"ok": all(o.ok for o in outcomes), "out": str(out), "outputs": [o.to_dict() for o in outcomes],
            "failed": [o.name for o in outcomes if not o.ok]}


def print_sweep(report: dict[str, Any], as_json: bool) -> None:
    """The JSON report or a table; failures are named either way."""
    if as_json:
        from bake.commands.output import emit_json

        emit_json(report)
    else:
        say(f"{'output':<28} {'threshold':>10} {'off':>7} {'width':>6} {'params':>14} {'s':>6}")
        for o in report["outputs"]:
            say(_row(o))
    outputs = report["outputs"]
    failed = ", ".join(f"{o['name']} (exit {o['exit_code']})" for o in outputs if not o["ok"])
    (show if failed else say)(f"wrote {len(outputs) - len(report['failed'])} of {len(outputs)} outputs under "
                              f"{report['out']}" + (f"; FAILED: {failed}" if failed else ""))


def check_plot(plot: Path, out: Path) -> None:
    """Refuse, before any work, a --plot the sweep could not write (file type, folder, no matplotlib) or one
    inside a folder under OUT: each of those is an all-or-nothing output that the figure must not add to."""
    plots.plot_format(plot, created=out)
    target, out = plot.resolve(), out.resolve()
    if target == out or (target.parent != out and target.is_relative_to(out)):
        raise PlotError(f"--plot {plot} points into the sweep's output folder {out}, whose folders are finished "
                        f"checkpoints; write the figure into {out} itself or outside it")
    plots.require_matplotlib()


def write_plot(report: dict[str, Any], path: Path, size: tuple[int, int] | None) -> None:
    """Draw the sweep report (the dict --json prints) to ``path``, written in one rename."""
    size = size or sweep_plot.sweep_size(report)
    plots.write_figure(sweep_plot.sweep_figure(report, size), path)
    show(f"figure: {path} ({size[0]}x{size[1]} px)")


def _row(r: dict[str, Any]) -> str:
    if not r["ok"]:
        return f"{r['name']:<28} FAILED: {r['error']}"
    threshold = "n/a" if r["threshold"] is None else f"{r['threshold']:.6g}"
    return (f"{r['name']:<28} {threshold:>10} {r['off_fraction']:>7.2%} {r['intermediate_size']:>6} "
            f"{r['params']:>14,} {r['seconds']:>6.1f}")
