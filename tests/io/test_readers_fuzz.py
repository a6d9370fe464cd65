"""Every reader is total: damaged or edited files parse into what is expected or raise lambda-bake's own error
(naming the file), never another exception, and quickly. Seeded and bounded (tests/fuzzing.py)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fuzzing import FUZZ, damaged, edited_json
from hypothesis import given
from hypothesis import strategies as st

from bake.errors import BakeError
from bake.gates.gate_math import Cut, GateSettings
from bake.gates.variant import load_variant
from bake.io.base_model import open_base_model
from bake.io.tensor_io import CheckpointReader
from bake.verify.verifier import spec_from_manifest
from bake.write.checkpoint import check_carried_files
from bake.write.manifest import read_manifest
from bake.write.pipeline import BakeOptions, bake_checkpoint
from export.onnx.folder import read_export_folder


@pytest.fixture(scope="module")
def corpus(tiny_base: Path, tiny_gates: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real base, variant folder, bake (with a uniform cut and a verification-free manifest) and export."""
    from export.onnx.exporter import export_onnx

    root = tmp_path_factory.mktemp("corpus")
    v = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    bake_checkpoint(tiny_base, v, GateSettings(Cut("preset", 3), "hard", "energy", rule="uniform"), root / "bake",
                    BakeOptions(layout="pruned", pad_multiple=8, progress=False))
    export_onnx(root / "bake", root / "onnx", quantize="int4", layout="ragged", progress=False)
    return {"base": tiny_base, "variant": tiny_gates / "chat_energy_optA", "bake": root / "bake",
            "onnx": root / "onnx"}


def total(read: Callable[[], Any]) -> None:
    """``read()`` returns or raises a BakeError (whose message names something), within a time bound."""
    started = time.monotonic()
    try:
        read()
    except BakeError as e:
        assert str(e)
    assert time.monotonic() - started < 5.0


def with_file(src: Path, tmp: Path, name: str, data: bytes | str) -> Path:
    """A copy of the folder ``src`` with ``name`` replaced by ``data``."""
    dst = tmp / src.name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=True)
    (dst / name).write_bytes(data.encode() if isinstance(data, str) else data)
    return dst


def json_damage(path: Path) -> st.SearchStrategy[bytes | str]:
    raw = path.read_bytes()
    return damaged(raw) | edited_json(json.loads(raw))


def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=st.data())
def test_config_json(corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    folder = with_file(corpus["base"], fuzz_dir(tmp_path_factory), "config.json",
                       data.draw(json_damage(corpus["base"] / "config.json")))
    total(lambda: open_base_model(folder))


@FUZZ
@given(data=st.data())
def test_safetensors_header_and_data(corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory,
                                     data: st.DataObject) -> None:
    raw = (corpus["base"] / "model.safetensors").read_bytes()
    header = 8 + int.from_bytes(raw[:8], "little")
    damage = data.draw(damaged(raw[:header + 64]))  # the header and the first bytes of data, where damage matters
    folder = with_file(corpus["base"], fuzz_dir(tmp_path_factory), "model.safetensors", damage + raw[header + 64:])

    def read() -> None:
        reader = CheckpointReader(folder)
        for name in reader.names():
            reader.rows(name)

    total(read)


@FUZZ
@given(data=st.data(), name=st.sampled_from(["gate_stats.json", "neuron_indices.json", "selected_thresholds.txt"]))
def test_gate_side_files(corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject,
                         name: str) -> None:
    src = corpus["variant"] / name
    damage = data.draw(damaged(src.read_bytes()) if name.endswith(".txt") else json_damage(src))
    folder = with_file(corpus["variant"], fuzz_dir(tmp_path_factory), name, damage)
    total(lambda: load_variant(folder, num_layers=4, intermediate_size=128))


@FUZZ
@given(data=st.data())
def test_bake_manifest(corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    folder = with_file(corpus["bake"], fuzz_dir(tmp_path_factory), "bake_manifest.json",
                       data.draw(json_damage(corpus["bake"] / "bake_manifest.json")))
    total(lambda: spec_from_manifest(read_manifest(folder)))


@FUZZ
@given(data=st.data(), name=st.sampled_from(["onnx_io.json", "model.safetensors.index.json"]))
def test_onnx_io_and_shard_index(corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory,
                                 data: st.DataObject, name: str) -> None:
    if name == "onnx_io.json":
        folder = with_file(corpus["onnx"], fuzz_dir(tmp_path_factory), name,
                           data.draw(json_damage(corpus["onnx"] / name)))
        total(lambda: read_export_folder(folder))
        return
    index = {"metadata": {"total_size": 1}, "weight_map": {"model.norm.weight": "model.safetensors"}}
    folder = with_file(corpus["base"], fuzz_dir(tmp_path_factory), name, data.draw(edited_json(index)))
    total(lambda: CheckpointReader(folder))


@FUZZ
@given(data=st.data(), name=st.sampled_from(["tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                                             "generation_config.json"]))
def test_carried_files(corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject,
                       name: str) -> None:
    src = corpus["base"] / name
    damage = data.draw(damaged(src.read_bytes()) if name.endswith(".jinja") else json_damage(src))
    folder = with_file(corpus["base"], fuzz_dir(tmp_path_factory), name, damage)
    total(lambda: check_carried_files(folder))
