"""The torch-free ``.pt`` reader, differentially against ``torch.load(weights_only=True)``: valid files of every kind
come back exactly; damaged ones come back right or raise the reader's own error, never another exception, never
running anything, always quickly."""

from __future__ import annotations

import io
import os
import subprocess
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fuzzing import FUZZ, damaged
from helpers import as_numpy
from hypothesis import given
from hypothesis import strategies as st

from bake.cli import main
from bake.gates.pt_reader import PtReadError, load_pt

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool]


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
                and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and (a == b or (a != a and b != b))


@st.composite
def tensors(draw: Any) -> torch.Tensor:
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    t = (torch.randn(shape, generator=g) * 50).to(dtype) if dtype.is_floating_point else \
        torch.randint(0, 2, shape, generator=g).to(dtype) if dtype == torch.bool else \
        torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, generator=g).to(dtype)
    view = draw(st.sampled_from(["as-is", "slice", "transpose", "parameter"]))
    if view == "slice" and t.dim() and t.shape[0] > 1:
        t = t[1:]
    elif view == "transpose" and t.dim() >= 2:
        t = t.transpose(0, 1)
    elif view == "parameter" and dtype.is_floating_point:
        t = torch.nn.Parameter(t, requires_grad=False)
    return t


containers = st.recursive(
    tensors() | st.integers(-5, 5) | st.text(max_size=5) | st.none(),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
    | st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=3)
    | st.dictionaries(st.integers(0, 9), inner, max_size=3).map(OrderedDict),
    max_leaves=6,
)


def saved(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def torch_load(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


@FUZZ
@given(obj=containers)
def test_valid_files_come_back_exactly(tmp_path_factory: pytest.TempPathFactory, obj: Any) -> None:
    path = tmp_path_factory.mktemp("pt") / "x.pt"
    path.write_bytes(saved(obj))
    assert same(load_pt(path), as_numpy(torch_load(path.read_bytes())))


def test_shared_storages_come_back_as_their_views(tmp_path: Path) -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {"whole": base, "row": base[2], "col": base[:, 3], "again": base}
    (tmp_path / "x.pt").write_bytes(saved(obj))
    got = load_pt(tmp_path / "x.pt")
    assert same(got, as_numpy(obj))


SEEDS = [saved(torch.randn(4, 8)), saved({"model.layers.0.mlp": torch.randn(16), "model.layers.1.mlp": torch.randn(16)}),
         saved([torch.randn(8).half(), torch.randn(8).to(torch.bfloat16)]),
         saved({"lambda_logits": OrderedDict([(0, torch.randn(5)), (1, torch.randn(5))])})]


@FUZZ
@given(seed_and_data=st.sampled_from(SEEDS).flatmap(lambda seed: st.tuples(st.just(seed), damaged(seed))))
def test_damaged_files_give_the_right_data_or_the_readers_error(tmp_path_factory: pytest.TempPathFactory,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                seed_and_data: tuple[bytes, bytes]) -> None:
    """Right data: what torch.load reads from the same bytes; where torch refuses them (a damaged entry the reader
    does not need, such as .storage_alignment), the object of the undamaged file."""
    seed, data = seed_and_data
    def ran(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the file ran a command")

    monkeypatch.setattr(os, "system", ran)
    monkeypatch.setattr(subprocess, "Popen", ran)
    path = tmp_path_factory.mktemp("pt") / "x.pt"
    path.write_bytes(data)
    started = time.monotonic()
    try:
        got = load_pt(path)
    except PtReadError:
        got = None
    assert time.monotonic() - started < 2.0
    if got is not None:
        try:
            want = torch_load(data)
        except Exception:  # noqa: BLE001 - torch rejects more damage than the reader needs to see
            want = torch_load(seed)
        assert same(got, as_numpy(want))


# Regressions: bytes that made zipfile raise its own exceptions through the reader (issue 22's fuzz findings).
def _with_bad_name(data: bytes) -> bytes:
    """The first central-directory file name made invalid UTF-8 with the UTF-8 flag set."""
    at = data.rfind(b"PK\x01\x02")
    out = bytearray(data)
    out[at + 8] |= 0x08  # general purpose flag bit 11 (0x0800): the name is UTF-8
    out[at + 9] |= 0x08
    out[at + 46] = 0xFF  # the name's first byte: not UTF-8
    return bytes(out)


def _with_bad_version(data: bytes) -> bytes:
    """The first local header's 'version needed to extract' set far past what zipfile supports."""
    out = bytearray(data)
    out[4] = 0xFF
    out[5] = 0x00
    at = data.rfind(b"PK\x01\x02")
    out[at + 6] = 0xFF  # and in the central directory
    return bytes(out)


@pytest.mark.parametrize("damage", [_with_bad_name, _with_bad_version], ids=["non-utf8-name", "zip-version"])
def test_zipfile_exceptions_are_a_damaged_download(tmp_path: Path, tiny_gates: Path, damage: Any,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "chat_mean"
    folder.mkdir()
    for f in (tiny_gates / "chat_mean").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "lambda_logits.pt").write_bytes(damage((tiny_gates / "chat_mean" / "lambda_logits.pt").read_bytes()))
    with pytest.raises(PtReadError):
        load_pt(folder / "lambda_logits.pt")
    assert main(["inspect", "--gates", str(folder), "--num-layers", "4"]) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'lambda_logits.pt'}: cannot read the gate file" in err and "download it again" in err
    assert "Traceback" not in err
