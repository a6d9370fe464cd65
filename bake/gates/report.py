"""What gate variants hold and what each threshold does: the numbers ``inspect`` prints, reports and plots.

``inspect_report`` is the one source of these numbers: ``inspect --json`` prints its result and
``inspect --plot`` draws that same dict (``bake.plots.figure.inspect_figure``), so the picture and the JSON
cannot disagree. Everything in it is a plain JSON type.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bake.gates.gate_math import Cut, GateSettings, compute_gates, gate_values
from bake.gates.variant import GateVariant
from bake.gates.widths import padded_width, padding_overhead

# Per-layer quantiles of lambda in the report: the 5-95 % and 25-75 % bands and the median.
LAMBDA_QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)


def inspect_report(variants: list[GateVariant], pad_multiple: int, extra: list[float]) -> dict[str, Any]:
    """``{"variants": [...]}``: one ``describe_variant`` entry per variant, in the order given."""
    return {"variants": [describe_variant(v, pad_multiple, extra) for v in variants]}


def describe_variant(v: GateVariant, pad_multiple: int, extra: list[float]) -> dict[str, Any]:
    """Statistics, lambda quantiles per layer and, per threshold, the achieved off-fraction and pruned widths.

    The thresholds are the variant's selected ones (``preset K``) followed by ``extra``.
    """
    lam = gate_values(v.logits)
    candidates = [(f"preset {i + 1}", t) for i, t in enumerate(v.selected_thresholds)]
    candidates += [(f"threshold {t:g}", t) for t in extra]
    return {
        "variant": v.name, "gate_file": str(v.gate_file), "sha256": v.sha256,
        "num_layers": v.num_layers, "intermediate_size": v.intermediate_size, "num_neurons": int(lam.size),
        "sigmoid_mean": float(lam.mean()), "sigmoid_std": float(lam.std(ddof=1)),
        "sigmoid_min": float(lam.min()), "sigmoid_max": float(lam.max()),
        "scale_mode": v.scale_mode, "scale_mode_source": v.scale_mode_source,
        "knowledge_neurons_listed": v.knowledge_neurons, "below_0_5": int((lam < 0.5).sum()),
        "lambda_quantiles": lambda_quantiles(lam),
        "pad_multiple": pad_multiple,
        "thresholds": [describe_threshold(v, label, t, pad_multiple) for label, t in candidates],
    }


def describe_threshold(v: GateVariant, label: str, threshold: float, pad_multiple: int) -> dict[str, Any]:
    """What a hard cut at ``threshold`` switches off, per layer, and the pruned layout it gives."""
    g = compute_gates(v.logits, GateSettings(Cut("threshold", threshold), "hard", "none"))
    kept = g.kept_per_layer
    width = padded_width(kept, pad_multiple)
    return {
        "label": label, "threshold": threshold, "off_fraction": g.off_fraction,
        "off_per_layer": g.off_per_layer,
        "off_share_per_layer": [n / v.intermediate_size for n in g.off_per_layer],
        "kept_per_layer": kept, "pruned_width": width,
        "padding_neurons": v.num_layers * width - sum(kept),
        "padding_overhead": padding_overhead(kept, width),
    }


def lambda_quantiles(lam: np.ndarray) -> dict[str, Any]:
    """``{"levels": LAMBDA_QUANTILES, "per_layer": [[q at each level] for each layer]}`` of [L, I] lambda."""
    q = np.quantile(lam, LAMBDA_QUANTILES, axis=1)  # [levels, L], linear interpolation as torch.quantile
    return {"levels": list(LAMBDA_QUANTILES), "per_layer": q.T.tolist()}
