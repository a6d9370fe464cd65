"""Damaged GGUF files (truncations, bit flips, byte rewrites, splices; in the header and metadata or anywhere)
through every reader lambda-bake has for them before llama.cpp sees one: the reader, the verify candidate, the
weight proof and the model card's summary. Each either works (the proof then fails a damaged tensor, naming it)
or raises the project's own error naming the file; never another exception."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from fuzzing import FUZZ, damaged
from hypothesis import given, settings
from hypothesis import strategies as st

from bake.errors import BakeError
from bake.gates.gate_math import Cut, GateSettings
from bake.gates.variant import load_variant
from bake.verify.candidates import gguf_candidate
from bake.verify.weights.bake_tensors import BakeFolder
from bake.verify.weights.gguf_check import check_gguf_weights
from bake.write.model_card import gguf_summary
from bake.write.pipeline import BakeOptions, bake_checkpoint
from export.gguf.writer import export_gguf

HEAD = 6000  # the tiny model's header, metadata and tensor infos lie in about the first 5 kB


@pytest.fixture(scope="module")
def gguf_file(tiny_base: Path, tiny_gates: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    root = tmp_path_factory.mktemp("gguf-fuzz")
    v = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    bake_checkpoint(tiny_base, v, GateSettings(Cut("preset", 3), "hard", "energy"), root / "bake",
                    BakeOptions(progress=False))
    export_gguf(root / "bake", root / "m.gguf", gguf_type_name="q8_0", layout="ragged", progress=False)
    return root / "bake", (root / "m.gguf").read_bytes()


@FUZZ
@given(data=st.data(), where=st.sampled_from(["head", "anywhere"]))
def test_damaged_gguf_is_read_or_refused_by_name(gguf_file: tuple[Path, bytes], tmp_path_factory: pytest.TempPathFactory,
                                                 data: st.DataObject, where: str) -> None:
    bake, raw = gguf_file
    bad = data.draw(damaged(raw[:HEAD])) + raw[HEAD:] if where == "head" else data.draw(damaged(raw))
    path = tmp_path_factory.mktemp("bad") / "m.gguf"
    path.write_bytes(bad)
    for read in (gguf_candidate, gguf_summary, lambda p: check_gguf_weights(p, BakeFolder(bake))):
        try:
            result = read(path)
        except BakeError as e:
            assert str(path) in str(e)
            continue
        if read not in (gguf_candidate, gguf_summary) and not result.passed:
            assert all(f.tensor and f.tensor in f.message for f in result.failures)


def test_a_manifest_that_is_not_an_object_is_no_manifest(gguf_file: tuple[Path, bytes], tmp_path: Path) -> None:
    """Valid JSON of the wrong shape under lambda_bake.manifest: verify treats the file as one without a manifest
    (float32 bake assumed), push refuses it by name."""
    import gguf

    from bake.errors import HubError
    from bake.hub.push import push_folder
    from bake.write.manifest import GGUF_MANIFEST_KEY

    _, raw = gguf_file
    manifest = gguf.GGUFReader(_write(tmp_path / "ok.gguf", raw)).fields[GGUF_MANIFEST_KEY].contents().encode()
    path = _write(tmp_path / "list.gguf", raw.replace(manifest, b"[" + b" " * (len(manifest) - 2) + b"]"))
    assert gguf_candidate(path).manifest is None
    with pytest.raises(HubError, match="carries no lambda-bake manifest"):
        push_folder(path, "me/x", api=object())


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_gguf_is_parsed_once_per_version(gguf_file: tuple[Path, bytes], tmp_path: Path) -> None:
    """verify's candidate, weight proof and dequantized model share one parse; a file written anew is read anew."""
    from bake.io.gguf_reader import read_gguf
    from bake.verify.weights.gguf_check import field

    bake, raw = gguf_file
    path = _write(tmp_path / "m.gguf", raw)
    first = read_gguf(path)
    assert read_gguf(path) is first
    export_gguf(bake, path, gguf_type_name="f32", overwrite=True, progress=False)  # same path, a new file
    again = read_gguf(path)
    assert again is not first and int(field(again, "general.file_type")) == 0


CLI = [sys.executable, "-c", "from bake.cli import main; raise SystemExit(main())"]


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python (the [gguf] extra)")
@settings(FUZZ, max_examples=8, deadline=None)  # two commands in child processes: seconds each
@given(data=st.data())
def test_damaged_gguf_through_generate_and_verify_never_ends_in_a_signal(
        gguf_file: tuple[Path, bytes], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    """Damaged metadata (the vocabulary, token types, special ids, hyperparameters) through the two commands that
    hand a file to llama.cpp, each in its own process as a user runs it: a clear exit 2 or 3 (or 0 where the
    damage changed nothing the command reads), never exit 1 and never a signal (llama.cpp's abort is exit -6)."""
    bake, raw = gguf_file
    path = tmp_path_factory.mktemp("bad-cli") / "m.gguf"
    path.write_bytes(data.draw(damaged(raw[:HEAD])) + raw[HEAD:])
    for command, allowed in ((["generate", "--gguf", str(path), "--prompt", "hi", "--max-new-tokens", "2"], (0, 2)),
                             (["verify", "--baked", str(bake), "--gguf", str(path), "--quiet", "--greedy-tokens", "2"],
                              (0, 2, 3))):
        done = subprocess.run([*CLI, *command], capture_output=True, text=True, timeout=600)
        assert done.returncode in allowed, (command[0], done.returncode, done.stderr[-2000:])
        if done.returncode == 2:
            assert str(path) in done.stderr and "Traceback" not in done.stderr


def test_a_damaged_array_count_is_refused_not_looped_on(gguf_file: tuple[Path, bytes], tmp_path: Path) -> None:
    """One array count rewritten to 2^40 (gguf-py alone loops once per claimed entry past the end of the file,
    allocating until memory runs out): every reader refuses the file by name at once."""
    import gguf
    import numpy as np

    _, raw = gguf_file
    reader = gguf.GGUFReader(_write(tmp_path / "ok.gguf", raw))
    count = reader.fields["tokenizer.ggml.merges"].parts[4]  # key length, key, type, item type, count, items...
    at = count.ctypes.data - reader.data.ctypes.data
    bad = bytearray(raw)
    bad[at:at + 8] = np.uint64(2**40).tobytes()
    path = _write(tmp_path / "count.gguf", bytes(bad))
    for read in (gguf_candidate, gguf_summary):
        with pytest.raises(BakeError, match="past the end of the file"):
            read(path)
