"""The activations llama.cpp's CPU backend multiplies a GGUF's weights with, for a float32 model to compute the same.

ggml does not multiply a block-quantized weight by float32 activations: it first converts each row of the input to
the weight type's ``vec_dot_type`` (``ggml-cpu.c``'s type traits) and takes integer dot products per block. So a
q4_0 file differs from its dequantized weights run in float32 by that rounding of every activation, several percent
of the largest logit on deep models, far more than float rounding. Rounding each matmul input here the way ggml's
converters do (``quantize_row_q8_0`` as its AVX2 path computes it, ``quantize_row_q8_K_ref``, ``quantize_row_q8_1``;
f16 and bf16 rounding for those weights) makes the dequantized model a yardstick that llama.cpp must match to float
rounding: the integer dot of the codes equals the float dot of the dequantized values, and only the order of the
float sums differs. Written here rather than taken from gguf-py, which has no activation formats (and should not be
the same code as the writer's quantizer anyway).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

Rounding = Callable[[torch.Tensor], torch.Tensor]


def _blocks(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] % size:
        raise ValueError(f"a row of {x.shape[-1]} activations is not whole blocks of {size}")
    return x.reshape(-1, size)


def q8_0(x: torch.Tensor) -> torch.Tensor:
    """Blocks of 32: codes ``round(x * 127 / amax)`` (to nearest even, as ``_mm256_round_ps``), scale ``amax / 127``
    stored as float16."""
    b = _blocks(x, 32)
    amax = b.abs().amax(-1, keepdim=True)
    inverse = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    scale = (amax / 127.0).to(torch.float16).to(torch.float32)
    return (torch.round(b * inverse) * scale).reshape(x.shape)


def q8_1(x: torch.Tensor) -> torch.Tensor:
    """Blocks of 32 as q8_0. Not exact: q8_1 also keeps each block's sum times its scale, in float16, which ggml
    multiplies by the Q4_1/Q5_1 weights' offset; that rounding is not modelled (those types appear only as the
    K-quants' fallback for rows that are not whole super-blocks of 256, which Qwen3's are)."""
    return q8_0(x)


def q8_k(x: torch.Tensor) -> torch.Tensor:
    """Blocks of 256: ``iscale = -127 / max`` (the signed value of largest magnitude, the first one on a tie), codes
    ``min(127, round(iscale * x))``, scale ``1 / iscale`` in float32; an all-zero block stays zero."""
    b = _blocks(x, 256)
    peak = b.gather(-1, b.abs().argmax(-1, keepdim=True))
    iscale = -127.0 / torch.where(peak == 0, torch.ones_like(peak), peak)  # an all-zero block: any scale gives 0
    codes = torch.round(iscale * b).clamp_max(127.0)
    return (codes * (1.0 / iscale)).reshape(x.shape)


def float16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).to(torch.float32)


def bfloat16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(torch.float32)


# GGML type name -> how ggml's CPU backend rounds the activations it multiplies with that weight type
VEC_DOT = {"Q4_0": q8_0, "Q5_0": q8_0, "Q8_0": q8_0, "Q4_1": q8_1, "Q5_1": q8_1,
           "Q2_K": q8_k, "Q3_K": q8_k, "Q4_K": q8_k, "Q5_K": q8_k, "Q6_K": q8_k, "F16": float16, "BF16": bfloat16}


def round_inputs(model: nn.Module, types: dict[str, str]) -> list[Any]:
    """Round the input of each ``nn.Linear`` of ``model`` named in ``types`` (module name -> GGML type name) as
    llama.cpp's CPU backend does for that weight type (F32 weights: no rounding). Returns the hook handles."""
    modules = dict(model.named_modules())
    handles = []
    for name, type_name in types.items():
        rounding = VEC_DOT.get(type_name)
        if rounding is None:
            if type_name != "F32":
                raise ValueError(f"{name}: no model of llama.cpp's activations for {type_name} weights")
            continue

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], rounding: Rounding = rounding
                 ) -> tuple[torch.Tensor, ...]:
            return (rounding(args[0]),)

        handles.append(modules[name].register_forward_pre_hook(hook))
    return handles
