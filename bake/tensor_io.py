"""Lazy, tensor-at-a-time safetensors I/O (the mergekit habit): never hold a whole model.

``CheckpointReader`` parses the headers of a checkpoint's safetensors files (one file, or shards
named by ``model.safetensors.index.json``) and reads one tensor, or its raw bytes, on demand.
``write_safetensors`` streams tensors into a file in order: the header is written first from the
known shapes, then each tensor is produced and written, so peak memory is one tensor.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import BaseModelError

ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
TORCH_TO_ST = {v: k for k, v in ST_DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype, shape and absolute byte range."""

    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


class CheckpointReader:
    """Index of every tensor in a checkpoint folder; reads are lazy and one tensor at a time."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.tensors: dict[str, TensorInfo] = {}
        for file in self._files():
            for info in read_header(file):
                self.tensors[info.name] = info

    def _files(self) -> list[Path]:
        index = self.folder / INDEX_NAME
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise BaseModelError(f"{index}: not a valid safetensors index ({e}); download it again") from e
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
        info = self.tensors[name]
        with open(info.file, "rb") as f:
            f.seek(info.start)
            data = f.read(info.nbytes)
        if len(data) != info.nbytes:
            raise BaseModelError(f"{info.file}: tensor {name} is cut short; the file is truncated: download it again")
        return data

    def tensor(self, name: str) -> torch.Tensor:
        """Read one tensor straight into its own buffer (one copy, no intermediate bytes object)."""
        info = self.tensors[name]
        out = torch.empty(info.shape, dtype=info.dtype)
        if info.nbytes == 0:
            return out
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
        with open(info.file, "rb") as f:
            f.seek(info.start)
            got = f.readinto(view)
        if got != info.nbytes:
            raise BaseModelError(f"{info.file}: tensor {name} is cut short; the file is truncated: download it again")
        return out


def read_header(file: Path) -> list[TensorInfo]:
    """Parse a safetensors header and check that every byte range lies inside the file."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise BaseModelError(f"{file}: too short to be a safetensors file; download it again")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise BaseModelError(f"{file}: damaged safetensors header (length {n}); download it again")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BaseModelError(f"{file}: damaged safetensors header ({e}); download it again") from e
    base = 8 + n
    out = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = ST_DTYPES.get(meta.get("dtype"))
        if dtype is None:
            raise BaseModelError(f"{file}: tensor {name} has unsupported dtype {meta.get('dtype')}")
        start, end = meta["data_offsets"]
        if base + end > size:
            raise BaseModelError(
                f"{file}: tensor {name} ends at byte {base + end} but the file has {size} bytes; "
                "the file is truncated: download it again"
            )
        out.append(TensorInfo(name, file, dtype, tuple(meta["shape"]), base + start, base + end))
    return out


@dataclass(frozen=True)
class OutTensor:
    """One tensor to write: its name, dtype, shape, and either a function producing it or, for an
    unchanged tensor, the source bytes to copy (in the kernel, without passing through Python)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    produce: Callable[[], torch.Tensor | bytes] | None = None
    copy_from: TensorInfo | None = None

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * _itemsize(self.dtype)


def write_safetensors(
    path: Path, tensors: Iterable[OutTensor], metadata: dict[str, str] | None = None,
    on_tensor: Callable[[OutTensor], None] | None = None,
) -> None:
    """Stream tensors into one safetensors file and fsync it. Each produced tensor is checked."""
    tensors = list(tensors)
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": TORCH_TO_ST[t.dtype], "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for t in tensors:
            if t.copy_from is not None:
                f.flush()
                copy_range(t.copy_from, f.fileno())
                if on_tensor is not None:
                    on_tensor(t)
                continue
            data = t.produce()
            if isinstance(data, torch.Tensor):
                if data.dtype != t.dtype or tuple(data.shape) != t.shape:
                    raise AssertionError(f"{t.name}: produced {data.dtype}{list(data.shape)}, "
                                         f"planned {t.dtype}{list(t.shape)}")
                data = tensor_bytes(data)
            if len(data) != t.nbytes:
                raise AssertionError(f"{t.name}: produced {len(data)} bytes, planned {t.nbytes}")
            f.write(data)
            if on_tensor is not None:
                on_tensor(t)
        f.flush()
        os.fsync(f.fileno())


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
    """The raw little-endian bytes of a tensor, without an extra copy when it is contiguous."""
    flat = t.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


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
