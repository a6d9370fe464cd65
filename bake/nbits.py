"""Read com.microsoft ``MatMulNBits`` weights back: packed bytes to integer codes.

Written from the operator's documented layout, independently of ``export.quantize`` (which packs):
``B`` is uint8 [N, n_blocks, block_size * bits / 8] with the codes of one block packed along K,
lowest bits first; ``zero_points`` is uint8 [N, ceil(n_blocks * bits / 8)] packed the same way;
a weight is ``(code - zero_point) * scale`` with one scale per block. Unpacking is a table lookup:
each of the 256 byte values maps to its ``8 / bits`` codes.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

BITS = (2, 4, 8)


@lru_cache(maxsize=None)
def byte_table(bits: int) -> np.ndarray:
    """float32 [256, 8 / bits]: the codes a byte holds, lowest bits first (do not modify: cached)."""
    if bits not in BITS:
        raise ValueError(f"MatMulNBits with {bits} bits is not supported here ({', '.join(map(str, BITS))})")
    per_byte = 8 // bits
    byte = np.arange(256)[:, None]
    return ((byte >> (np.arange(per_byte) * bits)) & ((1 << bits) - 1)).astype(np.float32)


def unpack_codes(packed: np.ndarray, bits: int, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [..., n] -> float32 codes [..., n * 8 / bits] (into ``out`` when given, of that shape)."""
    table = byte_table(bits)
    shape = (*packed.shape[:-1], packed.shape[-1] * table.shape[1])
    view = None if out is None else out.reshape(*packed.shape, table.shape[1])
    return np.take(table, packed, axis=0, out=view).reshape(shape)
