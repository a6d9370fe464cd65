"""verify proves what a deployment carries besides weights: the tokenizer files, chat template, special ids and
sampling defaults of a checkpoint and its ONNX folder, genai_config.json, and a GGUF's vocabulary; each damage
fails the candidate (exit 3) naming the file, field and value, or (a GGUF llama.cpp would abort on) is refused by
name (exit 2) before llama.cpp loads it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from bake.cli import main
from bake.gates.gate_math import Cut, GateSettings
from bake.gates.variant import load_variant
from bake.write.pipeline import BakeOptions, bake_checkpoint

FAST = ["--quiet", "--greedy-tokens", "3"]


@pytest.fixture(scope="module")
def deploy(tiny_base: Path, tiny_gates: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bake with an ONNX folder inside it and a q8_0 GGUF beside it, as a deploy folder holds them."""
    from export.gguf.writer import export_gguf
    from export.onnx.exporter import export_onnx

    root = tmp_path_factory.mktemp("carried")
    v = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    bake_checkpoint(tiny_base, v, GateSettings(Cut("preset", 3), "hard", "energy"), root / "bake",
                    BakeOptions(progress=False))
    export_onnx(root / "bake", root / "onnx", progress=False)
    (root / "onnx").rename(root / "bake" / "onnx")  # where bake --onnx puts it
    export_gguf(root / "bake", root / "m.gguf", gguf_type_name="q8_0", layout="ragged", progress=False)
    return root


def _copy(deploy: Path, tmp_path: Path) -> Path:
    shutil.copytree(deploy / "bake", tmp_path / "bake")
    shutil.copy(deploy / "m.gguf", tmp_path / "m.gguf")
    return tmp_path


def _verify(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    code = main(["verify", *args, "--json", *FAST])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else {}, err


def _edit_json(path: Path, edit: Any) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _swap_two_ids(data: dict[str, Any]) -> None:
    """Tokens 300 and 301 trade ids (the vocabulary is still well formed: only the ids are wrong)."""
    vocab = data["model"]["vocab"]
    a, b = sorted((t for t in vocab if vocab[t] in (300, 301)), key=vocab.get)
    vocab[a], vocab[b] = 301, 300


def test_a_correct_deployment_proves_every_carried_file(deploy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report, _ = _verify(["--baked", str(deploy / "bake"), "--onnx", str(deploy / "bake" / "onnx"),
                               "--gguf", str(deploy / "m.gguf")], capsys)
    assert code == 0, [c["failures"] for c in report["candidates"]]
    proven = {c["name"].split(" ")[0]: c["carried"]["proven"] for c in report["candidates"]}
    for kind in ("checkpoint", "onnx"):
        assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"} <= set(proven[kind])
    assert {"genai_config.json model.eos_token_id", "genai_config.json search.temperature",
            "genai_config.json model.context_length"} <= set(proven["onnx"])
    assert {"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.chat_template", "tokenizer.ggml.eos_token_id",
            "llama.cpp's tokenization of verify's prompts"} <= set(proven["gguf"])


def test_two_ids_swapped_in_the_onnx_tokenizer_fail_naming_file_and_field(
        deploy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _copy(deploy, tmp_path)
    _edit_json(d / "bake" / "onnx" / "tokenizer.json", _swap_two_ids)
    code, report, _ = _verify(["--baked", str(d / "bake"), "--onnx", str(d / "bake" / "onnx")], capsys)
    assert code == 3
    checkpoint, onnx = report["candidates"]
    assert checkpoint["passed"] and not onnx["passed"]
    (failure,) = onnx["carried"]["failures"]
    assert failure["tensor"] == "tokenizer.json" and "model.vocab." in failure["message"]
    assert failure["message"].endswith(("is 301, the base's is 300", "is 300, the base's is 301"))


def test_generation_config_and_checkpoint_tokenizer_rewritten_fail(
        deploy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _copy(deploy, tmp_path)
    _edit_json(d / "bake" / "tokenizer.json", _swap_two_ids)
    _edit_json(d / "bake" / "generation_config.json", lambda g: g.update(eos_token_id=[5, 6], temperature=3.0))
    code, report, err = _verify(["--baked", str(d / "bake")], capsys)
    assert code == 3
    messages = [f["message"] for f in report["candidates"][0]["carried"]["failures"]]
    assert any(m.startswith("generation_config.json: differs from the base's: eos_token_id is ") for m in messages)
    assert any(m.startswith("tokenizer.json: differs from the base's: model.vocab.") for m in messages)


def test_config_field_the_bake_does_not_change_and_genai_eos_fail(
        deploy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _copy(deploy, tmp_path)
    _edit_json(d / "bake" / "onnx" / "genai_config.json", lambda g: g["model"].update(eos_token_id=7))
    _edit_json(d / "bake" / "config.json", lambda c: c.update(max_position_embeddings=64))
    code, report, _ = _verify(["--baked", str(d / "bake"), "--onnx", str(d / "bake" / "onnx")], capsys)
    assert code == 3
    checkpoint, onnx = (c["carried"]["failures"] for c in report["candidates"])
    assert [f["tensor"] for f in checkpoint] == ["config.json max_position_embeddings"]
    assert "genai_config.json model.eos_token_id" in [f["tensor"] for f in onnx]
    eos = next(f for f in onnx if f["tensor"] == "genai_config.json model.eos_token_id")
    assert eos["message"].startswith("genai_config.json model.eos_token_id: is 7, but the base's config")


def _damage_token(path: Path, token: int, new: bytes) -> None:
    """Rewrite one token string of a GGUF in place (same length), through gguf-py's writable reader."""
    import gguf

    reader = gguf.GGUFReader(str(path), "r+")
    f = reader.fields["tokenizer.ggml.tokens"]
    part = f.parts[f.data[token]]
    assert len(part) == len(new)
    part[:] = list(new)
    part.flush() if hasattr(part, "flush") else None
    del reader


def test_a_gguf_token_string_changed_fails_naming_the_token(
        deploy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _copy(deploy, tmp_path)
    _damage_token(d / "m.gguf", 300, b"Z" * len(_token(d / "m.gguf", 300)))
    code, report, _ = _verify(["--baked", str(d / "bake"), "--gguf", str(d / "m.gguf")], capsys)
    assert code == 3
    messages = [f["message"] for f in report["candidates"][1]["carried"]["failures"]]
    assert messages[0].startswith("tokenizer.ggml.tokens: token 300 is 'ZZ") and "(1 of " in messages[0]


def _token(path: Path, i: int) -> bytes:
    import gguf

    f = gguf.GGUFReader(str(path)).fields["tokenizer.ggml.tokens"]
    return bytes(f.parts[f.data[i]])


@pytest.mark.parametrize("damage", ["utf8", "type"])
def test_a_gguf_llama_cpp_would_abort_on_is_refused_by_name(deploy: Path, tmp_path: Path, damage: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A token string that is not UTF-8 (llama.cpp aborts the process on it) and a token type it does not know:
    verify and generate both exit 2 naming the field, and llama.cpp never loads the file in this process."""
    import gguf

    d = _copy(deploy, tmp_path)
    if damage == "utf8":
        raw = _token(d / "m.gguf", 300)
        _damage_token(d / "m.gguf", 300, b"\xff" + raw[1:])
        named = "tokenizer.ggml.tokens: token 300 is not UTF-8"
    else:
        reader = gguf.GGUFReader(str(d / "m.gguf"), "r+")
        f = reader.fields["tokenizer.ggml.token_type"]
        f.parts[f.data[42]][0] = 513
        del reader
        named = "tokenizer.ggml.token_type: token 42 has type 513"
    code, _, err = _verify(["--baked", str(d / "bake"), "--gguf", str(d / "m.gguf")], capsys)
    assert code == 2 and named in err
    assert main(["generate", "--gguf", str(d / "m.gguf"), "--prompt", "hi", "--max-new-tokens", "2"]) == 2
    assert named in capsys.readouterr().err


@pytest.mark.parametrize(("signal_number", "named"), [(6, "llama.cpp aborted loading"), (4, "illegal instruction")])
def test_a_child_process_killed_by_llama_cpp_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              signal_number: int, named: str) -> None:
    """The probe's child dies of a signal (an abort the checks did not foresee; a llama.cpp build this CPU cannot
    run): an ExportError naming the file (and, for SIGILL, the build and how to rebuild), never the signal here."""
    import subprocess

    from bake.errors import ExportError
    from export.gguf import loadable

    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    monkeypatch.setattr(loadable.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, -signal_number, "", ""))
    loadable._probe.cache_clear()
    with pytest.raises(ExportError, match=named) as e:
        loadable.probe(path)
    assert str(path) in str(e.value)
    if signal_number == 4:
        assert "--no-cache-dir" in str(e.value) and "GGML_NATIVE=OFF" in str(e.value)
