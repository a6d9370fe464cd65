"""Every option that takes a path says exactly what is wrong with it: missing, a file where a folder
belongs (or a folder where a file belongs), or an empty folder. Outputs: created, refused, used."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from bake.cli import main
from bake.commands.common import BASE_ARG, GATES_ARG
from bake.commands.demo_cmd import workdir_arg
from bake.errors import EXIT_USER

MODEL = "a Qwen3 model folder (config.json and .safetensors weights)"
BAKED = "a baked model folder (the --out of lambda-bake bake)"
EXPORT = "an ONNX export folder (the --out of lambda-bake export)"
GATES = "a gate variant folder (or a folder of variants, or a .pt/.safetensors gate file)"
PROMPTS = "a JSONL prompt file"
HUB = ", or a Hub repo id (owner/name)"

Argv = Callable[[str, Path, Path, Path], list[str]]  # (bad path, base, gates, tmp) -> arguments

# command, option, what belongs there, Hub ids accepted, the arguments with the bad path in place
OPTIONS: list[tuple[str, str, str, bool, Argv]] = [
    ("bake", "--base", MODEL, True, lambda p, b, g, t: ["bake", "--base", p, "--gates", str(g), "--out", str(t / "o")]),
    ("bake", "--gates", GATES, True, lambda p, b, g, t: ["bake", "--base", str(b), "--gates", p, "--out", str(t / "o")]),
    ("bake", "--prompts", PROMPTS, False, lambda p, b, g, t: ["bake", "--base", str(b), "--gates", str(g), "--out",
                                                              str(t / "o"), "--verify", "--prompts", p]),
    ("verify", "--baked", BAKED, False, lambda p, b, g, t: ["verify", "--baked", p]),
    ("verify", "--onnx", EXPORT, False, lambda p, b, g, t: ["verify", "--onnx", p]),
    ("verify", "--base", MODEL, True, lambda p, b, g, t: ["verify", "--base", p, "--gates", str(g)]),
    ("verify", "--gates", GATES, True, lambda p, b, g, t: ["verify", "--base", str(b), "--gates", p]),
    ("verify", "--prompts", PROMPTS, False, lambda p, b, g, t: ["verify", "--prompts", p]),
    ("export", "--model", MODEL, False, lambda p, b, g, t: ["export", "--model", p, "--out", str(t / "o")]),
    ("generate", "--onnx", EXPORT, False, lambda p, b, g, t: ["generate", "--onnx", p, "--prompt", "Hi"]),
    ("inspect", "--gates", GATES, False, lambda p, b, g, t: ["inspect", "--gates", p]),
    ("inspect", "--base", MODEL, False, lambda p, b, g, t: ["inspect", "--gates", str(g), "--base", p]),
    ("hooked", "--base", MODEL, True, lambda p, b, g, t: ["hooked", "--base", p, "--gates", str(g), "--prompt", "Hi"]),
    ("hooked", "--gates", GATES, True, lambda p, b, g, t: ["hooked", "--base", str(b), "--gates", p, "--prompt", "Hi"]),
    ("push", "DIR", BAKED, False, lambda p, b, g, t: ["push", p, "--repo-id", "me/model"]),
]


def bad_path(tmp_path: Path, case: str, wants_file: bool) -> tuple[Path, str]:
    """The path for ``case`` and the words the message must use for it."""
    if case == "missing":
        return tmp_path / "missing", "does not exist"
    if case == "wrong kind":
        if wants_file:
            folder = tmp_path / "a-folder"
            folder.mkdir()
            (folder / "prompts.jsonl").write_text('"hello"\n')
            return folder, "is a folder, not a file"
        (tmp_path / "a-file.txt").write_text("not a folder")
        return tmp_path / "a-file.txt", "is a file, not a folder"
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty", "is an empty folder, not a file" if wants_file else "is an empty folder"


@pytest.mark.parametrize("case", ["missing", "wrong kind", "empty folder"])
@pytest.mark.parametrize("command,option,expected,hub,argv", OPTIONS, ids=[f"{c} {o}" for c, o, *_ in OPTIONS])
def test_every_path_option_names_the_problem(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str], case: str, command: str,
                                             option: str, expected: str, hub: bool, argv: Argv) -> None:
    path, problem = bad_path(tmp_path, case, wants_file=expected == PROMPTS)
    if case == "missing" and hub:
        problem = "does not exist and is not a Hub repo id"
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_:
        main(argv(str(path), tiny_base, tiny_gates, tmp_path))
    assert exit_.value.code == EXIT_USER
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"lambda-bake {command}: error: argument {option}: {path} {problem}; expected {expected}"
        + (HUB if hub else ""))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_the_issue_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["verify", "--baked", "/no/such/folder"])
    assert exit_.value.code == EXIT_USER
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"lambda-bake verify: error: argument --baked: /no/such/folder does not exist; expected {BAKED}")


def test_hub_ids_pass_as_hub_ids_and_gate_files_as_gates(tiny_gates: Path) -> None:
    """A path that does not exist but has the form owner/name is left to the Hub, as before."""
    assert BASE_ARG("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"
    assert GATES_ARG("hyunseoki/qwen3-0.6b-lambda-gates-chat") == "hyunseoki/qwen3-0.6b-lambda-gates-chat"
    gate_file = tiny_gates / "chat_mean" / "lambda_logits.pt"
    assert GATES_ARG(str(gate_file)) == str(gate_file)


@pytest.mark.parametrize("command", ["bake", "export"])
def test_out_missing_is_created_a_file_is_refused_an_empty_folder_is_used(
        tiny_base: Path, tiny_gates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    def run(out: Path) -> int:
        if command == "bake":
            return main(["bake", "--base", str(tiny_base), "--gates", str(tiny_gates / "chat_mean"), "--preset", "1",
                         "--out", str(out), "--quiet"])
        return main(["export", "--model", str(tiny_base), "--out", str(out), "--quiet"])

    def expected_files(out: Path) -> list[str]:
        if command == "bake":
            return json.loads((out / "bake_manifest.json").read_text())["files"]
        return ["chat_template.jinja", "config.json", "genai_config.json", "generation_config.json", "model.onnx",
                "onnx_io.json", "tokenizer.json", "tokenizer_config.json"]

    missing = tmp_path / "new" / "deeper" / "out"
    assert run(missing) == 0 and sorted(p.name for p in missing.iterdir()) == expected_files(missing)
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    assert run(a_file) == EXIT_USER
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {a_file} exists and is a file; choose another --out"
    assert a_file.read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(empty) == 0 and sorted(p.name for p in empty.iterdir()) == expected_files(empty)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "empty", "new"]


def test_demo_workdir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert workdir_arg(str(tmp_path / "new")) == tmp_path / "new"  # created by the demo
    (tmp_path / "empty").mkdir()
    assert workdir_arg(str(tmp_path / "empty")) == tmp_path / "empty"
    earlier = tmp_path / "earlier"
    for name in ("base", "gates", "baked", "trained", "sets"):
        (earlier / name).mkdir(parents=True)
    assert workdir_arg(str(earlier)) == earlier
    (tmp_path / "a-file").write_text("mine")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("mine")
    for path, message in ((tmp_path / "a-file", "is a file, not a folder"),
                          (tmp_path / "home", "holds other things (thesis.tex) and the demo writes base, gates, "
                                              "baked, trained, sets into it")):
        with pytest.raises(SystemExit) as exit_:
            main(["demo", "--workdir", str(path)])
        assert exit_.value.code == EXIT_USER
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"lambda-bake demo: error: argument --workdir: {path} {message}; give a new or empty folder, or an "
            "earlier demo's --workdir")
