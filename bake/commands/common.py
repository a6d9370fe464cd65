"""Arguments and input loading shared by the subcommands that take a base model and gates."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bake.errors import CutError
from bake.fold.plan import refuse_ragged_base
from bake.gates.gate_math import GATE_MODES, SCALE_SCOPES, Cut, GateSettings
from bake.gates.variant import GateVariant, load_variant
from bake.hub.sources import resolve_base, resolve_gates
from bake.io.base_model import BaseModel, open_base_model
from bake.io.paths import GATE_FILE_SUFFIXES, GATES_PATH, MODEL_FOLDER, is_repo_id, path_arg

# argparse types of --base and --gates where a Hub repo id is accepted too.
BASE_ARG = path_arg("folder", MODEL_FOLDER, hub=True)
GATES_ARG = path_arg("folder", GATES_PATH, hub=True, accept_files=GATE_FILE_SUFFIXES)
ALL = "all"


def add_gate_args(p: argparse.ArgumentParser, *, gates_required: bool = True, sweep: bool = False) -> None:
    """--gates/--variant, the cut, and the gate/scale modes. With ``sweep``, the cut options take several
    values and --preset/--variant take ``all``."""
    p.add_argument("--gates", required=gates_required, type=GATES_ARG,
                   help="gate variant folder, a folder holding several variants, or a Hub repo id")
    p.add_argument("--variant", help="variant subfolder to use when --gates holds several (e.g. chat_energy_optA)"
                   + ("; 'all': every variant (a sweep)" if sweep else ""))
    many = {"nargs": "+"} if sweep else {}
    several = " (several values: a sweep)" if sweep else ""
    cut = p.add_mutually_exclusive_group()
    cut.add_argument("--threshold", type=float, metavar="T", **many,
                     help=f"switch off neurons with sigmoid(logit) < T, 0 < T < 1{several}")
    cut.add_argument("--off-fraction", type=float, metavar="F", **many,
                     help=f"switch off this share of all neurons (global quantile of lambda), 0..1{several}")
    cut.add_argument("--preset", type=_preset if sweep else int, metavar="K", **many,
                     help="use the K-th (1-based) value of the variant's selected_thresholds.txt"
                          + ("; several values or 'all': a sweep" if sweep else ""))
    p.add_argument("--gate-mode", choices=GATE_MODES, default="hard",
                   help="hard: m=1[lambda>=t] (deployment default); soft-masked: m=lambda*1[lambda>=t]; "
                        "soft: m=lambda, no cut")
    p.add_argument("--scale-mode", choices=("auto", "mean", "energy", "none"), default="auto",
                   help="rescaling after gating; auto takes it from gate_stats.json or the folder name")
    p.add_argument("--scale-scope", choices=SCALE_SCOPES, default="layer",
                   help="take the scale statistic per layer (default) or over all neurons")
    p.add_argument("--uniform-width", action="store_true",
                   help="switch off the same number of neurons in every layer, k = round(F x I), its k lowest-lambda "
                        "ones, where F is --off-fraction or what --threshold/--preset gives with the ordinary cut: "
                        "pruned checkpoints without padding, for every runtime; the report says what it changes")


def _preset(text: str) -> int | str:
    if text == ALL:
        return ALL
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a preset number or 'all', got {text!r}") from None


def add_hub_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--base-revision`` / ``--gates-revision`` (used only when --base / --gates are Hub ids)."""
    group = parser.add_argument_group("Hugging Face Hub")
    group.add_argument("--base-revision", metavar="REV", default=None,
                       help="branch, tag or commit of the --base Hub repo (default: main)")
    group.add_argument("--gates-revision", metavar="REV", default=None,
                       help="branch, tag or commit of the --gates Hub repo (default: main)")


def add_provenance_args(parser: argparse.ArgumentParser) -> None:
    """``--base-id`` / ``--gates-id``: the Hub repos local --base / --gates folders are copies of."""
    group = parser.add_argument_group("where local inputs came from (recorded in the manifest and the model card)")
    group.add_argument("--base-id", metavar="REPO[@REV]", type=repo_ref,
                       help="the Hub repo the local --base folder is a copy of (e.g. Qwen/Qwen3-0.6B): the card's "
                            "base_model. REV (a commit) is read from `hf download --local-dir` records when omitted")
    group.add_argument("--gates-id", metavar="REPO[@REV]", type=repo_ref,
                       help="the Hub repo the local --gates folder is a copy of "
                            "(e.g. hyunseoki/qwen3-0.6b-lambda-gates-chat)")


def repo_ref(text: str) -> tuple[str, str | None]:
    """argparse type of ``REPO[@REV]``."""
    repo, at, rev = text.partition("@")
    if "/" not in repo or not is_repo_id(repo) or (at and not rev):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Hub repo id with an optional revision; "
                                         "expected OWNER/NAME or OWNER/NAME@REVISION")
    return repo, rev or None


def cut_from_args(args: argparse.Namespace) -> Cut:
    if args.threshold is not None:
        return Cut("threshold", args.threshold)
    if args.off_fraction is not None:
        return Cut("off_fraction", args.off_fraction)
    if args.preset is not None:
        return Cut("preset", args.preset)
    return Cut("none")


def scale_mode_from_args(args: argparse.Namespace, variant: GateVariant) -> tuple[str, str]:
    """The scale mode and where it came from ('user', 'gate_stats.json', 'folder name')."""
    if args.scale_mode != "auto":
        return args.scale_mode, "user"
    if variant.scale_mode is None:
        raise CutError(
            f"cannot tell the scale mode of variant {variant.name!r}: its folder name and gate_stats.json "
            "do not say; pass --scale-mode mean, energy or none"
        )
    return variant.scale_mode, variant.scale_mode_source


def settings_from_args(args: argparse.Namespace, variant: GateVariant, cut: Cut | None = None
                       ) -> tuple[GateSettings, str]:
    """The gate settings (for ``cut``, default: the one on the command line) and the scale mode's source."""
    scale_mode, source = scale_mode_from_args(args, variant)
    rule = "uniform" if getattr(args, "uniform_width", False) else "threshold"
    return GateSettings(cut or cut_from_args(args), args.gate_mode, scale_mode, args.scale_scope, rule), source


def load_base(args: argparse.Namespace) -> tuple[BaseModel, dict[str, Any]]:
    """Resolve --base (a local folder or a Hub id) and open it; also the manifest's record of where it came from."""
    progress = not getattr(args, "quiet", False)
    base_dir = resolve_base(str(args.base), getattr(args, "base_revision", None), progress=progress)
    sources = {"base": str(args.base), "base_revision": base_dir.name} if base_dir != Path(args.base) else {}
    if getattr(args, "base_id", None):
        sources = {"base": args.base_id[0], "base_revision": args.base_id[1]}
    return open_base_model(base_dir), sources


def load_gates(args: argparse.Namespace, base: BaseModel, variant: str | None) -> tuple[GateVariant, dict[str, Any]]:
    """Resolve --gates and load ``variant``'s gates, checked against the base; also where they came from."""
    refuse_ragged_base(base)
    gates_dir = resolve_gates(str(args.gates), variant, getattr(args, "gates_revision", None))
    gv = load_variant(gates_dir, variant, num_layers=base.num_layers, intermediate_size=base.intermediate_size)
    sources = {"gates": str(args.gates), "gates_revision": gates_dir.name} if gates_dir != Path(args.gates) else {}
    if getattr(args, "gates_id", None):
        sources = {"gates": args.gates_id[0], "gates_revision": args.gates_id[1]}
    return gv, sources


def load_base_and_gates(args: argparse.Namespace) -> tuple[BaseModel, GateVariant, dict[str, Any]]:
    """Resolve --base/--gates (local folders or Hub ids), open the base and load the variant's gates.

    Also returns the sources for the manifest: Hub ids with the resolved commit, or local paths.
    """
    model, base_sources = load_base(args)
    gv, gate_sources = load_gates(args, model, args.variant)
    return model, gv, base_sources | gate_sources


def export_layout(args: argparse.Namespace, own: str) -> str:
    """The layout an export of this bake takes: a ragged bake exports ragged; else the export's own --*-layout."""
    return "ragged" if args.layout == "ragged" else own


def check_gguf_layout(args: argparse.Namespace, base: BaseModel) -> None:
    """``bake --gguf`` (one cut or a sweep): a GGUF layout llama.cpp cannot hold for this base is refused before
    anything is baked. (The base itself is never ragged here: ``load_gates`` refuses that.)"""
    if args.gguf:
        from export.gguf.writer import check_expressible

        check_expressible(base.config, export_layout(args, args.gguf_layout))


def format_layer_counts(counts: list[int], total: int) -> str:
    return " ".join(f"{c}" for c in counts) + f"  (of {total} each)"


