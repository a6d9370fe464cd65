"""The gate math against hand-computed numbers (SPEC.md formulas)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bake.errors import CutError
from bake.gates.gate_math import (
    Cut,
    GateSettings,
    compute_gates,
    gate_mask,
    resolve_threshold,
    scale_from_mask,
    threshold_for_off_fraction,
)

LAM = np.array([[0.2, 0.4, 0.6, 0.8], [0.1, 0.3, 0.5, 0.9]], dtype=np.float32)


def f32(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def logits_of(lam: np.ndarray) -> np.ndarray:
    return np.log(lam / (1 - lam))


def test_masks_match_spec() -> None:
    assert np.array_equal(gate_mask(LAM, 0.5, "hard"), f32([[0., 0, 1, 1], [0, 0, 1, 1]]))
    assert np.array_equal(gate_mask(LAM, 0.5, "soft-masked"), f32([[0., 0, 0.6, 0.8], [0, 0, 0.5, 0.9]]))
    assert np.array_equal(gate_mask(LAM, None, "soft"), LAM)


def test_scales_match_hand_computed_values() -> None:
    m = f32([[0., 0, 1, 1], [0, 0, 0.5, 0.9]])
    mean = scale_from_mask(m, "mean", "layer")
    assert mean.dtype == np.float32
    assert np.allclose(mean, [[0., 0, 2, 2], [0, 0, 0.5 / 0.35, 0.9 / 0.35]], atol=1e-6)
    energy = scale_from_mask(m, "energy", "layer")
    e1 = math.sqrt((0.25 + 0.81) / 4)
    assert np.allclose(energy, [[0., 0, math.sqrt(2), math.sqrt(2)], [0, 0, 0.5 / e1, 0.9 / e1]], atol=1e-6)
    assert np.array_equal(scale_from_mask(m, "none", "layer"), m)
    g = scale_from_mask(m, "mean", "global")
    assert np.allclose(g, m / (3.4 / 8), atol=1e-6)


def test_layer_with_every_neuron_off_gets_zero_scale_not_nan() -> None:
    m = f32([[0., 0, 0, 0], [1, 0, 1, 0]])
    for mode in ("mean", "energy"):
        s = scale_from_mask(m, mode, "layer")
        assert np.array_equal(s[0], np.zeros(4))
        assert np.array_equal(s[1], f32([[2., 0, 2, 0]])[0] if mode == "mean" else
                              f32([[math.sqrt(2), 0, math.sqrt(2), 0]])[0])


def test_off_means_lambda_below_threshold() -> None:
    g = compute_gates(logits_of(LAM), GateSettings(Cut("threshold", 0.5), "hard", "none"))
    assert g.off.tolist() == [[True, True, False, False], [True, True, False, False]]
    assert g.off_fraction == 0.5 and g.off_per_layer == [2, 2] and g.kept_per_layer == [2, 2]


@pytest.mark.parametrize("fraction,expected_off", [(0.0, 0), (0.25, 2), (0.5, 4), (0.75, 6), (1.0, 8)])
def test_off_fraction_quantile_switches_off_exact_count(fraction: float, expected_off: int) -> None:
    t = threshold_for_off_fraction(LAM, fraction)
    assert int((LAM < np.float32(t)).sum()) == expected_off


def test_presets_are_one_based_and_checked() -> None:
    assert resolve_threshold(LAM, Cut("preset", 2), [0.3, 0.45, 0.6]) == 0.45
    with pytest.raises(CutError, match=r"out of range; this variant has 3: 1=0.3, 2=0.45, 3=0.6"):
        resolve_threshold(LAM, Cut("preset", 4), [0.3, 0.45, 0.6])
    with pytest.raises(CutError, match="selected_thresholds.txt"):
        resolve_threshold(LAM, Cut("preset", 1), [])


@pytest.mark.parametrize("t", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_threshold_outside_open_unit_interval_is_refused(t: float) -> None:
    with pytest.raises(CutError, match=r"must lie in \(0, 1\)"):
        resolve_threshold(LAM, Cut("threshold", t))


@pytest.mark.parametrize("f", [-0.01, 1.01])
def test_off_fraction_outside_unit_interval_is_refused(f: float) -> None:
    with pytest.raises(CutError, match=r"must lie in \[0, 1\]"):
        resolve_threshold(LAM, Cut("off_fraction", f))


def test_soft_mode_takes_no_cut_and_hard_needs_one() -> None:
    with pytest.raises(CutError, match="uses no threshold"):
        GateSettings(Cut("threshold", 0.5), "soft", "mean")
    with pytest.raises(CutError, match="needs a cut"):
        GateSettings(Cut("none"), "hard", "mean")
    g = compute_gates(logits_of(LAM), GateSettings(Cut("none"), "soft", "mean"))
    assert g.threshold is None and g.off_fraction == 0.0
    assert np.allclose(g.scale, LAM / LAM.mean(axis=1, keepdims=True), atol=1e-6)
