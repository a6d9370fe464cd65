"""Lazy, tensor-at-a-time safetensors I/O (the mergekit habit): never hold a whole model.

``CheckpointReader`` parses the headers of a checkpoint's safetensors files (one file, or shards
named by ``model.safetensors.index.json``) and reads one tensor, or a block of its rows, on demand,
as a numpy array of the raw element type (``bake.io.dtypes``). ``write_safetensors`` streams tensors
into a file in order: the header is written first from the known shapes, then each tensor is
produced (in blocks of rows, a few blocks ahead: ``bake.io.overlap``) and written, so memory stays a few
blocks, never a whole tensor of the model. Nothing here imports torch;
``CheckpointReader.tensor`` (for the ONNX export) does, when called.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bake.errors import BakeError, BaseModelError
from bake.io.dtypes import BY_CODE, DType
from bake.io.json_files import read_json_object
from bake.io.overlap import BackgroundFlush, BlockPipeline

if TYPE_CHECKING:
    import torch

INDEX_NAME = "model.safetensors.index.json"
SHARD_NAME = re.compile(r"^[\w.-]+\.safetensors$")  # a plain file name in the folder, never a path
SINGLE_NAME = "model.safetensors"
BLOCK_ELEMENTS = 1 << 19  # rows per block: about 2 MiB of float32, so a fold works inside the CPU cache


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype, shape and absolute byte range."""

    name: str
    file: Path
    dtype: DType
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def num_rows(self) -> int:
        return self.shape[0] if self.shape else 1


def row_blocks(shape: tuple[int, ...], block_elements: int = BLOCK_ELEMENTS) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` ranges of rows (first dimension) holding about ``block_elements`` elements each."""
    rows = shape[0] if shape else 1
    per_row = numel(shape[1:])
    step = max(1, block_elements // max(per_row, 1))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


class CheckpointReader:
    """Index of every tensor in a checkpoint folder; reads are lazy and one tensor (or row block) at a time."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.tensors: dict[str, TensorInfo] = {}
        for file in self._files():
            for info in read_header(file):
                self.tensors[info.name] = info

    def _files(self) -> list[Path]:
        index = self.folder / INDEX_NAME
        if index.exists():
            weight_map = read_json_object(index, BaseModelError, "download it again", "a safetensors index").get(
                "weight_map")
            if not isinstance(weight_map, dict) or not all(
                    isinstance(v, str) and SHARD_NAME.match(v) for v in weight_map.values()):
                raise BaseModelError(f"{index}: not a valid safetensors index (its weight_map must map tensor names "
                                     "to shard file names in the same folder); download it again")
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (self.folder / f).is_file()]
            if missing:
                raise BaseModelError(
                    f"{index} names shard(s) {', '.join(missing)} that are not in {self.folder}; "
                    "the download is incomplete: fetch the missing shards again"
                )
            return [self.folder / f for f in files]
        if (self.folder / SINGLE_NAME).is_file():
            return [self.folder / SINGLE_NAME]
        found = sorted(self.folder.glob("*.safetensors"))
        if found:
            return found
        bins = sorted(p.name for p in self.folder.glob("*.bin"))
        hint = f" (found {', '.join(bins)}: re-save it with safe_serialization=True)" if bins else ""
        raise BaseModelError(f"no safetensors weights in {self.folder}{hint}; lambda-bake reads safetensors only")

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def names(self) -> list[str]:
        return list(self.tensors)

    def read_bytes(self, name: str) -> bytes:
        return self.rows(name).tobytes()

    def rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of a tensor (all of it by default) as a new array of its raw element type."""
        return read_rows(self.tensors[name], start, stop)

    def tensor(self, name: str) -> torch.Tensor:
        """The whole tensor as a torch tensor of its dtype (for the ONNX export, which computes in torch)."""
        import torch

        info = self.tensors[name]
        return torch.from_numpy(self.rows(name)).view(getattr(torch, info.dtype.name))


def read_rows(info: TensorInfo, start: int = 0, stop: int | None = None, error: type[BakeError] = BaseModelError
              ) -> np.ndarray:
    """Read rows ``start:stop`` of one tensor straight into a new array (one copy, no bytes object)."""
    stop = info.num_rows if stop is None else stop
    shape = ((stop - start), *info.shape[1:]) if info.shape else ()
    out = np.empty(shape, dtype=info.dtype.storage)
    if out.nbytes == 0:
        return out
    offset = info.start + start * (info.nbytes // info.num_rows)
    with open(info.file, "rb") as f:
        f.seek(offset)
        got = f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
    if got != out.nbytes:
        raise error(f"{info.file}: tensor {info.name} is cut short; the file is truncated: download it again")
    return out


def row_reader(info: TensorInfo) -> Callable[[int, int], np.ndarray]:
    """``read(start, stop)`` for one tensor: what the fold functions stream from."""
    return lambda start, stop: read_rows(info, start, stop)


def read_header(file: Path, error: type[BakeError] = BaseModelError) -> list[TensorInfo]:
    """Parse a safetensors header and check that every byte range lies inside the file and fits its shape."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise error(f"{file}: too short to be a safetensors file; download it again")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise error(f"{file}: damaged safetensors header (length {n}); download it again")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise error(f"{file}: damaged safetensors header ({e}); download it again") from e
    if not isinstance(header, dict):
        raise error(f"{file}: damaged safetensors header (not a JSON object); download it again")
    base = 8 + n
    out = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = BY_CODE.get(meta["dtype"])
            start, end = (int(x) for x in meta["data_offsets"])
            shape = tuple(int(d) for d in meta["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise error(f"{file}: damaged safetensors header entry for {name} ({e}); download it again") from e
        if dtype is None:
            raise error(f"{file}: tensor {name} has unsupported dtype {meta.get('dtype')}")
        if base + end > size:
            raise error(
                f"{file}: tensor {name} ends at byte {base + end} but the file has {size} bytes; "
                "the file is truncated: download it again"
            )
        if min(shape, default=0) < 0 or not 0 <= start <= end or end - start != numel(shape) * dtype.itemsize:
            raise error(f"{file}: tensor {name} has {end - start} bytes, its shape {list(shape)} needs "
                        f"{numel(shape) * dtype.itemsize}; the file is damaged: download it again")
        out.append(TensorInfo(name, file, dtype, shape, base + start, base + end))
    return out


Blocks = Iterable[np.ndarray]


@dataclass(frozen=True)
class OutTensor:
    """One tensor to write: its name, dtype, shape, and either a function producing it (as blocks of
    rows, in order) or, for an unchanged tensor, the source bytes to copy (in the kernel, without
    passing through Python)."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    produce: Callable[[], Blocks] | None = None
    copy_from: TensorInfo | None = None

    @property
    def nbytes(self) -> int:
        return numel(self.shape) * self.dtype.itemsize


def write_safetensors(
    path: Path, tensors: Iterable[OutTensor], metadata: dict[str, str] | None = None,
    on_tensor: Callable[[OutTensor], None] | None = None,
) -> None:
    """Stream tensors into one safetensors file and fsync it. Each produced block is checked.

    Computed tensors are made in a worker thread while unchanged ones are copied, and the data is
    flushed to disk behind the writer (``bake.io.overlap``); the final fsync still makes it all durable.
    """
    tensors = list(tensors)
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype.code, "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f, BlockPipeline(t.produce for t in tensors if t.produce is not None) as computed, \
            BackgroundFlush(f.fileno()) as flush:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for t in tensors:
            if t.copy_from is not None:
                f.flush()
                copy_range(t.copy_from, f.fileno())
            else:
                write_blocks(f, t, computed.next_tensor())
            flush.wrote(t.nbytes)
            if on_tensor is not None:
                on_tensor(t)
        f.flush()
        os.fsync(f.fileno())


def write_blocks(f: object, t: OutTensor, blocks: Iterable[np.ndarray]) -> None:
    """Write a computed tensor's blocks to the open file ``f``, checking each against the plan."""
    written = 0
    for block in blocks:
        if block.dtype != np.dtype(t.dtype.storage) or tuple(block.shape[1:]) != t.shape[1:]:
            raise AssertionError(f"{t.name}: produced a {block.dtype}{list(block.shape)} block, "
                                 f"planned {t.dtype.name}{list(t.shape)}")
        written += write_array(f, block)
    if written != t.nbytes:
        raise AssertionError(f"{t.name}: produced {written} bytes, planned {t.nbytes}")


def write_array(f: object, a: np.ndarray) -> int:
    """Write an array's raw bytes (C order) to ``f``; return the byte count."""
    data = memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8))
    f.write(data)  # type: ignore[attr-defined]
    return len(data)


def copy_range(src: TensorInfo, dst_fd: int) -> None:
    """Append a source tensor's bytes to ``dst_fd``: ``copy_file_range`` where the OS has it, else read/write."""
    with open(src.file, "rb") as f:
        offset, left = src.start, src.nbytes
        while left > 0:
            try:
                n = os.copy_file_range(f.fileno(), dst_fd, left, offset)
            except (AttributeError, OSError):  # no copy_file_range here, or not across these filesystems
                f.seek(offset)
                n = os.write(dst_fd, f.read(min(left, 64 << 20)))
            if n == 0:
                raise BaseModelError(f"{src.file}: tensor {src.name} is cut short; the file is truncated")
            offset += n
            left -= n


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a torch tensor, without an extra copy when it is contiguous."""
    import torch

    flat = t.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def shard_plan(tensors: list[OutTensor], max_shard_bytes: int) -> list[list[OutTensor]]:
    """Group tensors, in order, into shards of at most ``max_shard_bytes`` (a lone larger tensor gets its own)."""
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def parse_size(text: str | int) -> int:
    """'5GB', '500MB', '2GiB' or a byte count -> bytes (decimal units as in transformers)."""
    if isinstance(text, int):
        return text
    s = text.strip().upper()
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    for unit, mult in units.items():
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * mult)
    return int(s)
