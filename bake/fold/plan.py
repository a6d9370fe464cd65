"""Plan a bake: apply the cut, decide every output tensor and shape, before a byte is written.

The plan is cheap (headers and gate math only), so ``inspect`` and the sweep use it to check every
cut up front. ``BakePlan.tensors`` lists the output tensors lazily: untouched tensors are copied as
raw bytes, MLP tensors are folded (``bake.fold.weights``) in float32 and rounded once, block by block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from bake.errors import BaseModelError, CutError, GateFileError, OutputError
from bake.fold.weights import convert_rows, fold_down_proj, kept_neurons, prune_down_proj, prune_in_proj
from bake.gates.gate_math import GateResult, GateSettings, compute_gates
from bake.gates.variant import GateVariant
from bake.gates.widths import layout_sizes, padded_width, ragged_widths
from bake.io.base_model import PER_LAYER_CONFIG, BaseModel
from bake.io.dtypes import BY_NAME, COMPUTE_DTYPES, DType
from bake.io.tensor_io import OutTensor, numel, row_reader

Layout = Literal["dense", "pruned", "ragged"]
LAYOUTS: tuple[str, ...] = ("dense", "pruned", "ragged")
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
    out_dtype: DType
    widths: list[int]  # each layer's MLP width in the written checkpoint
    sizes: dict[str, Any]
    keep: list[np.ndarray] = field(default_factory=list)

    @property
    def width(self) -> int:
        """The config's global ``intermediate_size``: the widest layer (every layer, but in the ragged layout)."""
        return max(self.widths)

    @property
    def dtype_name(self) -> str:
        return self.out_dtype.name

    def tensors(self) -> list[OutTensor]:
        """The output tensors in the base checkpoint's order, each produced lazily."""
        return [self._out_tensor(name) for name in self.base.reader.names()]

    def _out_tensor(self, name: str) -> OutTensor:
        info = self.base.reader.tensors[name]
        dst, s, read = self.out_dtype, self.gates.scale, row_reader(info)
        match = _MLP.match(name)
        if match and (match.group(2) == "down_proj" or self.options.layout != "dense"):
            layer, proj = int(match.group(1)), match.group(2)
            shape = info.shape
            if self.options.layout == "dense":
                return OutTensor(name, dst, shape, lambda: fold_down_proj(read, shape, s[layer], info.dtype, dst))
            keep, width = self.keep[layer], self.widths[layer]
            if proj == "down_proj":
                return OutTensor(name, dst, (shape[0], width),
                                 lambda: prune_down_proj(read, shape, s[layer], keep, width, info.dtype, dst))
            return OutTensor(name, dst, (width, shape[1]),
                             lambda: prune_in_proj(read, shape, keep, width, info.dtype, dst))
        if info.dtype == dst or not info.dtype.floating:
            return OutTensor(name, info.dtype, info.shape, copy_from=info)
        if not info.dtype.computable:
            raise BaseModelError(f"{info.file}: tensor {name} is {info.dtype.name}, which lambda-bake cannot "
                                 f"convert to {dst.name}; bake with --dtype auto to keep the checkpoint's dtypes")
        return OutTensor(name, dst, info.shape, lambda: convert_rows(read, info.shape, info.dtype, dst))


def resolve_dtype(name: str, base: BaseModel) -> DType:
    if name == "auto":
        return base.dtype
    if name not in COMPUTE_DTYPES:
        raise CutError(f"unknown --dtype {name!r}; choose auto, {', '.join(COMPUTE_DTYPES)}")
    return BY_NAME[name]


def plan_bake(base: BaseModel, variant: GateVariant, settings: GateSettings, options: BakeOptions) -> BakePlan:
    """Apply the cut and decide every output shape; refuse a cut that switches off everything."""
    if options.layout not in LAYOUTS:
        raise OutputError(f"unknown layout {options.layout!r}: choose one of {', '.join(LAYOUTS)}")
    if options.pad_multiple < 1:
        raise OutputError(f"--pad-multiple must be a positive integer, got {options.pad_multiple}")
    check_gate_shape(base, variant)
    gates = compute_gates(variant.logits, settings, variant.selected_thresholds)
    kept = gates.kept_per_layer
    if sum(kept) == 0 and not options.allow_all_off:
        raise CutError(
            f"the cut ({settings.cut.describe()}, threshold {gates.threshold}) switches off every neuron of every "
            "layer: the MLPs would add nothing. Choose a lower threshold/off-fraction, or pass --allow-all-off"
        )
    widths = {"dense": [base.intermediate_size] * base.num_layers,
              "pruned": [padded_width(kept, options.pad_multiple)] * base.num_layers,
              "ragged": ragged_widths(kept, options.pad_multiple)}[options.layout]
    keep = [kept_neurons(gates.scale[i]) for i in range(base.num_layers)] if options.layout != "dense" else []
    plan = BakePlan(base, variant, settings, gates, options, resolve_dtype(options.dtype, base), widths, {}, keep)
    tensors = plan.tensors()  # refuses a tensor it cannot convert now, not halfway through writing
    total_params = sum(numel(i.shape) for i in base.reader.tensors.values())
    fixed_bytes = sum(t.nbytes for t in tensors if not _MLP.match(t.name))
    plan.sizes = layout_sizes(total_params, base.hidden_size, base.intermediate_size, kept, options.pad_multiple,
                              plan.out_dtype.itemsize, fixed_bytes)
    return plan


def refuse_ragged_base(base: BaseModel) -> None:
    """A ragged bake cannot be a base: the gates cover every neuron of the model they were trained on."""
    if base.ragged:
        raise BaseModelError(
            f"{base.folder} has its own MLP width in each layer ({PER_LAYER_CONFIG} in its config.json): it is a "
            "ragged bake, not a base; give --base the model the gates were trained on"
        )


def check_gate_shape(base: BaseModel, variant: GateVariant) -> None:
    refuse_ragged_base(base)
    if tuple(variant.logits.shape) != (base.num_layers, base.intermediate_size):
        raise GateFileError(
            f"gates {variant.gate_file} have shape {list(variant.logits.shape)} but {base.folder} has "
            f"{base.num_layers} layers x {base.intermediate_size} neurons; these gates were trained for a "
            "different model"
        )
