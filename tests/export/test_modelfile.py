"""The Ollama Modelfile beside every GGUF: its TEMPLATE, rendered by Go's text/template (Ollama's template engine),
gives the very prompt transformers' apply_chat_template gives with thinking off; FROM, stop tokens and sampling
defaults are the bake's. Go is installed by .ci/run; without it the rendering test skips."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from llama_source import LLAMA_SRC, needs_llama_source

from bake.cli import main

GO_RENDER = """package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role     string `json:"role"`
	Content  string `json:"content"`
	Thinking string `json:"thinking"`
}

func main() {
	var in struct {
		Template string      `json:"template"`
		Chats    [][]Message `json:"chats"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	t := template.Must(template.New("m").Parse(in.Template))
	out := []string{}
	for _, chat := range in.Chats {
		var b strings.Builder
		if err := t.Execute(&b, map[string]any{"Messages": chat}); err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""

CHATS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a prime."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Solve x + 1 = 3.\nShow the steps."}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "system", "content": "Be brief now."}, {"role": "user", "content": "c"}],
]


@pytest.fixture(scope="module")
def baked(tiny_base: Path, tiny_gates: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mf") / "b"
    assert main(["bake", "--base", str(tiny_base), "--gates", str(tiny_gates), "--variant", "chat_energy_optA",
                 "--preset", "3", "--gguf", "--gguf-type", "q8_0", "--gguf-layout", "ragged", "--out", str(out),
                 "--quiet"]) == 0
    return out


def parse(text: str) -> tuple[str, str, list[str], dict[str, str]]:
    template = re.search(r'TEMPLATE """(.*?)"""', text, flags=re.S).group(1)
    frm = re.search(r"^FROM (.+)$", text, flags=re.M).group(1)
    stops = re.findall(r'^PARAMETER stop "(.+)"$', text, flags=re.M)
    params = dict(re.findall(r"^PARAMETER (?!stop)(\w+) (.+)$", text, flags=re.M))
    return frm, template, stops, params


def test_a_modelfile_beside_every_gguf(baked: Path) -> None:
    manifest = json.loads((baked / "bake_manifest.json").read_text())
    assert {"model-ragged-Q8_0.gguf", "model-ragged-Q8_0.Modelfile"} <= set(manifest["files"])
    frm, template, stops, params = parse((baked / "model-ragged-Q8_0.Modelfile").read_text())
    assert frm == "./model-ragged-Q8_0.gguf" and stops[0] == "<|im_end|>"
    generation = json.loads((baked / "generation_config.json").read_text())
    for key, name in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k")):
        if key in generation:
            assert float(params[name]) == float(generation[key])
    assert str(baked) not in (baked / "model-ragged-Q8_0.Modelfile").read_text()  # FROM is relative: no local path


@pytest.mark.skipif(shutil.which("go") is None, reason="needs Go (text/template, Ollama's engine); .ci/run installs it")
def test_the_template_renders_as_the_qwen3_template_with_thinking_off(baked: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    _, template, _, _ = parse((baked / "model-ragged-Q8_0.Modelfile").read_text())
    rendered = go_render(template, CHATS, tmp_path)
    tok = AutoTokenizer.from_pretrained(str(baked))
    expected = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True, enable_thinking=False)
                for c in CHATS]
    assert rendered == expected
    assert expected[0].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def go_render(template: str, chats: list[list[dict[str, str]]], tmp_path: Path) -> list[str]:
    (tmp_path / "render.go").write_text(GO_RENDER)
    run = subprocess.run(["go", "run", str(tmp_path / "render.go")], input=json.dumps({"template": template,
                                                                                      "chats": chats}),
                         capture_output=True, text=True, timeout=300, env={"GOCACHE": str(tmp_path / "cache"),
                                                                         "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


# Multi-turn chats whose earlier assistant turns reasoned: Ollama keeps a turn's reasoning in the message's thinking
# field (Go: .Thinking), as transformers' chat template takes it in reasoning_content; Qwen3's template drops it for
# every turn before the last user message, and so does the TEMPLATE
THINKING_CHATS = [
    [{"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4", "reasoning_content": "Add two and two.", "thinking": "Add two and two."},
     {"role": "user", "content": "And 3+3?"}],
    [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "a"},
     {"role": "assistant", "content": "b", "reasoning_content": "hmm\nok", "thinking": "hmm\nok"},
     {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}, {"role": "user", "content": "e"}],
]


@needs_llama_source
@pytest.mark.skipif(shutil.which("go") is None, reason="needs Go (text/template, Ollama's engine); .ci/run installs it")
def test_the_template_renders_as_qwen3s_real_template_multi_turn(baked: Path, tmp_path: Path) -> None:
    """Against llama.cpp's copy of Qwen/Qwen3-0.6B's own chat template (not the demo's), chats with several turns and
    earlier reasoning included."""
    from transformers import AutoTokenizer

    real = (LLAMA_SRC / "models" / "templates" / "Qwen-Qwen3-0.6B.jinja").read_text()
    _, template, _, _ = parse((baked / "model-ragged-Q8_0.Modelfile").read_text())
    tok = AutoTokenizer.from_pretrained(str(baked))
    chats = CHATS + THINKING_CHATS
    jinja_chats = [[{k: v for k, v in m.items() if k != "thinking"} for m in c] for c in chats]
    expected = [tok.apply_chat_template(c, chat_template=real, tokenize=False, add_generation_prompt=True,
                                        enable_thinking=False) for c in jinja_chats]
    go_chats = [[{k: v for k, v in m.items() if k != "reasoning_content"} for m in c] for c in chats]
    assert go_render(template, go_chats, tmp_path) == expected
    assert "Add two and two" not in expected[len(CHATS)]  # the real template drops earlier reasoning


def test_verify_proves_the_modelfile_and_names_a_wrong_one(baked: Path, tmp_path: Path) -> None:
    from bake.verify.modelfile_check import check_modelfile, parse_modelfile, render_go_template

    gguf = baked / "model-ragged-Q8_0.gguf"
    good = check_modelfile(gguf, baked)
    assert good.passed and "model-ragged-Q8_0.Modelfile" in good.proven
    text = (baked / "model-ragged-Q8_0.Modelfile").read_text()
    template = parse_modelfile(text).template
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(baked))
    for chat in CHATS:  # verify's own renderer of the TEMPLATE, against the base's chat template
        assert render_go_template(template, chat) == tok.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    folder = tmp_path / "copy"
    shutil.copytree(baked, folder)
    mf = folder / "model-ragged-Q8_0.Modelfile"
    for edit, message in ((lambda t: t.replace("FROM ./model-ragged-Q8_0.gguf", "FROM ./other.gguf"), "FROM"),
                          (lambda t: re.sub(r'TEMPLATE """.*?"""', 'TEMPLATE """{{ .Prompt }}"""', t, flags=re.S),
                           "TEMPLATE"),
                          (lambda t: t.replace("<think>\n\n</think>\n\n", ""), "TEMPLATE"),
                          (lambda t: t.replace('PARAMETER stop "<|im_end|>"\n', ""), "stop")):
        mf.write_text(edit(text))
        report = check_modelfile(folder / "model-ragged-Q8_0.gguf", baked)
        assert not report.passed and any(f.tensor == f"model-ragged-Q8_0.Modelfile {message}" for f in report.failures)
    assert main(["verify", "--baked", str(folder), "--gguf", str(folder / "model-ragged-Q8_0.gguf"), "--quiet",
                 "--greedy-tokens", "2"]) == 3


def test_push_of_a_lone_gguf_carries_its_modelfile(baked: Path) -> None:
    from hub_fakes import FakeHfApi

    from bake.hub import push

    api = FakeHfApi()
    push.push_folder(baked / "model-ragged-Q8_0.gguf", "me/q8", api=api)
    assert api.uploaded == ["README.md", "model-ragged-Q8_0.Modelfile", "model-ragged-Q8_0.gguf"]
    assert "ollama create qwen3-lambda -f model-ragged-Q8_0.Modelfile" in api.readme
