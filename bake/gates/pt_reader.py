"""Read ``torch.save`` files without torch, accepting nothing but tensors and plain containers.

A ``.pt`` file is a zip archive: ``<root>/data.pkl`` (a pickle describing the object) and one
``<root>/data/<key>`` entry of raw little-endian bytes per tensor storage. A pickle is a small
program, and ``pickle.load`` runs whatever function it names, so this module does not use the
``pickle`` module at all: it interprets the pickle's opcodes itself and understands only the ones
that build ``None``, booleans, numbers, strings, tuples, lists and dicts, plus exactly three
callables, and only with the arguments ``torch.save`` gives them:

- ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])``
  where ``storage`` came from a ``('storage', torch.<T>Storage, key, location, numel)`` persistent id,
- ``torch._utils._rebuild_parameter(tensor, requires_grad, hooks)`` (an ``nn.Parameter``), and
- ``collections.OrderedDict()`` (an empty dict, filled by the following opcodes).

Anything else (another global, ``BUILD``, ``INST``, ``OBJ``, ``NEWOBJ``, extension codes, ...) is
refused before anything is called: nothing in the file runs. Every index a tensor reads is checked
against its storage, storages must be uncompressed entries of exactly the declared size, and the
sizes are bounded, so a hostile file can make the reader refuse but not read outside its buffers
or allocate without limit. Tensors come back as numpy arrays (bfloat16 widened exactly to float32).
"""

from __future__ import annotations

import re
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from bake.io.dtypes import BY_NAME, DType, to_float32

MAX_PICKLE_BYTES = 16 << 20
MAX_ELEMENTS = 1 << 28  # per tensor and per storage: 1 GiB of float32, far above any gate file
MAX_NODES = 1 << 16  # containers and values in the result (shared ones counted each time they appear)
MAX_DEPTH = 32
_STORAGES: dict[str, DType] = {
    "FloatStorage": BY_NAME["float32"], "DoubleStorage": BY_NAME["float64"], "HalfStorage": BY_NAME["float16"],
    "BFloat16Storage": BY_NAME["bfloat16"], "LongStorage": BY_NAME["int64"], "IntStorage": BY_NAME["int32"],
    "ShortStorage": BY_NAME["int16"], "CharStorage": BY_NAME["int8"], "ByteStorage": BY_NAME["uint8"],
    "BoolStorage": BY_NAME["bool"],
}
_KEY = re.compile(r"^[A-Za-z0-9_]{1,64}$")


class PtReadError(ValueError):
    """A ``.pt`` file this reader does not return an object from."""


class UnsafePickle(PtReadError):
    """The pickle asks for something other than tensors and plain containers."""


class DamagedArchive(PtReadError):
    """A zip archive that cannot be read (e.g. a truncated download)."""


class LegacyFormat(PtReadError):
    """Not a zip archive: torch's legacy (pre-1.6) format, or not a torch file at all."""


@dataclass(frozen=True)
class _Global:
    """A callable or storage type the pickle named; only the allowed ones are ever created."""

    name: str


@dataclass(frozen=True)
class _Storage:
    dtype: DType
    data: np.ndarray  # 1-D, raw element type


class _Dict(dict):  # type: ignore[type-arg]
    """An ``OrderedDict()`` made by the pickle: a plain dict (keys keep their order)."""


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): "rebuild_tensor",
    ("torch._utils", "_rebuild_parameter"): "rebuild_parameter",
    ("collections", "OrderedDict"): "ordered_dict",
} | {("torch", name): f"storage:{name}" for name in _STORAGES}


def load_pt(path: Path) -> Any:
    """The object in a ``torch.save`` file, with tensors as numpy arrays; refuses anything else.

    Total over its input: whatever the bytes, it returns the object or raises a ``PtReadError`` (an
    ``OSError`` only when the file cannot be read at all). A damaged archive makes ``zipfile`` raise
    many things (``BadZipFile``, ``UnicodeDecodeError`` for a mangled name, ``NotImplementedError`` for a
    bogus version or method, ``ValueError``, ``OverflowError``, ``struct.error``, ...); for a reader of
    untrusted bytes each of them means the same: this is not a torch.save archive it can read.
    """
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise LegacyFormat("not a zip archive")
    try:
        return _load(path)
    except (PtReadError, OSError):
        raise
    except Exception as e:  # noqa: BLE001 - see the docstring: any other failure is a damaged archive
        raise DamagedArchive(f"a damaged zip archive ({type(e).__name__}: {e}); it may be truncated") from e


def _load(path: Path) -> Any:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError) as e:
        raise DamagedArchive(f"a damaged zip archive ({e}); it may be truncated") from e
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise DamagedArchive("a zip archive without exactly one <name>/data.pkl: not a torch.save file")
        root = pickles[0][: -len("data.pkl")]
        if _member(archive, root + "byteorder", 16, required=False) not in (None, b"little"):
            raise UnsafePickle("the tensors are stored big-endian; re-save the file on a little-endian machine")
        program = _member(archive, pickles[0], MAX_PICKLE_BYTES)

        def storage(key: str, dtype: DType, numel: int) -> np.ndarray:
            if not _KEY.match(key):
                raise UnsafePickle(f"storage key {key!r} is not a plain name")
            if not 0 <= numel <= MAX_ELEMENTS:
                raise UnsafePickle(f"storage of {numel} elements is out of bounds")
            raw = _member(archive, f"{root}data/{key}", numel * dtype.itemsize, exact=True)
            return np.frombuffer(raw, dtype=dtype.storage)

        return _Unpickler(program, storage).run()


def _member(archive: zipfile.ZipFile, name: str, size: int, *, required: bool = True, exact: bool = False
            ) -> bytes | None:
    """An uncompressed archive entry of at most (or, with ``exact``, exactly) ``size`` bytes."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        if required:
            raise UnsafePickle(f"the archive lacks {name}") from None
        return None
    if info.compress_type != zipfile.ZIP_STORED:
        raise UnsafePickle(f"{name} is compressed; torch.save stores entries uncompressed")
    if info.file_size > size or (exact and info.file_size != size):
        raise UnsafePickle(f"{name} holds {info.file_size} bytes, expected {'' if exact else 'at most '}{size}")
    try:
        with archive.open(info) as f:
            data = f.read(size + 1)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise DamagedArchive(f"{name} cannot be read ({e}); the file may be truncated") from e
    if len(data) != info.file_size:
        raise UnsafePickle(f"{name} is truncated")
    return data


class _Unpickler:
    """A pickle interpreter for the opcodes ``torch.save`` writes (protocols 2-5), nothing more."""

    def __init__(self, program: bytes, storage: Callable[[str, DType, int], np.ndarray]):
        self.data = program
        self.pos = 0
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.storage = storage
        self.storages: dict[str, _Storage] = {}

    def run(self) -> Any:
        ops = _OPCODES
        while True:
            code = self._take(1)
            op = ops.get(code)
            if op is None:
                raise UnsafePickle(f"pickle opcode {code!r} at byte {self.pos - 1} is not allowed")
            if op(self) is _STOP:
                if len(self.stack) != 1 or self.marks:
                    raise UnsafePickle("the pickle ends with a malformed stack")
                return _plain(self.stack.pop(), [MAX_NODES])

    # -- reading the program --
    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise UnsafePickle("the pickle is truncated")
        chunk = self.data[self.pos: self.pos + n]
        self.pos += n
        return chunk

    def _uint(self, n: int) -> int:
        return int.from_bytes(self._take(n), "little")

    def _line(self) -> str:
        end = self.data.find(b"\n", self.pos, self.pos + 256)
        if end < 0:
            raise UnsafePickle("the pickle names a global without a line end")
        text = self.data[self.pos: end].decode("ascii", "replace")
        self.pos = end + 1
        return text

    # -- the stack --
    def _pop(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            raise UnsafePickle("the pickle pops an empty stack")
        return self.stack.pop()

    def _pop_mark(self) -> list[Any]:
        if not self.marks:
            raise UnsafePickle("the pickle has no MARK to pop to")
        at = self.marks.pop()
        items = self.stack[at:]
        del self.stack[at:]
        return items

    def _top(self, kind: type) -> Any:
        if not self.stack or not isinstance(self.stack[-1], kind):
            raise UnsafePickle(f"the pickle adds items to something that is not a {kind.__name__}")
        return self.stack[-1]

    # -- opcodes --
    def op_global(self) -> None:
        self._push_global(self._line(), self._line())

    def op_stack_global(self) -> None:
        name, module = self._pop(), self._pop()
        if not (isinstance(module, str) and isinstance(name, str)):
            raise UnsafePickle("STACK_GLOBAL needs two strings")
        self._push_global(module, name)

    def _push_global(self, module: str, name: str) -> None:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise UnsafePickle(f"the pickle names {module}.{name}, which is not a tensor or a plain container")
        self.stack.append(_Global(allowed))

    def op_reduce(self) -> None:
        args, func = self._pop(), self._pop()
        if not isinstance(func, _Global) or not isinstance(args, tuple):
            raise UnsafePickle("REDUCE applies only the allowed tensor functions to a tuple")
        if func.name == "ordered_dict" and args == ():
            self.stack.append(_Dict())
        elif func.name == "rebuild_tensor":
            self.stack.append(self._rebuild_tensor(*args))
        elif func.name == "rebuild_parameter" and len(args) == 3 and isinstance(args[0], np.ndarray):
            _check_hooks(args[2])
            self.stack.append(args[0])
        else:
            raise UnsafePickle(f"REDUCE of {func.name} with these arguments is not what torch.save writes")

    def op_binpersid(self) -> None:
        pid = self._pop()
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Global)
                and pid[1].name.startswith("storage:") and isinstance(pid[2], str) and isinstance(pid[3], str)
                and isinstance(pid[4], int) and not isinstance(pid[4], bool)):
            raise UnsafePickle("a persistent id that is not a tensor storage")
        dtype = _STORAGES[pid[1].name.split(":", 1)[1]]
        key = pid[2]
        known = self.storages.get(key)
        if known is None:
            known = self.storages[key] = _Storage(dtype, self.storage(key, dtype, pid[4]))
        if known.dtype != dtype or known.data.size != pid[4]:
            raise UnsafePickle(f"storage {key} is named with two different types or sizes")
        self.stack.append(known)

    def _rebuild_tensor(self, storage: Any = None, offset: Any = None, size: Any = None, stride: Any = None,
                        requires_grad: Any = None, hooks: Any = None, metadata: Any = None, *extra: Any
                        ) -> np.ndarray:
        if extra or not isinstance(storage, _Storage) or not isinstance(requires_grad, bool) or metadata:
            raise UnsafePickle("_rebuild_tensor_v2 with arguments torch.save does not write")
        _check_hooks(hooks)
        dims = _ints(size, "size")
        steps = _ints(stride, "stride")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0 or len(dims) != len(steps):
            raise UnsafePickle("a tensor with a bad offset or a stride that does not match its size")
        count = 1
        for d in dims:
            count *= d
        if count > MAX_ELEMENTS:
            raise UnsafePickle(f"a tensor of {count} elements is out of bounds")
        data = storage.data
        if count:
            last = offset + sum((d - 1) * s for d, s in zip(dims, steps))
            if last >= data.size:
                raise UnsafePickle("a tensor reads past the end of its storage")
        if count:  # every element read lies in data[offset: last + 1] (checked above), so the view is safe
            item = data.itemsize
            raw = as_strided(data[offset: last + 1], dims, tuple(s * item for s in steps), writeable=False)
        else:
            raw = np.empty(dims, dtype=data.dtype)
        return to_float32(raw, storage.dtype) if storage.dtype.name == "bfloat16" else raw.copy()

    def op_mark(self) -> None:
        self.marks.append(len(self.stack))

    def op_tuple(self) -> None:
        self.stack.append(tuple(self._pop_mark()))

    def _tuple_n(self, n: int) -> None:
        items = [self._pop() for _ in range(n)][::-1]
        self.stack.append(tuple(items))

    def op_list_append(self) -> None:
        item = self._pop()
        self._top(list).append(item)

    def op_list_appends(self) -> None:
        items = self._pop_mark()
        self._top(list).extend(items)

    def op_setitem(self) -> None:
        value, key = self._pop(), self._pop()
        _set(self._top(dict), key, value)

    def op_setitems(self) -> None:
        items = self._pop_mark()
        if len(items) % 2:
            raise UnsafePickle("SETITEMS with an odd number of items")
        target = self._top(dict)
        for key, value in zip(items[::2], items[1::2]):
            _set(target, key, value)

    def _memo_put(self, index: int) -> None:
        if not self.stack:
            raise UnsafePickle("the pickle memoizes an empty stack")
        self.memo[index] = self.stack[-1]

    def _memo_get(self, index: int) -> None:
        if index not in self.memo:
            raise UnsafePickle(f"the pickle reads memo entry {index}, which it never wrote")
        self.stack.append(self.memo[index])

    def _string(self, n: int) -> None:
        try:
            self.stack.append(self._take(n).decode("utf-8"))
        except UnicodeDecodeError as e:
            raise UnsafePickle(f"a string that is not UTF-8 ({e})") from e

    def op_long1(self) -> None:
        self.stack.append(int.from_bytes(self._take(self._uint(1)), "little", signed=True))


_STOP = object()
_OPCODES: dict[bytes, Callable[[_Unpickler], Any]] = {
    b"\x80": lambda u: u._uint(1) in (2, 3, 4, 5) or _raise("pickle protocol outside 2..5"),  # PROTO
    b"\x95": lambda u: u._uint(8),  # FRAME: a length hint, nothing to do
    b".": lambda u: _STOP,  # STOP
    b"(": _Unpickler.op_mark,
    b"t": _Unpickler.op_tuple,
    b")": lambda u: u.stack.append(()),
    b"\x85": lambda u: u._tuple_n(1),
    b"\x86": lambda u: u._tuple_n(2),
    b"\x87": lambda u: u._tuple_n(3),
    b"]": lambda u: u.stack.append([]),
    b"}": lambda u: u.stack.append({}),
    b"a": _Unpickler.op_list_append,
    b"e": _Unpickler.op_list_appends,
    b"s": _Unpickler.op_setitem,
    b"u": _Unpickler.op_setitems,
    b"N": lambda u: u.stack.append(None),
    b"\x88": lambda u: u.stack.append(True),
    b"\x89": lambda u: u.stack.append(False),
    b"K": lambda u: u.stack.append(u._uint(1)),  # BININT1
    b"M": lambda u: u.stack.append(u._uint(2)),  # BININT2
    b"J": lambda u: u.stack.append(struct.unpack("<i", u._take(4))[0]),  # BININT
    b"\x8a": _Unpickler.op_long1,
    b"G": lambda u: u.stack.append(struct.unpack(">d", u._take(8))[0]),  # BINFLOAT
    b"X": lambda u: u._string(u._uint(4)),  # BINUNICODE
    b"\x8c": lambda u: u._string(u._uint(1)),  # SHORT_BINUNICODE
    b"q": lambda u: u._memo_put(u._uint(1)),  # BINPUT
    b"r": lambda u: u._memo_put(u._uint(4)),  # LONG_BINPUT
    b"\x94": lambda u: u._memo_put(len(u.memo)),  # MEMOIZE
    b"h": lambda u: u._memo_get(u._uint(1)),  # BINGET
    b"j": lambda u: u._memo_get(u._uint(4)),  # LONG_BINGET
    b"c": _Unpickler.op_global,
    b"\x93": _Unpickler.op_stack_global,
    b"R": _Unpickler.op_reduce,
    b"Q": _Unpickler.op_binpersid,
}


def _raise(message: str) -> None:
    raise UnsafePickle(message)


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or len(value) > 8 or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise UnsafePickle(f"a tensor {what} that is not a short tuple of non-negative integers")
    return value


def _check_hooks(hooks: Any) -> None:
    if not (isinstance(hooks, _Dict) and not hooks):
        raise UnsafePickle("a tensor with backward hooks; torch.save writes an empty OrderedDict there")


def _set(target: dict, key: Any, value: Any) -> None:  # type: ignore[type-arg]
    if not isinstance(key, (str, int, float, bool, type(None), tuple)) or (
            isinstance(key, tuple) and not all(isinstance(k, (str, int)) for k in key)):
        raise UnsafePickle("a dict key that is not a string, number or tuple of them")
    target[key] = value


def _plain(value: Any, budget: list[int], depth: int = 0) -> Any:
    """The result as plain dicts, lists and tuples (new ones: no sharing, no cycles), within bounds."""
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise UnsafePickle("the pickle builds a structure that is too large or too deep (or refers to itself)")
    if isinstance(value, (_Global, _Storage)):
        raise UnsafePickle("the pickle's result holds a bare storage or function, not a tensor")
    if isinstance(value, dict):
        return {k: _plain(v, budget, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, budget, depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v, budget, depth + 1) for v in value)
    return value
