"""The torch-free .pt reader: the same objects torch.load gives, and nothing in a hostile file runs."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import as_numpy

from bake.gates.pt_reader import DamagedArchive, LegacyFormat, UnsafePickle, load_pt

BASE = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7 - 1


def assert_same(ours: Any, expected: Any) -> None:
    if isinstance(expected, np.ndarray):
        assert isinstance(ours, np.ndarray) and ours.dtype == expected.dtype and ours.shape == expected.shape
        assert ours.tobytes() == expected.tobytes()
    elif isinstance(expected, dict):
        assert type(ours) is dict and list(ours) == list(expected)
        for k in expected:
            assert_same(ours[k], expected[k])
    elif isinstance(expected, (list, tuple)):
        assert type(ours) is type(expected) and len(ours) == len(expected)
        for a, b in zip(ours, expected):
            assert_same(a, b)
    else:
        assert ours == expected and type(ours) is type(expected)


OBJECTS = {
    "tensor": BASE,
    "flat": BASE.reshape(-1),
    "view_with_offset": BASE[2],  # storage offset 12, the whole storage saved
    "transposed": BASE.t(),  # non-contiguous strides
    "strided_slice": BASE[:, ::2],
    "expanded": torch.ones(3, 1).expand(3, 5),  # stride 0
    "empty": torch.zeros(0, 6),
    "scalar": torch.tensor(2.5),
    "dtypes": [BASE.to(torch.bfloat16), BASE.half(), BASE.double(), BASE.long(), BASE.int(), BASE > 0,
               BASE.to(torch.uint8), BASE.to(torch.int8), BASE.to(torch.int16)],
    "shared_storage": {"a": BASE[0], "b": BASE[1], "same": [BASE, BASE]},
    "parameter": torch.nn.Parameter(BASE.clone()),
    "ordered_dict": OrderedDict([("model.layers.1.mlp", BASE[1]), ("model.layers.0.mlp", BASE[0])]),
    "nested": {"state": {0: BASE[0], "1": BASE[1]}, "meta": [1, -2, 3.5, None, True, "x", (1, "y")], 7: 2**40},
    "string": "hello",
}


@pytest.mark.parametrize("kind", sorted(OBJECTS))
def test_same_objects_as_torch_load(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x.pt"
    torch.save(OBJECTS[kind], path)
    expected = as_numpy(torch.load(path, weights_only=True))
    assert_same(load_pt(path), expected)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_newer_pickle_protocols(tmp_path: Path, protocol: int) -> None:
    """torch.save(pickle_protocol=4/5) frames and memoizes differently; torch's own weights_only loader
    refuses those opcodes, so the reference here is a full torch.load of this trusted file."""
    path = tmp_path / "x.pt"
    obj = {"l": [BASE, BASE[1:]], "t": (BASE[0],)}
    torch.save(obj, path, pickle_protocol=protocol)
    assert_same(load_pt(path), as_numpy(torch.load(path, weights_only=False)))


def test_legacy_and_damaged_files_are_told_apart(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.pt"
    torch.save(BASE, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(LegacyFormat):
        load_pt(legacy)
    good = tmp_path / "good.pt"
    torch.save(BASE, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(DamagedArchive, match="truncated"):
        load_pt(cut)


# ---------------------------------------------------------------- hostile files


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def torch_zip(path: Path, program: bytes, storages: dict[str, bytes] | None = None,
              compress: int = zipfile.ZIP_STORED) -> Path:
    """A zip laid out as torch.save writes it, holding an arbitrary pickle program."""
    with zipfile.ZipFile(path, "w", compression=compress) as z:
        z.writestr("archive/data.pkl", program)
        z.writestr("archive/byteorder", "little")
        for key, data in (storages or {}).items():
            z.writestr(f"archive/data/{key}", data)
    return path


def saved_program(obj: object) -> tuple[bytes, dict[str, bytes]]:
    """The data.pkl and storages torch.save writes for ``obj``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
        root = pkl[: -len("data.pkl")]
        storages = {n[len(root) + 5:]: z.read(n) for n in z.namelist() if n.startswith(root + "data/")}
        return z.read(pkl), storages


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    for i, obj in enumerate([_RunsCode(marker), {"logits": BASE, "x": _RunsCode(marker)}, [BASE, _RunsCode(marker)]]):
        path = tmp_path / f"evil{i}.pt"
        torch.save(obj, path)
        with pytest.raises(UnsafePickle, match="posix.system|os.system"):
            load_pt(path)
    assert not marker.exists()


@pytest.mark.parametrize("program,message", [
    (b"\x80\x02cbuiltins\neval\nq\x00X\x04\x00\x00\x001+1q\x01\x85q\x02Rq\x03.", "builtins.eval"),
    (b"\x80\x04\x8c\x08builtins\x8c\x04exec\x93)R.", "builtins.exec"),
    (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nq\x00}b.", "not allowed"),  # BUILD
    (b"\x80\x02(i__builtin__\nlist\n.", "not allowed"),  # INST
    (b"\x80\x02\x82\x01.", "not allowed"),  # EXT1
    (b"\x80\x02]q\x00h\x00a.", "too deep|refers to itself"),  # a list holding itself
    (b"\x80\x02h\x05.", "never wrote"),
    (b"\x80\x02X\xff\xff\xff\x7f", "truncated"),
    (b"\x80\x02ccollections\nOrderedDict\nK\x01\x85R.", "not what torch.save writes"),
    (b"\x80\x02X\x01\x00\x00\x00aQ.", "not a tensor storage"),
])
def test_hostile_programs_are_refused(tmp_path: Path, program: bytes, message: str) -> None:
    with pytest.raises(UnsafePickle, match=message):
        load_pt(torch_zip(tmp_path / "x.pt", program))


def test_exponential_sharing_is_bounded(tmp_path: Path) -> None:
    """25 levels of (x, x) pairs: a 33-million-node tree from a 100-byte program."""
    program = b"\x80\x02]q\x00" + b"".join(b"h" + bytes([i]) + b"\x86q" + bytes([i + 1]) for i in range(25)) + b"."
    with pytest.raises(UnsafePickle, match="too large"):
        load_pt(torch_zip(tmp_path / "x.pt", program))


def _patched(program: bytes, old: bytes, new: bytes) -> bytes:
    assert program.count(old) == 1, old
    return program.replace(old, new)


def test_tensor_that_reads_outside_its_storage_is_refused(tmp_path: Path) -> None:
    program, storages = saved_program(BASE[1])  # offset 6, size (6,), stride (1,) on a storage of 24
    # offset 6 is BININT1 6 right after the persistent id; make it 20 so the tensor ends past element 23
    bad = _patched(program, b"QK\x06K\x06\x85", b"QK\x14K\x06\x85")
    with pytest.raises(UnsafePickle, match="past the end of its storage"):
        load_pt(torch_zip(tmp_path / "x.pt", bad, storages))
    huge_stride = _patched(program, b"K\x01\x85", b"J\x00\x00\x00\x10\x85")
    with pytest.raises(UnsafePickle, match="past the end"):
        load_pt(torch_zip(tmp_path / "y.pt", huge_stride, storages))


def test_storage_must_match_its_declared_size_and_be_uncompressed(tmp_path: Path) -> None:
    program, storages = saved_program(BASE)
    (key,) = storages
    with pytest.raises(UnsafePickle, match="expected 96"):
        load_pt(torch_zip(tmp_path / "a.pt", program, {key: storages[key][:-4]}))
    with pytest.raises(UnsafePickle, match="lacks archive/data/0"):
        load_pt(torch_zip(tmp_path / "b.pt", program, {}))
    with pytest.raises(UnsafePickle, match="compressed"):
        load_pt(torch_zip(tmp_path / "c.pt", program, storages, compress=zipfile.ZIP_DEFLATED))
    huge = _patched(program, b"K\x18t", b"J\xff\xff\xff\x7ft")  # a storage of 2**31 elements
    with pytest.raises(UnsafePickle, match="out of bounds"):
        load_pt(torch_zip(tmp_path / "d.pt", huge, storages))


def test_pickle_module_is_never_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle was used")

    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    path = tmp_path / "x.pt"
    torch.save({"a": BASE}, path)
    assert_same(load_pt(path), {"a": BASE.numpy()})
