"""The ``ragged`` layout in Python: an in-memory Qwen3 whose MLPs each keep exactly their own neurons.

A stock Qwen3 config has one ``intermediate_size``, so this model cannot be saved as a standard
checkpoint; use it for experiments, or export ragged widths to ONNX (``lambda-bake export
--layout ragged``), where each layer's width is free.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .base_model import mlp_name, open_base_model
from .fold import kept_neurons, prune_down_proj, prune_in_proj


def build_ragged_model(base_dir: Path, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load the base with transformers and replace each MLP's Linears by ones of the layer's kept width."""
    from transformers import AutoModelForCausalLM

    base = open_base_model(base_dir)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype)
    model.eval()
    for i, layer in enumerate(model.model.layers):
        s = scale[i]
        keep = kept_neurons(s)
        width = keep.numel()
        mlp = layer.mlp
        reader = base.reader
        weights = {
            "gate_proj": prune_in_proj(reader.tensor(mlp_name(i, "gate_proj")), keep, width, dtype),
            "up_proj": prune_in_proj(reader.tensor(mlp_name(i, "up_proj")), keep, width, dtype),
            "down_proj": prune_down_proj(reader.tensor(mlp_name(i, "down_proj")), s, keep, width, dtype),
        }
        for name, w in weights.items():
            with warnings.catch_warnings():  # a layer that lost every neuron has a zero-width Linear
                warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
                linear = torch.nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0], bias=False, dtype=dtype)
            linear.weight.data.copy_(w)
            setattr(mlp, name, linear)
        mlp.intermediate_size = width
    return model
