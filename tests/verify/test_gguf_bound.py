"""The block-quantized weight bound of the GGUF check (Q8_0, Q4_0 and the Q5_0/Q5_1 that llama.cpp's K-quants fall
back to), against gguf-py's own quantizer (llama.cpp's reference): every
correct quantization passes, including blocks of small weights whose float16 scale is subnormal (as in a 0.6B
bf16 bake: 1 step off is right there), and a code moved by one step fails."""

from __future__ import annotations

import numpy as np
import pytest
from fuzzing import FUZZ
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize
from hypothesis import given
from hypothesis import strategies as st

from bake.verify.weights.gguf_check import quantization_bound


def quantized(values: np.ndarray, qtype: Q) -> tuple[np.ndarray, np.ndarray]:
    raw = quantize(values, qtype)
    return raw, dequantize(raw, qtype).reshape(values.shape).astype(np.float32)


@FUZZ
@given(seed=st.integers(0, 2**32 - 1), exponent=st.floats(-9.0, 1.0), qtype=st.sampled_from([Q.Q8_0, Q.Q4_0, Q.Q5_0, Q.Q5_1]))
def test_every_correct_quantization_is_within_the_bound(seed: int, exponent: float, qtype: Q) -> None:
    rng = np.random.default_rng(seed)
    want = (rng.standard_normal((4, 64)) * 10.0 ** exponent).astype(np.float32)
    want[:, 5] = 0.0  # an off neuron's column
    raw, got = quantized(want, qtype)
    err, allowed, _ = quantization_bound(qtype, raw, got, want)
    assert (err <= allowed).all(), float((err - allowed).max())


@pytest.mark.parametrize(("qtype", "std"), [(Q.Q8_0, 1.3e-4), (Q.Q4_0, 3e-7)])
def test_subnormal_scales_pass_and_a_moved_code_fails(qtype: Q, std: float) -> None:
    """Q8_0 weights up to 4e-4, as the 0.6B bake's blk.23.ffn_down has: the block scale is a float16 subnormal
    (3e-6 < 6.1e-5) and a correct code can be a whole step off, within the bound; a code one step further fails."""
    rng = np.random.default_rng(0)
    want = (rng.standard_normal((2, 32)) * std).astype(np.float32)
    raw, got = quantized(want, qtype)
    scale = raw[0, :2].copy().view(np.float16)[0]
    assert 0 < abs(float(scale)) < np.finfo(np.float16).smallest_normal
    err, allowed, step = quantization_bound(qtype, raw, got, want)
    # past what a normal float16 scale allows (half a step + 127 x 2^-11): the subnormal scale's own rounding
    assert (err <= allowed).all() and (err / step).max() > 0.5 + 127 * 2.0 ** -11
    moved = got.copy()
    i = int(np.argmax(np.abs(want[0]) < 2 * step[0]))  # an element not at the clip, so a step further is wrong
    moved[0, i] += step[0, i] * np.sign(moved[0, i] - want[0, i] or 1.0)
    err, allowed, _ = quantization_bound(qtype, raw, moved, want)
    assert err[0, i] > allowed[0, i]


@FUZZ
@given(seed=st.integers(0, 2**32 - 1), exponent=st.floats(-9.0, 1.0), qtype=st.sampled_from([Q.Q8_0, Q.Q4_0, Q.Q5_0, Q.Q5_1]),
       moved=st.integers(0, 6))
def test_the_proof_fails_exactly_what_the_whole_bound_fails(seed: int, exponent: float, qtype: Q, moved: int) -> None:
    """The proof computes the bound only for elements more than half a step off; it must fail the same elements as
    the whole bound (a code moved by a step, or a zero weight that is not 0, among correct ones)."""
    from types import SimpleNamespace

    from bake.verify.weights.gguf_check import SYMMETRIC, _Checker

    rng = np.random.default_rng(seed)
    want = (rng.standard_normal((8, 64)) * 10.0 ** exponent).astype(np.float32)
    want[:, 5] = 0.0
    raw, got = quantized(want, qtype)
    err, allowed, step = quantization_bound(qtype, raw, got, want)
    for _ in range(moved):  # move some codes a step, or more, either way
        r, c = int(rng.integers(8)), int(rng.integers(64))
        got[r, c] += step[r, c] * float(rng.choice([-2.0, -1.0, 1.0, 2.0]))
    err, allowed, _ = quantization_bound(qtype, raw, got, want)
    expected = ~(err <= allowed) | ((want == 0) & (got != 0) & (qtype.name in SYMMETRIC))
    checker = SimpleNamespace(max_steps=None)
    found = _Checker.quantized(checker, qtype, raw, got, want)
    assert (found is None) == (not expected.any())
    if found is not None:
        assert np.array_equal(found[0], expected)
        message, worst = found[1](tuple(int(i) for i in np.argwhere(found[0])[0]))
        assert "steps off" in message and worst["bound"] > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        assert checker.max_steps == pytest.approx(float(np.max(np.where(step > 0, err / step, 0.0))), rel=1e-6)
