"""Parameter counts and MLP FLOPs per token for the dense, pruned and ragged layouts."""

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
