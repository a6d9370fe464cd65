"""Arguments and input loading shared by the subcommands that take a base model and gates."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..base_model import BaseModel, open_base_model
from ..errors import CutError
from ..gate_math import GATE_MODES, SCALE_SCOPES, Cut, GateSettings
from ..gates import GateVariant, load_variant
from ..hub import resolve_base, resolve_gates
from ..paths import GATE_FILE_SUFFIXES, GATES_PATH, MODEL_FOLDER, path_arg

# argparse types of --base and --gates where a Hub repo id is accepted too.
BASE_ARG = path_arg("folder", MODEL_FOLDER, hub=True)
GATES_ARG = path_arg("folder", GATES_PATH, hub=True, accept_files=GATE_FILE_SUFFIXES)


def add_gate_args(p: argparse.ArgumentParser, *, gates_required: bool = True) -> None:
    """--gates/--variant, the cut, and the gate/scale modes."""
    p.add_argument("--gates", required=gates_required, type=GATES_ARG,
                   help="gate variant folder, a folder holding several variants, or a Hub repo id")
    p.add_argument("--variant", help="variant subfolder to use when --gates holds several (e.g. chat_energy_optA)")
    cut = p.add_mutually_exclusive_group()
    cut.add_argument("--threshold", type=float, help="switch off neurons with sigmoid(logit) < T, 0 < T < 1")
    cut.add_argument("--off-fraction", type=float,
                     help="switch off this share of all neurons (global quantile of lambda), 0..1")
    cut.add_argument("--preset", type=int, help="use the K-th (1-based) value of the variant's selected_thresholds.txt")
    p.add_argument("--gate-mode", choices=GATE_MODES, default="hard",
                   help="hard: m=1[lambda>=t] (deployment default); soft-masked: m=lambda*1[lambda>=t]; "
                        "soft: m=lambda, no cut")
    p.add_argument("--scale-mode", choices=("auto", "mean", "energy", "none"), default="auto",
                   help="rescaling after gating; auto takes it from gate_stats.json or the folder name")
    p.add_argument("--scale-scope", choices=SCALE_SCOPES, default="layer",
                   help="take the scale statistic per layer (default) or over all neurons")


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a machine-readable JSON report on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cut_from_args(args: argparse.Namespace) -> Cut:
    if args.threshold is not None:
        return Cut("threshold", args.threshold)
    if args.off_fraction is not None:
        return Cut("off_fraction", args.off_fraction)
    if args.preset is not None:
        return Cut("preset", args.preset)
    return Cut("none")


def settings_from_args(args: argparse.Namespace, variant: GateVariant) -> tuple[GateSettings, str]:
    """The gate settings and where the scale mode came from ('user', 'gate_stats.json', 'folder name')."""
    scale_mode, source = args.scale_mode, "user"
    if scale_mode == "auto":
        if variant.scale_mode is None:
            raise CutError(
                f"cannot tell the scale mode of variant {variant.name!r}: its folder name and gate_stats.json "
                "do not say; pass --scale-mode mean, energy or none"
            )
        scale_mode, source = variant.scale_mode, variant.scale_mode_source
    return GateSettings(cut_from_args(args), args.gate_mode, scale_mode, args.scale_scope), source


def load_base_and_gates(args: argparse.Namespace) -> tuple[BaseModel, GateVariant, dict[str, Any]]:
    """Resolve --base/--gates (local folders or Hub ids), open the base and load the variant's gates.

    Also returns the sources for the manifest: Hub ids with the resolved commit, or local paths.
    """
    progress = not getattr(args, "quiet", False)
    base_dir = resolve_base(str(args.base), getattr(args, "base_revision", None), progress=progress)
    gates_dir = resolve_gates(str(args.gates), args.variant, getattr(args, "gates_revision", None))
    model = open_base_model(base_dir)
    gv = load_variant(gates_dir, args.variant, num_layers=model.num_layers, intermediate_size=model.intermediate_size)
    sources: dict[str, Any] = {}
    if base_dir != Path(args.base):
        sources |= {"base": str(args.base), "base_revision": base_dir.name}
    if gates_dir != Path(args.gates):
        sources |= {"gates": str(args.gates), "gates_revision": gates_dir.name}
    return model, gv, sources


def say(msg: str) -> None:
    """Human-facing messages go to stderr so stdout stays clean for --json."""
    print(msg, file=sys.stderr)


def format_layer_counts(counts: list[int], total: int) -> str:
    return " ".join(f"{c}" for c in counts) + f"  (of {total} each)"
