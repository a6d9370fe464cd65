"""Fold the gate scale into MLP weights: dense (scale columns) and pruned (drop neurons, pad).

``down_proj(h * s) == (W_down * s[None, :]) @ h``. Every function computes in float32 and rounds
once to the output dtype. ``s`` comes from ``bake.gate_math``; nothing here decides which neuron
is off beyond ``s == 0``.
"""

from __future__ import annotations

import torch


def fold_down_proj(w_down: torch.Tensor, s: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """Dense fold: column j of ``down_proj.weight`` [H, I] times ``s_j``."""
    return (w_down.to(torch.float32) * s.to(torch.float32)[None, :]).to(out_dtype)


def kept_neurons(s: torch.Tensor) -> torch.Tensor:
    """Indices (ascending) of the neurons of one layer whose scale is non-zero."""
    return torch.nonzero(s != 0, as_tuple=False).reshape(-1)


def padded_width(kept_per_layer: list[int], multiple: int) -> int:
    """Common width for a stock config: the widest layer's kept count rounded up to ``multiple``.

    Never 0: a model whose every layer lost every neuron still gets ``multiple`` zero neurons.
    """
    if multiple < 1:
        raise ValueError("pad multiple must be >= 1")
    widest = max(kept_per_layer) if kept_per_layer else 0
    return max(multiple, -(-widest // multiple) * multiple)


def prune_in_proj(w: torch.Tensor, keep: torch.Tensor, width: int, out_dtype: torch.dtype) -> torch.Tensor:
    """gate_proj/up_proj [I, H]: keep rows ``keep`` (in order), then zero rows up to ``width``."""
    out = torch.zeros((width, w.shape[1]), dtype=out_dtype)
    out[: keep.numel()] = w[keep].to(out_dtype)
    return out


def prune_down_proj(
    w_down: torch.Tensor, s: torch.Tensor, keep: torch.Tensor, width: int, out_dtype: torch.dtype
) -> torch.Tensor:
    """down_proj [H, I]: keep columns ``keep`` scaled by ``s``, then zero columns up to ``width``."""
    out = torch.zeros((w_down.shape[0], width), dtype=out_dtype)
    out[:, : keep.numel()] = (w_down[:, keep].to(torch.float32) * s[keep].to(torch.float32)[None, :]).to(out_dtype)
    return out
