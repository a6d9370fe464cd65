"""The numpy fold is byte-identical to the torch computation it replaced, for every dtype and layout.

The reference is written here independently in torch, as the fold was before: ``(W.float() * s).to(dtype)``
for down_proj, ``W[keep].to(dtype)`` for the pruned gate/up rows, zero padding, every other tensor
unchanged (or ``.to(dtype)``). Whole checkpoints are compared byte for byte.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY

from bake.demo.assets import build_tiny_qwen3
from bake.fold.weights import fold_down_proj, gather, kept_neurons, prune_down_proj, prune_in_proj
from bake.gates.gate_math import Cut, GateSettings, compute_gates, gate_values, scale_from_mask
from bake.gates.variant import load_variant
from bake.io.base_model import mlp_name
from bake.io.dtypes import BY_NAME, from_float32, to_float32
from bake.io.tensor_io import CheckpointReader
from bake.write.pipeline import BakeOptions, bake_checkpoint

DTYPES = ("float32", "float16", "bfloat16")
TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def awkward_weights(shape: tuple[int, int], seed: int) -> torch.Tensor:
    """Normal weights plus zeros, subnormals, huge values, infinities and exact rounding ties."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.05
    flat = w.view(-1)
    n = flat.numel()
    idx = torch.randperm(n, generator=g)
    flat[idx[:50]] = 0.0
    flat[idx[50:100]] = torch.randn(50, generator=g) * 1e-40  # float32 subnormals
    flat[idx[100:150]] = torch.randn(50, generator=g) * 3e38
    flat[idx[150:152]] = torch.tensor([float("inf"), float("-inf")])
    ties = torch.randint(0, 0x7F7F, (100,), generator=g, dtype=torch.int32) << 16 | 0x8000  # halfway for bf16
    flat[idx[152:252]] = ties.view(torch.float32) * torch.where(torch.rand(100, generator=g) < 0.5, -1.0, 1.0)
    return w


def scale_vector(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(n, generator=g) * 2.5
    s[torch.rand(n, generator=g) < 0.4] = 0.0
    return s


def raw(t: torch.Tensor) -> np.ndarray:
    """A tensor's storage as the numpy array the reader would give."""
    return t.view(torch.uint16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


def read_from(array: np.ndarray):  # noqa: ANN201 - the fold's row reader over an in-memory array
    return lambda start, stop: array[start:stop]


@pytest.mark.parametrize("src,dst", list(itertools.product(DTYPES, DTYPES)))
def test_widen_and_round_match_torch(src: str, dst: str) -> None:
    w = awkward_weights((64, 300), seed=1).to(TORCH[src])
    ours = from_float32(to_float32(raw(w), BY_NAME[src]), BY_NAME[dst])
    assert ours.tobytes() == raw(w.to(torch.float32).to(TORCH[dst])).tobytes()


@pytest.mark.parametrize("src,dst", list(itertools.product(DTYPES, DTYPES)))
def test_dense_and_pruned_fold_match_torch_byte_for_byte(src: str, dst: str) -> None:
    shape = (300, 4096)  # several row blocks
    w = awkward_weights(shape, seed=2).to(TORCH[src])
    s = scale_vector(shape[1], seed=3)
    s_np, sd, dd = s.numpy(), BY_NAME[src], BY_NAME[dst]
    dense = gather(fold_down_proj(read_from(raw(w)), shape, s_np, sd, dd), shape, dd)
    assert dense.tobytes() == raw((w.to(torch.float32) * s[None, :]).to(TORCH[dst])).tobytes()

    keep = kept_neurons(s_np)
    width = keep.size + 40
    down = gather(prune_down_proj(read_from(raw(w)), shape, s_np, keep, width, sd, dd), (shape[0], width), dd)
    k = torch.from_numpy(keep)
    expected = torch.zeros((shape[0], width), dtype=TORCH[dst])
    expected[:, : keep.size] = (w[:, k].to(torch.float32) * s[k][None, :]).to(TORCH[dst])
    assert down.tobytes() == raw(expected).tobytes()

    rows = w.t().contiguous()  # gate/up_proj are [I, H]: neurons are rows
    up = gather(prune_in_proj(read_from(raw(rows)), tuple(rows.shape), keep, width, sd, dd), (width, shape[0]), dd)
    expected = torch.zeros((width, shape[0]), dtype=TORCH[dst])
    expected[: keep.size] = rows[k].to(TORCH[dst])
    assert up.tobytes() == raw(expected).tobytes()


def torch_reference_bake(base: Path, scale: torch.Tensor, layout: str, width: int, dst: torch.dtype
                         ) -> dict[str, bytes]:
    """Every output tensor's bytes, computed in torch from the base and s (the pre-numpy fold)."""
    reader = CheckpointReader(base)
    out = {}
    for name in reader.names():
        w = reader.tensor(name)
        for layer in range(scale.shape[0]):
            s = scale[layer]
            keep = torch.nonzero(s != 0).reshape(-1)
            if name == mlp_name(layer, "down_proj"):
                if layout == "dense":
                    w = (w.to(torch.float32) * s[None, :]).to(dst)
                else:
                    pad = torch.zeros((w.shape[0], width), dtype=dst)
                    pad[:, : keep.numel()] = (w[:, keep].to(torch.float32) * s[keep][None, :]).to(dst)
                    w = pad
            elif layout == "pruned" and name in (mlp_name(layer, "gate_proj"), mlp_name(layer, "up_proj")):
                pad = torch.zeros((width, w.shape[1]), dtype=dst)
                pad[: keep.numel()] = w[keep].to(dst)
                w = pad
        out[name] = raw(w.to(dst) if w.is_floating_point() else w).tobytes()
    return out


@pytest.mark.parametrize("base_dtype,out_dtype", [("float32", "float32"), ("bfloat16", "bfloat16"),
                                                  ("float16", "float16"), ("float32", "bfloat16"),
                                                  ("bfloat16", "float32")])
@pytest.mark.parametrize("layout", ["dense", "pruned"])
@pytest.mark.parametrize("mode", [("hard", "energy"), ("soft-masked", "mean")])
def test_whole_checkpoint_matches_the_torch_fold(tmp_path_factory: pytest.TempPathFactory, tiny_gates: Path,
                                                 base_dtype: str, out_dtype: str, layout: str,
                                                 mode: tuple[str, str]) -> None:
    base = tmp_path_factory.getbasetemp() / f"base-{base_dtype}"
    if not base.exists():
        build_tiny_qwen3(base, TINY, dtype=TORCH[base_dtype])
    v = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    settings = GateSettings(Cut("preset", 3), *mode)
    out = tmp_path_factory.mktemp("out") / "baked"
    m = bake_checkpoint(base, v, settings, out, BakeOptions(layout=layout, dtype=out_dtype, pad_multiple=16,
                                                            progress=False))
    scale = torch.from_numpy(compute_gates(v.logits, settings, v.selected_thresholds).scale)
    expected = torch_reference_bake(base, scale, layout, m["intermediate_size"], TORCH[out_dtype])
    baked = CheckpointReader(out)
    assert baked.names() == list(expected)
    for name, data in expected.items():
        assert baked.read_bytes(name) == data, name


def test_nan_weights_stay_nan() -> None:
    x = np.array([np.nan, -np.nan, 1.0], dtype=np.float32)
    for name in ("bfloat16", "float16"):
        back = to_float32(from_float32(x.copy(), BY_NAME[name]), BY_NAME[name])
        assert np.isnan(back[:2]).all() and back[2] == 1.0


def test_lambda_is_the_correctly_rounded_sigmoid() -> None:
    """lambda = sigmoid(logit) computed in float64 and rounded once (math.exp per value as the reference)."""
    x = np.random.default_rng(0).normal(0, 3, 5000).astype(np.float32)
    exact = np.array([1 / (1 + math.exp(-float(v))) for v in x]).astype(np.float32)
    lam = gate_values(x)
    assert lam.dtype == np.float32 and np.array_equal(lam, exact)
    assert gate_values(np.array([-1000.0, 0.0, 1000.0], dtype=np.float32)).tolist() == [0.0, 0.5, 1.0]


def test_hard_gate_scale_matches_torch() -> None:
    """For hard gates the statistics are whole counts: mean scale equals torch's float32 computation
    exactly; energy differs only where torch's CPU sqrt is not correctly rounded (one ulp)."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        m = (rng.random((28, 3072)) < rng.random()).astype(np.float32)
        t = torch.from_numpy(m)
        for scope, dims in (("layer", (1,)), ("global", (0, 1))):
            mean = t.mean(dim=dims, keepdim=True)
            torch_mean = torch.where(mean > 0, t / torch.where(mean > 0, mean, 1.0), 0.0).numpy()
            assert np.array_equal(scale_from_mask(m, "mean", scope), torch_mean)
            energy = (t * t).mean(dim=dims, keepdim=True)
            exact = np.sqrt(energy.numpy().astype(np.float64)).astype(np.float32)  # correctly rounded sqrt
            assert np.array_equal(scale_from_mask(m, "energy", scope), np.where(exact > 0, m / np.where(
                exact > 0, exact, 1), 0))
