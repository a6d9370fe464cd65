"""Weight-level proof of a baked checkpoint: every tensor is, bit for bit, what the base and the gates define.

The expected bake is ``bake_tensors.DerivedBake`` (the base read with the ``safetensors`` library, ``W_down * s``
in float32 rounded once by ``ml_dtypes``, pruned rows and columns picked by ``s != 0``), so a wrong fold,
prune, conversion or write fails here whatever the model's logits look like: a bfloat16 bake of a flat
random model, where one neuron more or less moves no logit past its budget, included. A failure names the
tensor, the worst element, its value and the expected one.
"""

from __future__ import annotations

import time

import numpy as np

from bake.verify.weights.bake_tensors import BakeTensors
from bake.verify.weights.weight_check import Failure, WeightReport


def check_bake_weights(bake: BakeTensors, expected: BakeTensors) -> WeightReport:
    """Compare every tensor of ``bake`` with ``expected``: same names, shapes, dtypes and stored bits."""
    started = time.monotonic()
    failures: list[Failure] = []
    checked = elements = 0
    names, wanted = set(bake.names()), expected.names()
    for name in wanted:
        if name not in names:
            failures.append(Failure(name, f"{name}: missing from the bake ({bake.label})"))
            continue
        got, want = bake.tensor(name), expected.tensor(name)
        checked += 1
        elements += want.raw.size
        if got.shape != want.shape or got.dtype != want.dtype:
            failures.append(Failure(name, f"{name}: {got.dtype.name}{list(got.shape)} in the bake, but "
                                          f"{want.dtype.name}{list(want.shape)} is what the base and the gates give"))
        elif not np.array_equal(got.raw.view(np.uint8), want.raw.view(np.uint8)):
            failures.append(_mismatch(name, got.values(), want.values()))
    failures += [Failure(n, f"{n}: in the bake, but no tensor of that name comes from the base")
                 for n in sorted(names - set(wanted))]
    return WeightReport(bake.label, expected.label, len(names), checked, elements, None, failures,
                        round(time.monotonic() - started, 3))


def _mismatch(name: str, got: np.ndarray, want: np.ndarray) -> Failure:
    """The element furthest from what it should be (a NaN where a number belongs counts as furthest)."""
    diff = np.abs(got - want)
    diff[np.isnan(got) != np.isnan(want)] = np.inf
    diff[np.isnan(diff)] = 0.0  # NaN in both: equal for this purpose
    idx = [int(i) for i in np.unravel_index(int(diff.argmax()), diff.shape)]
    value, exp = float(got[tuple(idx)]), float(want[tuple(idx)])
    count = int((diff > 0).sum()) or int((got.view(np.uint32) != want.view(np.uint32)).sum())
    return Failure(name, f"{name}: element {idx} is {value:.8g}, but the base and the gates give {exp:.8g} "
                         f"(|diff| {abs(value - exp):.3g}, bound 0: a bake is exact); {count} of {diff.size} elements "
                         "differ",
                   {"index": idx, "value": value, "expected": exp, "bound": 0.0})
