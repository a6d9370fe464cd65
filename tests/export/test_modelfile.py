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

from bake.cli import main

GO_RENDER = """package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
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
    (tmp_path / "render.go").write_text(GO_RENDER)
    run = subprocess.run(["go", "run", str(tmp_path / "render.go")], input=json.dumps({"template": template,
                                                                                      "chats": CHATS}),
                         capture_output=True, text=True, timeout=300, env={"GOCACHE": str(tmp_path / "cache"),
                                                                         "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    rendered = json.loads(run.stdout)
    tok = AutoTokenizer.from_pretrained(str(baked))
    expected = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True, enable_thinking=False)
                for c in CHATS]
    assert rendered == expected
    assert expected[0].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_push_of_a_lone_gguf_carries_its_modelfile(baked: Path) -> None:
    from hub_fakes import FakeHfApi

    from bake.hub import push

    api = FakeHfApi()
    push.push_folder(baked / "model-ragged-Q8_0.gguf", "me/q8", api=api)
    assert api.uploaded == ["README.md", "model-ragged-Q8_0.Modelfile", "model-ragged-Q8_0.gguf"]
    assert "ollama create qwen3-lambda -f model-ragged-Q8_0.Modelfile" in api.readme
