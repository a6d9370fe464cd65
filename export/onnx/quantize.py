"""Blockwise weight-only quantization into the layout of ONNX Runtime's com.microsoft ``MatMulNBits``.

A linear weight ``W`` [N, K] (out, in) is cut along K into blocks of ``block_size``; each block gets
a scale and each weight a ``bits``-bit code with ``W ~ (code - zero_point) * scale``:

- symmetric (the default, as onnxruntime-genai's model builder quantizes): no zero-point input, the kernels'
  implicit zero point ``2 ** (bits - 1)``, scale = the block's largest ``|w|`` / ``(2 ** (bits - 1) - 1)``;
- asymmetric: an unsigned zero point per block, the range [min(w, 0), max(w, 0)] over every code (one level more
  on a skewed block, for 0.5 bytes more a block of 32 at 4 bits).

Either way 0 is exact (zeroed neurons stay exactly 0) and every weight lies within half a step. The op's inputs:

- B: uint8 [N, n_blocks, block_size * bits / 8], codes packed along K, low bits first;
- scales: [N, n_blocks], computed in float32 and stored in the activation dtype (float32 or float16);
- zero_points (asymmetric only): uint8 [N, ceil(n_blocks * bits / 8)], packed like B.

K is padded up to a whole block with codes equal to the zero point (they dequantize to 0).
Everything is vectorised over one tensor at a time, so the export keeps streaming.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bake.errors import ExportError
from export.options import QUANT_SCHEMES

QUANT_BITS = {"int4": 4, "int8": 8}  # the names of export.options.QUANTIZATIONS


@dataclass(frozen=True)
class QuantSpec:
    """How the linear layers are quantized (recorded in onnx_io.json)."""

    bits: int
    block_size: int = 32
    accuracy_level: int = 4  # MatMulNBits: 4 = quantize A to int8 and use integer dot products (fastest on CPU);
    # 0 = compute in the activation dtype (what the CUDA kernels do)
    symmetric: bool = True  # no zero points (the builder's default); False: a zero point per block

    @property
    def name(self) -> str:
        return f"int{self.bits}"

    def describe(self) -> dict[str, object]:
        return {"weights": self.name, "bits": self.bits, "block_size": self.block_size,
                "accuracy_level": self.accuracy_level, "symmetric": self.symmetric, "op": "com.microsoft.MatMulNBits",
                "layers": "q/k/v/o projections, MLP gate/up/down and lm_head; embeddings and norms stay in the "
                          "export dtype"}


def quant_spec(name: str, target: str = "cpu", scheme: str = "symmetric") -> QuantSpec | None:
    """'none' -> None, 'int4'/'int8' -> the spec for ``target`` (int8 activations on CPU, none on CUDA) and
    ``scheme`` (symmetric: no zero points; asymmetric: one per block)."""
    if scheme not in QUANT_SCHEMES:
        raise ExportError(f"unknown --quant-scheme {scheme!r}; choose one of {', '.join(QUANT_SCHEMES)}")
    if name == "none":
        return None
    if name not in QUANT_BITS:
        raise ExportError(f"unknown quantization {name!r}; choose none, {', '.join(QUANT_BITS)}")
    return QuantSpec(QUANT_BITS[name], accuracy_level=0 if target == "cuda" else 4, symmetric=scheme == "symmetric")


@dataclass
class PackedWeight:
    """The three MatMulNBits weight inputs for one [N, K] weight."""

    b: torch.Tensor  # uint8 [N, n_blocks, blob_size]
    scales: torch.Tensor  # [N, n_blocks], in the requested scale dtype
    zero_points: torch.Tensor | None  # uint8 [N, ceil(n_blocks * bits / 8)]; None: symmetric


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 codes (< 2**bits) along the last dim, low bits first: [..., n] -> [..., n * bits / 8]."""
    if bits == 8:
        return codes
    per_byte = 8 // bits
    if codes.shape[-1] % per_byte:
        codes = torch.nn.functional.pad(codes, (0, per_byte - codes.shape[-1] % per_byte))
    groups = codes.reshape(*codes.shape[:-1], -1, per_byte).to(torch.int32)
    shifts = torch.arange(per_byte, dtype=torch.int32) * bits
    return (groups << shifts).sum(-1).to(torch.uint8)


def quantize_weight(w: torch.Tensor, spec: QuantSpec, scale_dtype: torch.dtype = torch.float32,
                    rows_per_chunk: int = 8192) -> PackedWeight:
    """Blockwise quantization of ``w`` [N, K], computed in float32 ``rows_per_chunk`` rows at a time.

    Symmetric (``spec.symmetric``, the default): codes around the implicit zero point 2**(bits-1), the scale
    max|w| / (2**(bits-1) - 1). Asymmetric: the range [min(w, 0), max(w, 0)] maps onto codes 0 .. 2**bits - 1 with
    an integer zero point. Either way 0 is exact (zeroed neurons stay exactly 0). Scales are stored in
    ``scale_dtype``; a float16 scale is rounded up (never down, so the block's range still fits) and
    the codes are computed with the stored scale, so every weight stays within half a step of it.
    """
    parts = [_quantize_rows(rows, spec, scale_dtype) for rows in w.split(rows_per_chunk)]
    return PackedWeight(torch.cat([p.b for p in parts]), torch.cat([p.scales for p in parts]),
                        None if spec.symmetric else torch.cat([p.zero_points for p in parts]))


def _round_up(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` (float32, >= 0) in ``dtype``, rounded to the nearest value not below it."""
    y = x.to(dtype)
    low = y.to(torch.float32) < x
    return torch.where(low, torch.nextafter(y, torch.full_like(y, float("inf"))), y)


def _quantize_rows(w: torch.Tensor, spec: QuantSpec, scale_dtype: torch.dtype) -> PackedWeight:
    n, k = w.shape
    bs, qmax = spec.block_size, (1 << spec.bits) - 1
    blocks = -(-k // bs)
    x = w.to(torch.float32)
    if blocks * bs != k:
        x = torch.nn.functional.pad(x, (0, blocks * bs - k))  # padded weights are 0: exact in every block
    x = x.reshape(n, blocks, bs)
    if spec.symmetric:  # codes around the implicit zero point 2**(bits-1); |w| <= 7 (127) steps: never clipped
        half = 1 << (spec.bits - 1)
        stored = _round_up(x.abs().amax(-1) / (half - 1), scale_dtype)
    else:  # the block's range [min(w, 0), max(w, 0)] onto codes 0 .. qmax, with an integer zero point
        lo = x.amin(-1).clamp_max(0.0)
        stored = _round_up((x.amax(-1).clamp_min(0.0) - lo) / qmax, scale_dtype)
    scale = stored.to(torch.float32)
    inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    zp = torch.full_like(scale, half) if spec.symmetric else (-lo * inv).round().clamp(0, qmax)
    codes = (x * inv[..., None] + zp[..., None]).round().clamp(0, qmax).to(torch.uint8)
    return PackedWeight(_pack(codes, spec.bits), stored, None if spec.symmetric else _pack(zp.to(torch.uint8),
                                                                                            spec.bits))
