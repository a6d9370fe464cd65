"""The bake job: plan the output tensors from base + gates, then stream them into a checkpoint.

The plan is cheap (headers and gate math only), so ``inspect`` uses it to show what a layout would
give without writing anything. Writing streams one tensor at a time: untouched tensors are copied
as raw bytes, MLP tensors are folded (``bake.fold``) in float32 and rounded once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from .atomic import atomic_output_dir
from .base_model import DTYPE_NAMES, BaseModel, open_base_model
from .checkpoint_writer import carry_base_files, write_config, write_weights
from .errors import CutError, GateFileError, OutputError, VerificationFailed
from .fold import fold_down_proj, kept_neurons, padded_width, prune_down_proj, prune_in_proj
from .gate_math import GateResult, GateSettings, compute_gates
from .gates import GateVariant
from .manifest import MANIFEST_NAME, build_manifest
from .model_card import write_model_card
from .sizes import layout_sizes
from .tensor_io import OutTensor, parse_size

Layout = Literal["dense", "pruned"]
LAYOUTS: tuple[str, ...] = ("dense", "pruned")
DEFAULT_PAD_MULTIPLE = 64
_MLP = re.compile(r"^model\.layers\.(\d+)\.mlp\.(gate_proj|up_proj|down_proj)\.weight$")


@dataclass
class BakeOptions:
    """How to write the bake (everything that is not the gate math)."""

    layout: Layout = "dense"
    dtype: str = "auto"
    pad_multiple: int = DEFAULT_PAD_MULTIPLE
    max_shard_size: str | int = "5GB"
    allow_all_off: bool = False
    overwrite: bool = False
    progress: bool = True


@dataclass
class BakePlan:
    """Everything decided before a byte is written."""

    base: BaseModel
    variant: GateVariant
    settings: GateSettings
    gates: GateResult
    options: BakeOptions
    out_dtype: torch.dtype
    width: int  # intermediate_size of the written checkpoint
    sizes: dict[str, Any]
    keep: list[torch.Tensor] = field(default_factory=list)

    @property
    def dtype_name(self) -> str:
        return next(k for k, v in DTYPE_NAMES.items() if v == self.out_dtype)

    def tensors(self) -> list[OutTensor]:
        """The output tensors in the base checkpoint's order, each produced lazily."""
        return [self._out_tensor(name) for name in self.base.reader.names()]

    def _out_tensor(self, name: str) -> OutTensor:
        info = self.base.reader.tensors[name]
        reader, dtype, s = self.base.reader, self.out_dtype, self.gates.scale
        match = _MLP.match(name)
        if match and (match.group(2) == "down_proj" or self.options.layout == "pruned"):
            layer, proj = int(match.group(1)), match.group(2)
            if self.options.layout == "dense":
                return OutTensor(name, dtype, info.shape, lambda: fold_down_proj(reader.tensor(name), s[layer], dtype))
            keep, width = self.keep[layer], self.width
            if proj == "down_proj":
                return OutTensor(name, dtype, (info.shape[0], width),
                                 lambda: prune_down_proj(reader.tensor(name), s[layer], keep, width, dtype))
            return OutTensor(name, dtype, (width, info.shape[1]),
                             lambda: prune_in_proj(reader.tensor(name), keep, width, dtype))
        if info.dtype == dtype or not info.dtype.is_floating_point:
            return OutTensor(name, info.dtype, info.shape, copy_from=info)
        return OutTensor(name, dtype, info.shape, lambda: reader.tensor(name).to(dtype))


def resolve_dtype(name: str, base: BaseModel) -> torch.dtype:
    if name == "auto":
        return base.dtype
    if name not in DTYPE_NAMES:
        raise CutError(f"unknown --dtype {name!r}; choose auto, {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[name]


def plan_bake(base: BaseModel, variant: GateVariant, settings: GateSettings, options: BakeOptions) -> BakePlan:
    """Apply the cut and decide every output shape; refuse a cut that switches off everything."""
    if options.layout not in LAYOUTS:
        raise OutputError(
            f"unknown layout {options.layout!r}: checkpoints are dense or pruned; ragged widths exist only "
            "as an ONNX export (lambda-bake export --layout ragged) or in Python (bake.ragged)"
        )
    if options.pad_multiple < 1:
        raise OutputError(f"--pad-multiple must be a positive integer, got {options.pad_multiple}")
    gates = compute_gates(variant.logits, settings, variant.selected_thresholds)
    kept = gates.kept_per_layer
    if sum(kept) == 0 and not options.allow_all_off:
        raise CutError(
            f"the cut ({settings.cut.describe()}, threshold {gates.threshold}) switches off every neuron of every "
            "layer: the MLPs would add nothing. Choose a lower threshold/off-fraction, or pass --allow-all-off"
        )
    padded = padded_width(kept, options.pad_multiple)
    total_params = sum(_numel(i.shape) for i in base.reader.tensors.values())
    sizes = layout_sizes(total_params, base.hidden_size, base.intermediate_size, kept, padded)
    width = padded if options.layout == "pruned" else base.intermediate_size
    keep = [kept_neurons(gates.scale[i]) for i in range(base.num_layers)] if options.layout == "pruned" else []
    return BakePlan(base, variant, settings, gates, options, resolve_dtype(options.dtype, base), width, sizes, keep)


def bake_checkpoint(
    base_dir: Path,
    variant: GateVariant,
    settings: GateSettings,
    out_dir: Path,
    options: BakeOptions | None = None,
    sources: dict[str, Any] | None = None,
    check: Callable[[Path], dict[str, Any]] | None = None,
    extras: Callable[[Path], list[str]] | None = None,
) -> dict[str, Any]:
    """Bake ``variant`` into ``base_dir`` and write a complete checkpoint to ``out_dir`` atomically.

    Returns the manifest (also written as ``bake_manifest.json``). ``sources`` records where base
    and gates came from (Hub ids, revisions) for the manifest; local paths are used otherwise.
    ``extras`` (e.g. the ONNX export) adds files to the temporary folder and returns their relative
    names. ``check`` (e.g. the verifier) runs on the finished temporary folder before it is moved into
    place; its report is stored in the manifest and the card, and a failed check
    (``report["passed"]`` false) raises ``VerificationFailed`` with nothing written.
    """
    options = options or BakeOptions()
    base = open_base_model(base_dir)
    _check_gate_shape(base, variant)
    plan = plan_bake(base, variant, settings, options)
    with atomic_output_dir(Path(out_dir), options.overwrite, inputs=(base.folder, variant.folder)) as tmp:
        files = write_weights(tmp, plan.tensors(), parse_size(options.max_shard_size), options.progress)
        write_config(tmp, base.config, intermediate_size=plan.width, dtype_name=plan.dtype_name)
        files += ["config.json"] + carry_base_files(base.folder, tmp)
        manifest = build_manifest(plan, sources or {}, sorted(files + [MANIFEST_NAME, "README.md"]))
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        if extras is not None:
            manifest["files"] = sorted(manifest["files"] + extras(tmp))
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        if check is not None:
            manifest["verification"] = check(tmp)
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        write_model_card(tmp, manifest, base.folder)
        if check is not None and not manifest["verification"]["passed"]:
            raise VerificationFailed(
                "the bake does not match the hooked model; nothing was written. Failures: "
                + "; ".join(f"{c['name']}: {', '.join(c['failures'])}"
                            for c in manifest["verification"]["candidates"] if not c["passed"])
            )
    return manifest


def _check_gate_shape(base: BaseModel, variant: GateVariant) -> None:
    if tuple(variant.logits.shape) != (base.num_layers, base.intermediate_size):
        raise GateFileError(
            f"gates {variant.gate_file} have shape {list(variant.logits.shape)} but {base.folder} has "
            f"{base.num_layers} layers x {base.intermediate_size} neurons; these gates were trained for a "
            "different model"
        )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
