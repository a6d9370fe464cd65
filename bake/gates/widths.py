"""What a cut leaves per layer, in the three layouts: the pruned layout's padded width, its padding, and the
parameter counts and MLP FLOPs per token of dense, pruned and ragged."""

from __future__ import annotations

from typing import Any


def layout_sizes(
    total_params: int, hidden: int, intermediate: int, kept_per_layer: list[int], padded: int
) -> dict[str, Any]:
    """Counts for each layout; MLP FLOPs are 2 (multiply-add) x 3 matrices x hidden x width per layer."""
    layers = len(kept_per_layer)
    kept = sum(kept_per_layer)

    def entry(width_sum: int) -> dict[str, int]:
        return {
            "params": total_params - 3 * hidden * (layers * intermediate - width_sum),
            "mlp_params": 3 * hidden * width_sum,
            "mlp_flops_per_token": 2 * 3 * hidden * width_sum,
            "mlp_neurons": width_sum,
        }

    out = {
        "dense": entry(layers * intermediate),
        "pruned": entry(layers * padded) | {"intermediate_size": padded},
        "ragged": entry(kept) | {"widths": list(kept_per_layer)},
    }
    out["pruned_padding_overhead"] = padding_overhead(kept_per_layer, padded)
    return out


def padding_overhead(kept_per_layer: list[int], padded: int) -> float | None:
    """Zero neurons the pruned layout adds, as a share of the neurons kept (None when none is kept)."""
    kept = sum(kept_per_layer)
    return (len(kept_per_layer) * padded - kept) / kept if kept else None


def padded_width(kept_per_layer: list[int], multiple: int) -> int:
    """Common width for a stock config: the widest layer's kept count rounded up to ``multiple``.

    Never 0: a model whose every layer lost every neuron still gets ``multiple`` zero neurons.
    """
    if multiple < 1:
        raise ValueError("pad multiple must be >= 1")
    widest = max(kept_per_layer) if kept_per_layer else 0
    return max(multiple, -(-widest // multiple) * multiple)
