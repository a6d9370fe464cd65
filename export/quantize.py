"""Blockwise weight-only quantization into the layout of ONNX Runtime's com.microsoft ``MatMulNBits``.

A linear weight ``W`` [N, K] (out, in) is cut along K into blocks of ``block_size``; each block gets
a float32 scale and an unsigned zero point, and each weight a ``bits``-bit code with
``W ~ (code - zero_point) * scale``. The op's inputs are then:

- B: uint8 [N, n_blocks, block_size * bits / 8], codes packed along K, low bits first;
- scales: float32 [N, n_blocks];
- zero_points: uint8 [N, ceil(n_blocks * bits / 8)], packed like B.

K is padded up to a whole block with codes equal to the zero point (they dequantize to 0).
Everything is vectorised over one tensor at a time, so the export keeps streaming.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bake.errors import ExportError

QUANT_BITS = {"int4": 4, "int8": 8}


@dataclass(frozen=True)
class QuantSpec:
    """How the linear layers are quantized (recorded in onnx_io.json)."""

    bits: int
    block_size: int = 32
    accuracy_level: int = 4  # MatMulNBits: 4 = quantize A to int8 and use integer dot products (fastest on CPU)

    @property
    def name(self) -> str:
        return f"int{self.bits}"

    def describe(self) -> dict[str, object]:
        return {"weights": self.name, "bits": self.bits, "block_size": self.block_size,
                "accuracy_level": self.accuracy_level, "symmetric": False, "op": "com.microsoft.MatMulNBits",
                "layers": "q/k/v/o projections, MLP gate/up/down and lm_head; embeddings and norms stay float32"}


def quant_spec(name: str) -> QuantSpec | None:
    """'none' -> None, 'int4'/'int8' -> the spec; anything else is an ExportError."""
    if name == "none":
        return None
    if name not in QUANT_BITS:
        raise ExportError(f"unknown quantization {name!r}; choose none, {', '.join(QUANT_BITS)}")
    return QuantSpec(QUANT_BITS[name])


@dataclass
class PackedWeight:
    """The three MatMulNBits weight inputs for one [N, K] weight."""

    b: torch.Tensor  # uint8 [N, n_blocks, blob_size]
    scales: torch.Tensor  # float32 [N, n_blocks]
    zero_points: torch.Tensor  # uint8 [N, ceil(n_blocks * bits / 8)]


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


def quantize_weight(w: torch.Tensor, spec: QuantSpec, rows_per_chunk: int = 8192) -> PackedWeight:
    """Asymmetric blockwise quantization of ``w`` [N, K], computed in float32 ``rows_per_chunk`` rows at a time.

    Per block: the range [min(w, 0), max(w, 0)] maps onto codes 0 .. 2**bits - 1, so 0 is exact
    (zeroed neurons stay exactly 0) and the zero point is an integer code.
    """
    parts = [_quantize_rows(rows, spec) for rows in w.split(rows_per_chunk)]
    return PackedWeight(torch.cat([p.b for p in parts]), torch.cat([p.scales for p in parts]),
                        torch.cat([p.zero_points for p in parts]))


def _quantize_rows(w: torch.Tensor, spec: QuantSpec) -> PackedWeight:
    n, k = w.shape
    bs, qmax = spec.block_size, (1 << spec.bits) - 1
    blocks = -(-k // bs)
    x = w.to(torch.float32)
    if blocks * bs != k:
        x = torch.nn.functional.pad(x, (0, blocks * bs - k))  # padded weights are 0: exact in every block
    x = x.reshape(n, blocks, bs)
    lo = x.amin(-1).clamp_max(0.0)
    hi = x.amax(-1).clamp_min(0.0)
    scale = (hi - lo) / qmax
    inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    zp = (-lo * inv).round().clamp(0, qmax)
    codes = (x * inv[..., None] + zp[..., None]).round().clamp(0, qmax).to(torch.uint8)
    return PackedWeight(_pack(codes, spec.bits), scale, _pack(zp.to(torch.uint8), spec.bits))
