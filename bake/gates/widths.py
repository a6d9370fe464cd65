"""What a cut leaves per layer, in the three layouts: each layer's width (the pruned layout's one padded width, the
ragged layout's own padded widths), the padding, and the parameter counts, bytes and MLP FLOPs per token of each."""

from __future__ import annotations

from typing import Any


def layout_sizes(total_params: int, hidden: int, intermediate: int, kept_per_layer: list[int], multiple: int,
                 itemsize: int | None = None, fixed_bytes: int | None = None) -> dict[str, Any]:
    """Counts for each layout at pad multiple ``multiple``; MLP FLOPs are 2 (multiply-add) x 3 matrices x hidden x
    width per layer. ``exact`` is the cut with no padding at all (``--layout ragged --pad-multiple 1``).
    ``weight_bytes`` (the tensor data of the safetensors files) when ``itemsize``, the bytes of an MLP weight, and
    ``fixed_bytes``, those of every other tensor, are given."""
    layers = len(kept_per_layer)
    padded = padded_width(kept_per_layer, multiple)
    widths = ragged_widths(kept_per_layer, multiple)

    def entry(width_sum: int) -> dict[str, int]:
        params = total_params - 3 * hidden * (layers * intermediate - width_sum)
        return {
            "params": params,
            "mlp_params": 3 * hidden * width_sum,
            "mlp_flops_per_token": 2 * 3 * hidden * width_sum,
            "mlp_neurons": width_sum,
        } | ({"weight_bytes": fixed_bytes + 3 * hidden * width_sum * itemsize}
             if itemsize is not None and fixed_bytes is not None else {})

    out = {
        "dense": entry(layers * intermediate),
        "pruned": entry(layers * padded) | {"intermediate_size": padded},
        "ragged": entry(sum(widths)) | {"widths": widths},
        "exact": entry(sum(kept_per_layer)) | {"widths": list(kept_per_layer)},
        "pad_multiple": multiple,
    }
    out["pruned_padding_overhead"] = padding_overhead(kept_per_layer, layers * padded)
    out["ragged_padding_overhead"] = padding_overhead(kept_per_layer, sum(widths))
    return out


def padding_overhead(kept_per_layer: list[int], neurons: int) -> float | None:
    """Zero neurons a layout of ``neurons`` MLP neurons adds, as a share of the neurons kept (None when none is)."""
    kept = sum(kept_per_layer)
    return (neurons - kept) / kept if kept else None


def padded_width(kept_per_layer: list[int], multiple: int) -> int:
    """Common width for a stock config: the widest layer's kept count rounded up to ``multiple``.

    Never 0: a model whose every layer lost every neuron still gets ``multiple`` zero neurons.
    """
    if multiple < 1:
        raise ValueError("pad multiple must be >= 1")
    widest = max(kept_per_layer) if kept_per_layer else 0
    return ragged_width(widest, multiple)


def ragged_width(kept: int, multiple: int) -> int:
    """``kept`` neurons rounded up to a whole number of ``multiple``-neuron blocks, one block at least: a layer with
    nothing left keeps one block of zero neurons, which adds exactly 0 and loads in every engine (a zero-width
    matmul does not: llama.cpp asserts, vLLM's weight loader and mlx-lm's openelm refuse it)."""
    multiple = max(int(multiple), 1)
    return max(multiple, -(-kept // multiple) * multiple)


def ragged_widths(kept_per_layer: list[int], multiple: int) -> list[int]:
    """Each layer's width in the ragged layout: its kept neurons rounded up to ``multiple``."""
    return [ragged_width(k, multiple) for k in kept_per_layer]
