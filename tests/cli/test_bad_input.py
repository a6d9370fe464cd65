"""Bad input is an answer, not a traceback: broken carried files stop a bake before anything is written, a flat gate
file without a layer count names --base, and an internal error is one line (the traceback with --debug)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bake.commands.inspect_cmd as inspect_cmd
from bake.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def broken_base(tiny_base: Path, tmp_path: Path) -> Path:
    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    text = (base / "tokenizer.json").read_text()
    (base / "tokenizer.json").write_text(text[: len(text) // 2])  # a download cut in half
    return base


@pytest.mark.parametrize("verify", [[], ["--verify"]], ids=["bake", "bake --verify"])
def test_a_broken_tokenizer_stops_the_bake_before_anything_is_written(broken_base: Path, tiny_gates: Path,
                                                                      tmp_path: Path, verify: list[str],
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["bake", "--base", str(broken_base), "--gates", str(tiny_gates / "chat_mean"), "--preset", "2",
                 "--out", str(out), "--quiet", *verify])
    err = capsys.readouterr().err
    assert code == 2 and f"{broken_base / 'tokenizer.json'} is not valid JSON" in err and "download it again" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["base"]  # no temporary, no lock
    assert "Traceback" not in err


def test_a_broken_chat_template_and_generation_config(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    args = ["bake", "--base", str(base), "--gates", str(tiny_gates / "chat_mean"), "--preset", "2", "--out",
            str(tmp_path / "o"), "--quiet"]
    (base / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }")
    assert main(args) == 2 and "its chat template is not valid Jinja" in capsys.readouterr().err
    shutil.copy2(tiny_base / "chat_template.jinja", base / "chat_template.jinja")
    (base / "generation_config.json").write_text('{"eos_token_id": "<|im_end|>"}')
    assert main(args) == 2 and "eos_token_id is '<|im_end|>', not a token id" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_flat_gate_file_without_a_layer_count_names_base(tiny_gates: Path, tiny_base: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--gates", str(tiny_gates), "--variant", "chat_mean"]) == 2
    err = capsys.readouterr().err
    assert "a flat tensor of 512 gate logits does not say how many layers it covers; give --base" in err
    assert "base model has" not in err  # there is no base model to speak of
    assert main(["inspect", "--gates", str(tiny_gates), "--variant", "chat_mean", "--num-layers", "28"]) == 2
    assert "not a whole number of neurons for each of --num-layers 28 layers" in capsys.readouterr().err
    assert main(["inspect", "--gates", str(tiny_gates), "--variant", "chat_mean", "--base", str(tiny_base)]) == 0


def test_an_internal_error_is_one_line_and_debug_shows_the_traceback(tiny_gates: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(inspect_cmd, "inspect_report", broken)
    args = ["inspect", "--gates", str(tiny_gates), "--num-layers", "4"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("internal error (a bug in lambda-bake")
    assert "ZeroDivisionError: a bug" in err and "lambda-bake --debug inspect" in err and "LAMBDA_BAKE_DEBUG=1" in err
    with pytest.raises(ZeroDivisionError):
        main(["--debug", *args])
    monkeypatch.setenv("LAMBDA_BAKE_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(args)


def test_user_errors_never_take_the_internal_error_path(tmp_path: Path) -> None:
    """A damaged input through the real entry point: exit 2, one message, no traceback."""
    (tmp_path / "gates").mkdir()
    (tmp_path / "gates" / "lambda_logits.pt").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    proc = subprocess.run([sys.executable, "-m", "bake.cli", "inspect", "--gates", str(tmp_path / "gates"),
                           "--num-layers", "4"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "download it again" in proc.stderr and "Traceback" not in proc.stderr
