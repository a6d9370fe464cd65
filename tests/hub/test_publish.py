"""Publishing: nothing machine-local goes to the Hub, local copies say where they came from, the card reads like a
first-class Hub model card and its run instructions work without lambda-bake, and --dry-run shows exactly what a
push would send, offline."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from hub_fakes import FakeHfApi
from huggingface_hub import ModelCard

from bake.cli import main
from bake.hub import push
from bake.io.provenance import METADATA_DIR, sha256_file

BASE_ID, GATES_ID = "Qwen/Qwen3-0.6B", "hyunseoki/qwen3-0.6b-lambda-gates-chat"
COMMIT = "c0ffee" * 6 + "c0ff"


@pytest.fixture
def unique_inputs(tmp_path: Path, tiny_base: Path, tiny_gates: Path) -> tuple[Path, Path, Path]:
    """Base and gates copied under a path no file could hold by chance, as a user's own folders would be."""
    root = tmp_path / f"home-of-{uuid.uuid4().hex}" / "projects"
    base, gates = root / "Qwen3-0.6B", root / "qwen3-0.6b-lambda-gates-chat"
    shutil.copytree(tiny_base, base)
    shutil.copytree(tiny_gates, gates)
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# base\n")
    return root, base, gates


def bake(base: Path, gates: Path, out: Path, *extra: str) -> int:
    return main(["bake", "--base", str(base), "--gates", str(gates), "--variant", "chat_energy_optA", "--preset", "3",
                 "--out", str(out), "--quiet", *extra])


def test_nothing_machine_local_is_published(unique_inputs: tuple[Path, Path, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    root, base, gates = unique_inputs
    out = root / "out" / "baked"
    monkeypatch.setenv("HOME", str(root.parent))
    assert bake(base, gates, out, "--onnx", "--verify", "--greedy-tokens", "2") == 0
    local = json.loads((out / "bake_manifest.json").read_text())
    assert local["base"]["local_path"] == str(base.resolve())  # kept here, for verify on this machine
    assert local["base"]["source"] == "Qwen3-0.6B" and local["base"]["hub_id"] is None
    assert local["base"]["files_sha256"]["model.safetensors"] == sha256_file(base / "model.safetensors")
    api = FakeHfApi()
    push.push_folder(out, "me/baked", api=api)
    assert {"bake_manifest.json", "onnx/bake_manifest.json", "onnx/model.onnx", "README.md"} <= set(api.contents)
    for name, data in api.contents.items():
        assert str(root) not in data.decode("utf-8", "replace"), name  # no path of this machine, in any file
        assert str(root.parent) not in data.decode("utf-8", "replace"), name  # nor the home folder
    published = json.loads(api.contents["bake_manifest.json"])
    assert "local_path" not in published["base"] and "local_path" not in published["gates"]
    assert published["base"]["files_sha256"] == local["base"]["files_sha256"]
    assert published["verification"]["candidates"][1]["weights"]["export"] == "./onnx"
    assert main(["verify", "--baked", str(out), "--quiet", "--greedy-tokens", "2"]) == 0  # local_path still serves


def test_declared_hub_ids_become_the_cards_base_model(unique_inputs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, base, gates = unique_inputs
    out = tmp_path / "o"
    assert bake(base, gates, out, "--base-id", f"{BASE_ID}@{COMMIT}", "--gates-id", GATES_ID, "--uniform-width",
                "--layout", "pruned", "--pad-multiple", "1") == 0
    m = json.loads((out / "bake_manifest.json").read_text())
    assert (m["base"]["source"], m["base"]["hub_id"], m["base"]["revision"]) == (BASE_ID, BASE_ID, COMMIT)
    assert (m["gates"]["source"], m["gates"]["revision"]) == (GATES_ID, None)
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == BASE_ID and card.data.base_model_relation == "finetune"
    assert card.data.license == "apache-2.0"
    assert {"pruned", "uniform-width", "variant-chat_energy_optA", "off-50pct"} <= set(card.data.tags)
    assert f"[{GATES_ID}](https://huggingface.co/{GATES_ID})" in card.text
    assert f"at commit `{COMMIT[:12]}`" in card.text and "pip install lambda-bake" not in card.text
    with pytest.raises(SystemExit) as e:
        main(["bake", "--base", str(base), "--gates", str(gates), "--base-id", "not a repo", "--preset", "1",
              "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and not (tmp_path / "x").exists()


def test_a_local_dir_download_records_its_revision(unique_inputs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """`hf download REPO --local-dir DIR` leaves per-file metadata: its commit becomes the revision, its LFS etag
    the weights' sha256 (not read again)."""
    _, base, gates = unique_inputs
    meta = base / METADATA_DIR
    meta.mkdir(parents=True)
    fake_etag = "e" * 64
    for name, etag in (("config.json", "1" * 40), ("model.safetensors", fake_etag)):
        (meta / f"{name}.metadata").write_text(f"{COMMIT}\n{etag}\n{os.path.getmtime(base / name) + 5}\n")
    out = tmp_path / "o"
    assert bake(base, gates, out, "--base-id", BASE_ID) == 0
    m = json.loads((out / "bake_manifest.json").read_text())
    assert m["base"]["revision"] == m["base"]["downloaded_revision"] == COMMIT
    assert m["base"]["files_sha256"]["model.safetensors"] == fake_etag
    assert m["base"]["files_sha256"]["config.json"] == sha256_file(base / "config.json")  # a git etag: hashed
    (base / "model.safetensors").touch()  # modified since the download: its record no longer holds
    os.utime(base / "model.safetensors", (0, os.path.getmtime(base / "config.json") + 100))
    assert bake(base, gates, tmp_path / "p", "--base-id", BASE_ID) == 0
    m = json.loads((tmp_path / "p" / "bake_manifest.json").read_text())
    assert m["base"]["files_sha256"]["model.safetensors"] == sha256_file(base / "model.safetensors")


def test_dry_run_lists_exactly_what_a_push_sends_and_needs_no_network(
        unique_inputs: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _, base, gates = unique_inputs
    out = tmp_path / "o"
    assert bake(base, gates, out, "--base-id", BASE_ID, "--onnx") == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", str(out), "--repo-id", "me/baked", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    api = FakeHfApi()
    push.push_folder(out, "me/baked", api=api)
    assert [f["path"] for f in plan["files"]] == list(api.contents)
    assert [f["bytes"] for f in plan["files"]] == [len(d) for d in api.contents.values()]
    assert {f["path"] for f in plan["files"] if f["rewritten"]} == {"README.md", "bake_manifest.json",
                                                                   "onnx/bake_manifest.json"}
    assert plan["card"] == api.readme and plan["card_metadata"]["base_model"] == BASE_ID
    assert "onnx" in plan["card_metadata"]["tags"] and plan["dry_run"] is True
    assert main(["push", str(out), "--repo-id", "me/baked", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "(rewritten for the Hub)" in text and "nothing uploaded (dry run)" in text and "base_model:" in text


def test_a_file_that_still_holds_a_local_path_stops_the_push(unique_inputs: tuple[Path, Path, Path],
                                                             tmp_path: Path) -> None:
    _, base, gates = unique_inputs
    out = tmp_path / "o"
    assert bake(base, gates, out) == 0
    (out / "notes.txt").write_text(f"baked from {base}\n")
    api = FakeHfApi()
    with pytest.raises(push.HubError, match=r"notes.txt holds the machine-local path"):
        push.push_folder(out, "me/baked", api=api)
    assert api.calls == []


def _snippet(card: str, language: str, index: int = 0) -> str:
    return re.findall(rf"```{language}\n(.*?)```", card, flags=re.S)[index]


def test_the_cards_instructions_run_without_lambda_bake(tiny_base: Path, tiny_gates: Path, tmp_path: Path) -> None:
    """The transformers and onnxruntime-genai snippets of the card, run as written on the repo's files (the repo id
    replaced by the local copy): real consumers, no lambda-bake import."""
    out = tmp_path / "repo"
    assert bake(tiny_base, tiny_gates, out, "--onnx", "--base-id", BASE_ID) == 0
    card = push.plan_upload(out, "me/baked").card()
    python = _snippet(card, "python", 0).replace('"me/baked"', repr(str(out)))
    genai = _snippet(card, "python", 1).replace('"model/onnx"', repr(str(out / "onnx")))
    assert 'hf download me/baked --include "onnx/*" --local-dir model' in _snippet(card, "bash")
    for code in (python, genai):
        proc = subprocess.run([sys.executable, "-c", "import sys; sys.modules['bake'] = None\n" + code],
                              capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip()  # it generated text


def test_card_of_a_cuda_export_names_its_dtype_and_alignment(tiny_base: Path, tiny_gates: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert bake(tiny_base, tiny_gates, out, "--onnx", "--onnx-target", "cuda", "--onnx-dtype", "bfloat16",
                "--onnx-layout", "ragged") == 0
    io = json.loads((out / "onnx" / "onnx_io.json").read_text())
    padding = sum(io["mlp_padding"])
    assert padding > 0 and all(w % 64 == 0 for w in io["mlp_widths"])
    card = (out / "README.md").read_text()
    assert (f"target `cuda`, bfloat16, layout ragged, MLP widths aligned to 64 ({padding:,} zero neurons added), "
            "with KV cache") in card


def test_every_usage_the_card_gives_renders_the_chat_with_thinking_off(tiny_base: Path, tiny_gates: Path,
                                                                       tmp_path: Path) -> None:
    """The gates were trained with enable_thinking=False: the prompt of each snippet of the card (transformers,
    onnxruntime-genai, llama-cpp-python, mlx-lm) is apply_chat_template(..., add_generation_prompt=True,
    enable_thinking=False) of the same chat, rendered here by each one's own tokenizer; llama-server's flag and the
    Ollama Modelfile are checked as written (the Modelfile's template is rendered by Go in test_modelfile.py)."""
    import ast
    import json as json_module

    import onnxruntime_genai as og
    from transformers import AutoTokenizer

    out = tmp_path / "repo"
    assert bake(tiny_base, tiny_gates, out, "--onnx", "--gguf", "--gguf-type", "f32", "--mlx", "--base-id",
                BASE_ID) == 0
    card = push.plan_upload(out, "me/baked").card()
    messages = [{"role": "user", "content": "What is 2+2?"}]
    tok = AutoTokenizer.from_pretrained(str(out))
    want = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    python = _snippet(card, "python", 0)
    assert "enable_thinking=False" in python and "add_generation_prompt=True" in python  # transformers, as want is
    genai = _snippet(card, "python", 1)
    assert f"messages = {json_module.dumps(messages)}" in genai
    suffix = ast.literal_eval(re.search(r"prompt \+= (\".*?\")  #", genai).group(1))
    og_tok = og.Tokenizer(og.Model(str(out / "onnx")))
    assert og_tok.apply_chat_template(json_module.dumps(messages), add_generation_prompt=True) + suffix == want
    llama = _snippet(card, "python", 2)
    assert ast.literal_eval(re.search(r"prompt = (\".*?\")  #", llama).group(1)) == want
    assert """--chat-template-kwargs '{"enable_thinking": false}'""" in card
    assert "ollama create" in card and (out / "model-as-is-F32.Modelfile").is_file()
    from mlx_lm import load

    mlx = _snippet(card, "python", 3)  # mlx-lm's tokenizer wrapper, on the MLX folder the card downloads
    line = next(x for x in mlx.splitlines() if x.startswith("prompt = "))
    scope = {"messages": messages, "tokenizer": load(str(out / "mlx"))[1]}
    exec(line, scope)  # noqa: S102 - the card's own line, run as the card's reader runs it
    assert scope["prompt"] == tok(want, add_special_tokens=False)["input_ids"]  # mlx-lm tokenizes: the same ids
