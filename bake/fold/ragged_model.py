"""The ``ragged`` layout in Python: an in-memory Qwen3 whose MLPs each keep exactly their own neurons.

A stock Qwen3 config has one ``intermediate_size``, so this model cannot be saved as a standard
checkpoint; use it for experiments, or export ragged widths to ONNX (``lambda-bake export
--layout ragged``), where each layer's width is free.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bake.fold.weights import gather, kept_neurons, prune_down_proj, prune_in_proj
from bake.io.base_model import mlp_name, open_base_model
from bake.io.dtypes import BY_NAME
from bake.io.tensor_io import row_reader


def build_ragged_model(base_dir: Path, scale: torch.Tensor | np.ndarray, dtype: torch.dtype = torch.float32
                       ) -> nn.Module:
    """Load the base with transformers and replace each MLP's Linears by ones of the layer's kept width."""
    from transformers import AutoModelForCausalLM

    base = open_base_model(base_dir)
    scale = np.asarray(scale, dtype=np.float32)
    dst = BY_NAME[str(dtype).removeprefix("torch.")]
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype)
    model.eval()
    for i, layer in enumerate(model.model.layers):
        s = scale[i]
        keep = kept_neurons(s)
        width = keep.size
        gate, up, down = (base.reader.tensors[mlp_name(i, p)] for p in ("gate_proj", "up_proj", "down_proj"))
        weights = {
            name: gather(prune_in_proj(row_reader(w), w.shape, keep, width, w.dtype, dst), (width, w.shape[1]), dst)
            for name, w in (("gate_proj", gate), ("up_proj", up))
        }
        weights["down_proj"] = gather(prune_down_proj(row_reader(down), down.shape, s, keep, width, down.dtype, dst),
                                      (down.shape[0], width), dst)
        mlp = layer.mlp
        for name, w in weights.items():
            with warnings.catch_warnings():  # a layer that lost every neuron has a zero-width Linear
                warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
                linear = torch.nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0], bias=False, dtype=dtype)
            linear.weight.data.copy_(torch.from_numpy(w).view(dtype))
            setattr(mlp, name, linear)
        mlp.intermediate_size = width
    return model
