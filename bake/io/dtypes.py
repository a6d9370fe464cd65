"""Checkpoint dtypes without torch: safetensors codes, numpy storage, and the one rounding to each.

Tensors are held as numpy arrays of their raw storage type. bfloat16 has no numpy type, so it is
stored as uint16 and converted with bit arithmetic, exactly as torch does it: widening to float32
is exact (the 16 bits become the high half), narrowing rounds to nearest, ties to even. float16
uses numpy's IEEE conversion, which also rounds to nearest even, as torch does. A NaN stays a NaN:
in bfloat16 it is written as 0xFFFF, the pattern torch's vectorized x86 conversion writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    """One tensor element type: its name (torch's spelling), safetensors code and numpy storage."""

    name: str
    code: str
    storage: str  # numpy dtype of the raw little-endian elements

    @property
    def itemsize(self) -> int:
        return np.dtype(self.storage).itemsize

    @property
    def floating(self) -> bool:
        return "float" in self.name

    @property
    def computable(self) -> bool:
        """Whether the bake can compute with it: widen to float32, and round back once."""
        return self.name in COMPUTE_DTYPES

    def __str__(self) -> str:
        return self.name


_ALL = (
    DType("float64", "F64", "<f8"),
    DType("float32", "F32", "<f4"),
    DType("float16", "F16", "<f2"),
    DType("bfloat16", "BF16", "<u2"),
    DType("int64", "I64", "<i8"),
    DType("int32", "I32", "<i4"),
    DType("int16", "I16", "<i2"),
    DType("int8", "I8", "i1"),
    DType("uint8", "U8", "u1"),
    DType("uint16", "U16", "<u2"),
    DType("uint32", "U32", "<u4"),  # mlx-lm's packed quantized weights
    DType("uint64", "U64", "<u8"),
    DType("bool", "BOOL", "?"),
    DType("float8_e4m3fn", "F8_E4M3", "u1"),
    DType("float8_e5m2", "F8_E5M2", "u1"),
)
BY_CODE: dict[str, DType] = {d.code: d for d in _ALL}
BY_NAME: dict[str, DType] = {d.name: d for d in _ALL}
COMPUTE_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")  # what a checkpoint may be baked to
FLOAT32 = BY_NAME["float32"]
_BF16_NAN = np.uint16(0xFFFF)


def to_float32(raw: np.ndarray, dtype: DType, out: np.ndarray | None = None) -> np.ndarray:
    """``raw`` (elements of ``dtype``) widened exactly to float32: in a new array, or written into ``out`` (a float32
    array of its shape) and returned."""
    if dtype.name == "bfloat16":
        if out is not None:
            np.left_shift(raw, 16, dtype=np.uint32, out=out.view(np.uint32))
            return out
        return np.asarray(np.left_shift(raw, 16, dtype=np.uint32)).view(np.float32)  # asarray: 0-d stays an array
    if dtype.name in ("float32", "float16"):
        if out is not None:
            np.copyto(out, raw)
            return out
        return raw.astype(np.float32)
    raise ValueError(f"cannot compute with {dtype.name} tensors; only {', '.join(COMPUTE_DTYPES)}")


def from_float32(x: np.ndarray, dtype: DType) -> np.ndarray:
    """Round float32 ``x`` once to ``dtype`` (nearest, ties to even); may overwrite ``x``."""
    if dtype.name == "float32":
        return x
    if dtype.name == "float16":
        with np.errstate(over="ignore"):  # beyond float16's range is inf, as in torch
            return x.astype(np.float16)
    if dtype.name != "bfloat16":
        raise ValueError(f"cannot round to {dtype.name}; only {', '.join(COMPUTE_DTYPES)}")
    nan = np.isnan(x)
    bits = x.view(np.uint32)
    lsb = np.right_shift(bits, 16)
    lsb &= 1
    bits += 0x7FFF
    bits += lsb
    bits >>= 16
    out = bits.astype(np.uint16)
    if nan.any():
        out[nan] = _BF16_NAN
    return out


def convert(raw: np.ndarray, src: DType, dst: DType) -> np.ndarray:
    """``raw`` (elements of ``src``) as ``dst``: unchanged if the types agree, else widened and rounded once."""
    if src == dst:
        return raw
    return from_float32(to_float32(raw, src), dst)
