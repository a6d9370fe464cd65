"""The model card's GGUF metadata scan (``read_gguf_metadata``) against gguf-py's full reader: the same value for
every scalar and string key, arrays of every kind stepped over, a damaged count refused, and a real export's card
summary as gguf-py reads the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from bake.io.gguf_reader import read_gguf_metadata

SCALARS = {"u8": (7, GGUFValueType.UINT8), "i8": (-7, GGUFValueType.INT8), "u16": (700, GGUFValueType.UINT16),
           "i16": (-700, GGUFValueType.INT16), "u32": (70000, GGUFValueType.UINT32),
           "i32": (-70000, GGUFValueType.INT32), "f32": (0.5, GGUFValueType.FLOAT32), "yes": (True, GGUFValueType.BOOL),
           "u64": (1 << 40, GGUFValueType.UINT64), "i64": (-(1 << 40), GGUFValueType.INT64),
           "f64": (0.125, GGUFValueType.FLOAT64)}


def write(path: Path) -> Path:
    w = GGUFWriter(str(path), "qwen3")
    w.add_array("tokens", [f"tok{i}" for i in range(5000)])  # string arrays, then a nested one, before the keys
    w.add_array("nested", [[1, 2], [3]])
    w.add_array("floats", [0.5, 1.5, 2.5])
    w.add_array("flags", [True, False, True])  # 1-byte items: a scan that assumed 4 would land mid-key
    for key, (value, kind) in SCALARS.items():
        w.add_key_value(key, value, kind)
    w.add_string("name", "qwen3 ragged Ωmega")
    w.add_tensor("w", np.ones((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_every_scalar_and_string_as_gguf_py_reads_it(tmp_path: Path) -> None:
    path = write(tmp_path / "m.gguf")
    fields = GGUFReader(str(path)).fields
    wanted = set(SCALARS) | {"name", "general.architecture", "absent"}
    got = read_gguf_metadata(path, wanted)
    assert set(got) == wanted - {"absent"}
    for key in wanted - {"absent"}:
        assert got[key] == fields[key].contents(), key
    assert got["name"] == "qwen3 ragged Ωmega" and got["u64"] == 1 << 40 and got["yes"] is True


def test_a_damaged_count_is_refused(tmp_path: Path) -> None:
    raw = bytearray(write(tmp_path / "m.gguf").read_bytes())
    at = raw.index(b"tokens") + len(b"tokens") + 4 + 4  # the string array's element count
    raw[at:at + 8] = (1 << 62).to_bytes(8, "little")
    (tmp_path / "bad.gguf").write_bytes(raw)
    with pytest.raises(ValueError, match="past the end of the file"):
        read_gguf_metadata(tmp_path / "bad.gguf", {"name"})
    (tmp_path / "short.gguf").write_bytes(raw[:40])
    with pytest.raises(ValueError):
        read_gguf_metadata(tmp_path / "short.gguf", {"name"})


def test_a_real_exports_card_summary(tiny_base: Path, tiny_gates: Path, tmp_path: Path) -> None:
    from bake.gates.gate_math import Cut, GateSettings
    from bake.gates.variant import load_variant
    from bake.write.model_card import gguf_summary
    from bake.write.pipeline import BakeOptions, bake_checkpoint
    from export.gguf.writer import export_gguf

    v = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    bake_checkpoint(tiny_base, v, GateSettings(Cut("preset", 3), "hard", "energy"), tmp_path / "bake",
                    BakeOptions(progress=False))
    export_gguf(tmp_path / "bake", tmp_path / "m.gguf", gguf_type_name="q8_0", layout="ragged", progress=False)
    fields = GGUFReader(str(tmp_path / "m.gguf")).fields
    assert gguf_summary(tmp_path / "m.gguf") == {
        "file": "m.gguf", "type": "Q8_0", "arch": fields["general.architecture"].contents(),
        "layout": fields["lambda_bake.layout"].contents()}
    assert fields["lambda_bake.layout"].contents() == "ragged" and fields["general.architecture"].contents() == "openelm"
