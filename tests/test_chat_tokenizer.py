"""The transformers-free chat tokenizer renders, encodes and decodes exactly as transformers does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from bake.errors import ExportError
from export.chat_tokenizer import ChatTokenizer

# Exercises what real chat templates use: namespaces, reversed loops, loop controls, string methods,
# tojson, whitespace control (trim_blocks / lstrip_blocks), special-token variables, raise_exception.
RICH_TEMPLATE = """{%- set ns = namespace(last_user=-1) %}
{%- for message in messages[::-1] %}
    {%- if message.role == "user" and ns.last_user < 0 %}{% set ns.last_user = messages|length - loop.index0 - 1 %}{% endif %}
{%- endfor %}
{%- if messages[0].role == "system" %}
<|im_start|>system
{{ messages[0].content.strip() }}{{ eos_token }}
{% endif %}
{% for message in messages %}
  {% if message.role == "system" %}{% continue %}{% endif %}
  {% if message.role not in ["user", "assistant"] %}{{ raise_exception("bad role " + message.role) }}{% endif %}
<|im_start|>{{ message.role }}
{{ message.content | tojson if message.content.startswith("{") else message.content }}{% if loop.index0 == ns.last_user %} (last){% endif %}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}<|im_start|>assistant
{% if enable_thinking is defined and enable_thinking is false %}<think>

</think>

{% endif %}{% endif %}"""

CHATS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "  Be brief.  "}, {"role": "user", "content": "List three primes."},
     {"role": "assistant", "content": "2, 3 and 5."}, {"role": "user", "content": "{\"x\": 1} café ünïcode"}],
]


def tokenizer_folder(tiny_base: Path, out: Path, template: str | None) -> Path:
    """The tiny model's tokenizer; with ``template``, that one inside tokenizer_config.json (as older models ship
    it) instead of chat_template.jinja (as transformers 5 saves it)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(tiny_base / name, out / name)
    if template is not None:
        (out / "chat_template.jinja").unlink()
        config = json.loads((out / "tokenizer_config.json").read_text())
        config["chat_template"] = template
        (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module", params=["demo", "rich"])
def folder(request: pytest.FixtureRequest, tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    template = RICH_TEMPLATE if request.param == "rich" else None
    return tokenizer_folder(tiny_base, tmp_path_factory.mktemp(request.param), template)


@pytest.mark.parametrize("chat", CHATS)
@pytest.mark.parametrize("thinking", [False, True])
def test_same_text_ids_and_decoding_as_transformers(folder: Path, chat: list[dict[str, str]], thinking: bool) -> None:
    ours, theirs = ChatTokenizer(folder), AutoTokenizer.from_pretrained(str(folder))
    kw = dict(tokenize=False, add_generation_prompt=True, enable_thinking=thinking)
    text = ours.apply_chat_template(chat, **kw)
    assert text == theirs.apply_chat_template(chat, **kw)
    ids = ours(text, add_special_tokens=False)["input_ids"]
    assert ids == theirs(text, add_special_tokens=False)["input_ids"] and len(ids) > 5
    for skip in (True, False):
        assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    assert ours.eos_token_id == theirs.eos_token_id is not None


def test_template_errors_and_missing_files(tiny_base: Path, tmp_path: Path) -> None:
    import jinja2

    rich = tokenizer_folder(tiny_base, tmp_path / "rich", RICH_TEMPLATE)
    with pytest.raises(jinja2.TemplateError, match="bad role tool"):
        ChatTokenizer(rich).apply_chat_template([{"role": "tool", "content": "x"}])
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(ExportError, match="has no tokenizer.json"):
        ChatTokenizer(bare)
    shutil.copy2(rich / "tokenizer.json", bare / "tokenizer.json")
    with pytest.raises(ExportError, match="has no chat template"):
        ChatTokenizer(bare)
