"""Read com.microsoft ``MatMulNBits`` weights back: packed bytes to integer codes.

Written from the operator's documented layout, independently of ``export.onnx.quantize`` (which packs):
``B`` is uint8 [N, n_blocks, block_size * bits / 8] with the codes of one block packed along K,
lowest bits first; ``zero_points`` is uint8 [N, ceil(n_blocks * bits / 8)] packed the same way;
a weight is ``(code - zero_point) * scale`` with one scale per block. Unpacking shifts and masks
each of a byte's ``8 / bits`` fields out (in uint8, then widened into float32 in place), which on
cache-sized chunks is several times faster than a 256-entry table lookup.
"""

from __future__ import annotations

import numpy as np

BITS = (2, 4, 8)


def unpack_codes(packed: np.ndarray, bits: int, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [..., n] -> float32 codes [..., n * 8 / bits] (into ``out`` when given: contiguous, of that shape)."""
    if bits not in BITS:
        raise ValueError(f"MatMulNBits with {bits} bits is not supported here ({', '.join(map(str, BITS))})")
    per_byte = 8 // bits
    shape = (*packed.shape[:-1], packed.shape[-1] * per_byte)
    out = np.empty(shape, np.float32) if out is None else out
    fields = out.reshape(*packed.shape, per_byte)  # a view: field i of byte j is code j * per_byte + i
    field = np.empty(packed.shape, np.uint8)
    for i in range(per_byte):
        np.right_shift(packed, i * bits, out=field)
        np.bitwise_and(field, (1 << bits) - 1, out=field)
        fields[..., i] = field
    return out.reshape(shape)


def mlx_dequantize(packed: np.ndarray, scales: np.ndarray, biases: np.ndarray, bits: int, group: int) -> np.ndarray:
    """mlx's affine weight back to float32 [rows, cols]: ``code * scale + bias`` per group of ``group`` inputs.

    mlx packs ``32 / bits`` codes into each uint32, the first in the lowest bits: on a little-endian machine its
    bytes hold the codes in the order ``unpack_codes`` reads them.
    """
    rows = packed.shape[0]
    codes = unpack_codes(np.ascontiguousarray(packed).view(np.uint8), bits)
    s, b = scales.astype(np.float32), biases.astype(np.float32)
    return (codes.reshape(rows, -1, group) * s[..., None] + b[..., None]).reshape(rows, -1)
