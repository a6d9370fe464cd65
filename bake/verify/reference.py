"""The hooked reference: the unmodified base model with a pre-hook on every ``down_proj``.

This is how the gates are used at training time, and the yardstick every bake is checked against.
It deliberately shares nothing with the fold/prune/write path: it loads the base checkpoint with
plain ``transformers`` and multiplies the input of ``down_proj`` by ``s`` at run time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


def attach_gate_hooks(model: nn.Module, scale: torch.Tensor | np.ndarray) -> list[torch.utils.hooks.RemovableHandle]:
    """Register ``down_proj`` forward pre-hooks multiplying the input by ``scale[layer]`` ([L, I])."""
    scale = torch.as_tensor(scale)
    layers = model.model.layers
    if scale.shape[0] != len(layers):
        raise ValueError(f"scale has {scale.shape[0]} layers, the model {len(layers)}")
    handles = []
    for i, layer in enumerate(layers):
        s = scale[i].detach().clone()

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], s: torch.Tensor = s) -> tuple[torch.Tensor, ...]:
            (h,) = args
            return (h * s.to(device=h.device, dtype=h.dtype),)

        handles.append(layer.mlp.down_proj.register_forward_pre_hook(hook))
    return handles


def load_hooked_model(base_dir: Path, scale: torch.Tensor | np.ndarray, dtype: torch.dtype = torch.float32
                      ) -> nn.Module:
    """Load the base with ``AutoModelForCausalLM`` in ``dtype`` and attach the gate hooks."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype)
    model.eval()
    attach_gate_hooks(model, scale)
    return model
