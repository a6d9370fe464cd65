"""The hooked reference: the unmodified base model with a pre-hook on every ``down_proj``.

This is how the gates are used at training time, and the yardstick every bake is checked against.
It deliberately shares nothing with the fold/prune/write path: it loads the base checkpoint with
plain ``transformers`` and multiplies the input of ``down_proj`` by ``s`` at run time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def streamed_hooked_model(base_dir: Path, scale: torch.Tensor | np.ndarray) -> nn.Module:
    """The hooked reference in float32 holding one decoder layer at a time: the base's tensors read with the
    ``safetensors`` library as each layer runs, widened to float32 exactly, through transformers' own Qwen3
    modules (``bake.verify.tensor_model``), with the same gate hooks. Its logits equal ``load_hooked_model``'s
    (tests); its memory is the embedding plus one layer, whatever the model's size."""
    from bake.verify.tensor_model import bake_layers, qwen3_model
    from bake.verify.weights.bake_tensors import BakeFolder

    base = BakeFolder(base_dir)
    model = qwen3_model(base.config, bake_layers(base))
    attach_gate_hooks(model, scale)
    return model


FLOAT16_MAX = 65504.0


@dataclass
class ActivationRange:
    """The largest magnitudes a model's activations reach while it runs (``record_activation_range``): the
    residual stream (each decoder layer's output) and the MLP's inner activations (``down_proj``'s input before
    the gate scale: what a bake computes, its scale being folded into the weights, off neurons included in the
    dense layout), each with the layer where it peaks. float16 holds magnitudes up to 65,504 only."""

    hidden_max: float = 0.0
    hidden_layer: int | None = None
    mlp_max: float = 0.0
    mlp_layer: int | None = None
    handles: list[Any] = field(default_factory=list, repr=False)

    def seen(self, kind: str, layer: int, x: torch.Tensor) -> None:
        peak = float(x.detach().abs().amax()) if x.numel() else 0.0
        if peak > getattr(self, f"{kind}_max") or peak != peak:  # NaN: already beyond every range
            setattr(self, f"{kind}_max", peak)
            setattr(self, f"{kind}_layer", layer)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def float16_headroom(self) -> dict[str, Any]:
        """The peaks against float16's largest finite value, and whether a float16 export is at risk."""
        peaks = (self.hidden_max, self.mlp_max)
        peak = math.inf if any(math.isnan(p) for p in peaks) else max(peaks)  # NaN: the float32 run itself broke
        share = peak / FLOAT16_MAX
        verdict = "overflows" if share >= 1 else "tight" if share >= 0.25 else "fits"
        return {"hidden_max_abs": self.hidden_max, "hidden_layer": self.hidden_layer, "mlp_max_abs": self.mlp_max,
                "mlp_layer": self.mlp_layer, "float16_max": FLOAT16_MAX, "share_of_float16_max": share,
                "float16": verdict}


def record_activation_range(model: nn.Module) -> ActivationRange:
    """Hook ``model`` (a transformers Qwen3 with the gate pre-hooks already attached) so that every forward pass
    updates the returned range; ``remove()`` takes the hooks off."""
    rng = ActivationRange()
    for i, layer in enumerate(model.model.layers):
        def after_layer(module: nn.Module, args: Any, out: Any, i: int = i) -> None:
            rng.seen("hidden", i, out[0] if isinstance(out, tuple) else out)

        def mlp_inner(module: nn.Module, args: tuple[torch.Tensor, ...], i: int = i) -> None:
            rng.seen("mlp", i, args[0])

        rng.handles.append(layer.register_forward_hook(after_layer))
        rng.handles.append(layer.mlp.down_proj.register_forward_pre_hook(mlp_inner, prepend=True))  # before the scale
    return rng
