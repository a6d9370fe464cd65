"""What gate variants hold and what each threshold does: the numbers ``inspect`` prints, reports and plots.

``inspect_report`` is the one source of these numbers: ``inspect --json`` prints its result and
``inspect --plot`` draws that same dict (``bake.plots.figure.inspect_figure``), so the picture and the JSON
cannot disagree. Everything in it is a plain JSON type.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bake.gates.gate_math import Cut, GateResult, GateSettings, compute_gates, gate_values
from bake.gates.variant import GateVariant
from bake.gates.widths import padded_width, padding_overhead, ragged_widths

# Per-layer quantiles of lambda in the report: the 5-95 % and 25-75 % bands and the median.
LAMBDA_QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)


def inspect_report(variants: list[GateVariant], pad_multiple: int, extra: list[float], uniform: bool = False
                   ) -> dict[str, Any]:
    """``{"variants": [...]}``: one ``describe_variant`` entry per variant, in the order given."""
    return {"variants": [describe_variant(v, pad_multiple, extra, uniform) for v in variants]}


def describe_variant(v: GateVariant, pad_multiple: int, extra: list[float], uniform: bool = False) -> dict[str, Any]:
    """Statistics, lambda quantiles per layer and, per threshold, the achieved off-fraction and pruned widths.

    The thresholds are the variant's selected ones (``preset K``) followed by ``extra``. With ``uniform``,
    each threshold's row also holds the uniform-width cut at the same off-fraction (``uniform_cut``).
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
        "thresholds": [describe_threshold(v, label, t, pad_multiple, uniform) for label, t in candidates],
    }


def describe_threshold(v: GateVariant, label: str, threshold: float, pad_multiple: int, uniform: bool = False
                       ) -> dict[str, Any]:
    """What a hard cut at ``threshold`` switches off, per layer, and the pruned layout it gives."""
    cut = Cut("threshold", threshold)
    row = {"label": label, "threshold": threshold,
           **describe_cut(v, compute_gates(v.logits, GateSettings(cut, "hard", "none")), pad_multiple)}
    if uniform:
        u = compute_gates(v.logits, GateSettings(cut, "hard", "none", rule="uniform"))
        row["uniform_cut"] = describe_cut(v, u, pad_multiple) | uniform_cost(v.logits, u)
    return row


def describe_cut(v: GateVariant, g: GateResult, pad_multiple: int) -> dict[str, Any]:
    """Off and kept neurons per layer of a cut, the pruned width and padding they give, and the ragged layout's
    widths (each layer's kept neurons rounded up to ``pad_multiple``) and padding."""
    kept = g.kept_per_layer
    width = padded_width(kept, pad_multiple)
    ragged = ragged_widths(kept, pad_multiple)
    return {
        "off_fraction": g.off_fraction,
        "off_per_layer": g.off_per_layer,
        "off_share_per_layer": [n / v.intermediate_size for n in g.off_per_layer],
        "kept_per_layer": kept, "pruned_width": width,
        "padding_neurons": v.num_layers * width - sum(kept),
        "padding_overhead": padding_overhead(kept, v.num_layers * width),
        "ragged_widths": ragged,
        "ragged_padding_neurons": sum(ragged) - sum(kept),
    }


def uniform_cost(logits: np.ndarray, g: GateResult) -> dict[str, Any]:
    """What the uniform cut does differently from the threshold cut at the same off-fraction, per layer and in
    total: neurons the threshold cut keeps and the uniform one switches off (on -> off), the reverse
    (off -> on), and the range of lambda the uniform cut switches off in each layer."""
    if g.rule != "uniform":
        raise ValueError("uniform_cost describes a uniform-width cut")
    lam = gate_values(logits)
    on_to_off = (g.off & ~g.threshold_off).sum(axis=1)
    off_to_on = (g.threshold_off & ~g.off).sum(axis=1)
    ranges = [[float(lam[i][g.off[i]].min()), float(lam[i][g.off[i]].max())] if g.off[i].any() else None
              for i in range(lam.shape[0])]
    return {
        "rule": "uniform", "target_off_fraction": g.target_off_fraction,
        "switched_off_per_layer": int(g.off[0].sum()),
        "on_to_off_per_layer": [int(x) for x in on_to_off], "off_to_on_per_layer": [int(x) for x in off_to_on],
        "on_to_off": int(on_to_off.sum()), "off_to_on": int(off_to_on.sum()),
        "lambda_off_range_per_layer": ranges,
    }


def lambda_quantiles(lam: np.ndarray) -> dict[str, Any]:
    """``{"levels": LAMBDA_QUANTILES, "per_layer": [[q at each level] for each layer]}`` of [L, I] lambda."""
    q = np.quantile(lam, LAMBDA_QUANTILES, axis=1)  # [levels, L], linear interpolation as torch.quantile
    return {"levels": list(LAMBDA_QUANTILES), "per_layer": q.T.tolist()}
