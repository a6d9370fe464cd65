"""The gate math, in one place: gate values, the cut, the mask and the per-neuron scale.

This module is the single source of truth for SPEC.md's formulas. Both the hooked reference
(``bake.verify.reference``) and the bake (``bake.fold.weights``) take the scale vector ``s`` from here; what the
reference checks is everything downstream of ``s`` (folding, pruning, writing, exporting).

All math is float32 on [L, I] numpy arrays (L layers, I neurons per layer). A neuron is *off* when
``lambda < t``, the comparison done in float32. ``lambda = sigmoid(logit)`` is computed in float64
and rounded once to float32: the correctly rounded value, the same on every machine. (The sums
behind the mean/energy statistics are taken in float64 too; for hard gates they are whole counts,
so the scale is exact.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from bake.errors import CutError

GateMode = Literal["hard", "soft-masked", "soft"]
ScaleMode = Literal["mean", "energy", "none"]
ScaleScope = Literal["layer", "global"]
CutKind = Literal["threshold", "off_fraction", "preset", "none"]
CutRule = Literal["threshold", "uniform"]

GATE_MODES: tuple[str, ...] = ("hard", "soft-masked", "soft")
SCALE_MODES: tuple[str, ...] = ("mean", "energy", "none")
SCALE_SCOPES: tuple[str, ...] = ("layer", "global")
CUT_RULES: tuple[str, ...] = ("threshold", "uniform")


@dataclass(frozen=True)
class Cut:
    """How the user chose the cut: a threshold, a target off-fraction, a preset index, or none.

    ``preset`` is 1-based: ``Cut("preset", 1)`` is the first value of selected_thresholds.txt.
    ``none`` is only valid with gate mode ``soft``, which uses no threshold.
    """

    kind: CutKind
    value: float = 0.0

    def describe(self) -> str:
        if self.kind == "none":
            return "no cut (soft gates)"
        if self.kind == "preset":
            return f"preset {int(self.value)}"
        return f"{self.kind.replace('_', '-')} {self.value:g}"


@dataclass(frozen=True)
class GateSettings:
    """Everything besides the gate logits that decides ``s``."""

    cut: Cut
    gate_mode: GateMode = "hard"
    scale_mode: ScaleMode = "mean"
    scale_scope: ScaleScope = "layer"
    rule: CutRule = "threshold"  # "uniform": every layer switches off the same number of neurons

    def __post_init__(self) -> None:
        if self.gate_mode not in GATE_MODES:
            raise CutError(f"unknown gate mode {self.gate_mode!r}; choose one of {', '.join(GATE_MODES)}")
        if self.scale_mode not in SCALE_MODES:
            raise CutError(f"unknown scale mode {self.scale_mode!r}; choose one of {', '.join(SCALE_MODES)}")
        if self.scale_scope not in SCALE_SCOPES:
            raise CutError(f"unknown scale scope {self.scale_scope!r}; choose layer or global")
        if self.gate_mode == "soft" and self.cut.kind != "none":
            raise CutError(
                "gate mode 'soft' uses no threshold (m = lambda); drop --threshold/--off-fraction/--preset "
                "or choose --gate-mode hard or soft-masked"
            )
        if self.gate_mode != "soft" and self.cut.kind == "none":
            raise CutError(
                f"gate mode {self.gate_mode!r} needs a cut: give --threshold T, --off-fraction F or --preset K"
            )
        if self.rule not in CUT_RULES:
            raise CutError(f"unknown cut rule {self.rule!r}; choose threshold or uniform")
        if self.rule == "uniform" and self.gate_mode == "soft":
            raise CutError("--uniform-width switches off the same number of neurons in every layer, and gate mode "
                           "'soft' switches off none; drop --uniform-width or choose --gate-mode hard or soft-masked")


@dataclass(frozen=True)
class GateResult:
    """The outcome of applying a cut: the threshold used, the mask, the scale and what is off."""

    threshold: float | None
    mask: np.ndarray  # [L, I] float32, m
    scale: np.ndarray  # [L, I] float32, s
    off: np.ndarray  # [L, I] bool: lambda < t (threshold rule), or each layer's k lowest lambdas (uniform rule)
    rule: CutRule = "threshold"
    target_off_fraction: float | None = None  # uniform: the F that gives k = round(F * I)
    threshold_off: np.ndarray | None = None  # uniform: what the threshold cut at the same off-fraction switches off

    @property
    def off_fraction(self) -> float:
        return int(self.off.sum()) / self.off.size

    @property
    def off_per_layer(self) -> list[int]:
        return [int(x) for x in self.off.sum(axis=1)]

    @property
    def kept_per_layer(self) -> list[int]:
        """Neurons with a non-zero scale, per layer: what a pruned/ragged layout keeps."""
        return [int(x) for x in (self.scale != 0).sum(axis=1)]


def gate_values(logits: np.ndarray) -> np.ndarray:
    """``lambda = sigmoid(logit)``: computed in float64, rounded once to float32."""
    with np.errstate(over="ignore"):  # exp(-logit) overflows to inf for logit < -709: lambda is then 0
        return (1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))).astype(np.float32)


def off_fraction_at(lam: np.ndarray, threshold: float) -> float:
    """Share of all neurons with ``lambda < threshold`` (float32 comparison)."""
    return int((lam < _f32(threshold)).sum()) / lam.size


def threshold_for_off_fraction(lam: np.ndarray, fraction: float) -> float:
    """The threshold that switches off ``round(fraction * N)`` neurons (global quantile of lambda).

    The returned value is exactly representable in float32, so ``lambda < t`` is reproducible.
    With tied lambda values the achieved fraction can differ; callers report it.
    """
    if not (0.0 <= fraction <= 1.0) or math.isnan(fraction):
        raise CutError(f"--off-fraction must lie in [0, 1], got {fraction}; e.g. 0.5 switches off half")
    flat = np.sort(lam.reshape(-1).astype(np.float32))
    n = flat.size
    k = round(fraction * n)
    if k <= 0:
        return float(flat[0])  # nothing is strictly below the smallest lambda
    if k >= n:
        return float(np.nextafter(flat[-1], np.float32(math.inf)))
    return float(flat[k])


def resolve_threshold(lam: np.ndarray, cut: Cut, presets: list[float] | None = None) -> float | None:
    """Turn a user's cut into the threshold ``t`` (None for the soft, threshold-free gate)."""
    if cut.kind == "none":
        return None
    if cut.kind == "threshold":
        t = float(cut.value)
        if not (0.0 < t < 1.0):
            raise CutError(
                f"--threshold is compared with lambda = sigmoid(logit) and must lie in (0, 1), got {t}"
            )
        return t
    if cut.kind == "off_fraction":
        return threshold_for_off_fraction(lam, float(cut.value))
    if cut.kind == "preset":
        if not presets:
            raise CutError(
                "--preset needs the variant's selected_thresholds.txt, which this gate folder lacks; "
                "use --threshold or --off-fraction instead"
            )
        k = int(cut.value)
        if k != cut.value or not (1 <= k <= len(presets)):
            listing = ", ".join(f"{i + 1}={v:g}" for i, v in enumerate(presets))
            raise CutError(f"--preset {cut.value:g} is out of range; this variant has {len(presets)}: {listing}")
        return float(presets[k - 1])
    raise CutError(f"unknown cut kind {cut.kind!r}")


def uniform_off(lam: np.ndarray, fraction: float) -> np.ndarray:
    """SPEC's uniform-width cut: in every layer its ``k = round(F * I)`` lowest-lambda neurons are off.

    Ties go to the lower neuron index first (a stable sort). The result is an [L, I] bool mask.
    """
    if not (0.0 <= fraction <= 1.0) or math.isnan(fraction):
        raise CutError(f"the uniform cut needs an off-fraction in [0, 1], got {fraction}")
    layers, width = lam.shape
    k = round(fraction * width)
    order = np.argsort(lam, axis=1, kind="stable")[:, :k]
    off = np.zeros(lam.shape, dtype=bool)
    np.put_along_axis(off, order, True, axis=1)
    return off


def gate_mask(lam: np.ndarray, threshold: float | None, gate_mode: GateMode, off: np.ndarray | None = None
              ) -> np.ndarray:
    """SPEC mask m: hard ``1[lambda>=t]``, soft-masked ``lambda*1[lambda>=t]``, soft ``lambda``.

    ``off`` (the uniform rule's mask) replaces ``lambda < t`` when given.
    """
    lam = np.asarray(lam, dtype=np.float32)
    if gate_mode == "soft":
        return lam.copy()
    if off is None and threshold is None:
        raise CutError(f"gate mode {gate_mode!r} needs a threshold")
    on = (~off if off is not None else lam >= _f32(threshold)).astype(np.float32)
    if gate_mode == "hard":
        return on
    if gate_mode == "soft-masked":
        return lam * on
    raise CutError(f"unknown gate mode {gate_mode!r}")


def scale_from_mask(mask: np.ndarray, scale_mode: ScaleMode, scope: ScaleScope = "layer") -> np.ndarray:
    """SPEC scale s from m: ``m/mean(m)`` (mean), ``m/sqrt(mean(m^2))`` (energy) or ``m`` (none).

    The statistic is taken per layer (over its I neurons) or globally; a zero statistic (every
    neuron of the layer off) gives ``s = 0`` rather than a division by zero. The sum is taken in
    float64 and rounded to float32, then divided by the count and square-rooted in float32.
    """
    m = np.asarray(mask, dtype=np.float32)
    if scale_mode == "none":
        return m.copy()
    axis = 1 if scope == "layer" else None
    count = np.float32(m.shape[1] if scope == "layer" else m.size)
    if scale_mode == "mean":
        denom = _sum32(m, axis) / count
    elif scale_mode == "energy":
        denom = np.sqrt(_sum32(m * m, axis) / count)
    else:
        raise CutError(f"unknown scale mode {scale_mode!r}")
    safe = np.where(denom > 0, denom, np.float32(1))
    return np.where(denom > 0, m / safe, np.float32(0)).astype(np.float32)


def _sum32(x: np.ndarray, axis: int | None) -> np.ndarray:
    """Sum over ``axis`` (keeping dims) in float64, rounded to float32."""
    return x.sum(axis=axis, keepdims=True, dtype=np.float64).astype(np.float32)


def compute_gates(
    logits: np.ndarray, settings: GateSettings, presets: list[float] | None = None
) -> GateResult:
    """Apply a cut to [L, I] gate logits: threshold, mask, scale and the off set.

    With the uniform rule the off-fraction is ``--off-fraction F`` itself, or the one the threshold (or
    preset) gives with the ordinary cut; each layer then loses its ``round(F * I)`` lowest-lambda neurons,
    and the threshold cut at that off-fraction is kept beside it (``threshold_off``) for the report.
    """
    lam = gate_values(logits)
    t = resolve_threshold(lam, settings.cut, presets)
    threshold_off = lam < _f32(t) if t is not None else np.zeros(lam.shape, dtype=bool)
    if settings.rule != "uniform":
        mask = gate_mask(lam, t, settings.gate_mode)
        scale = scale_from_mask(mask, settings.scale_mode, settings.scale_scope)
        return GateResult(threshold=t, mask=mask, scale=scale, off=threshold_off)
    fraction = float(settings.cut.value) if settings.cut.kind == "off_fraction" else off_fraction_at(lam, t)
    off = uniform_off(lam, fraction)
    mask = gate_mask(lam, t, settings.gate_mode, off=off)
    scale = scale_from_mask(mask, settings.scale_mode, settings.scale_scope)
    return GateResult(threshold=t, mask=mask, scale=scale, off=off, rule="uniform", target_off_fraction=fraction,
                      threshold_off=threshold_off)


def _f32(x: float) -> np.float32:
    return np.float32(x)
