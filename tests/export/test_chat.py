"""export.runtime.chat renders prompts exactly as transformers' apply_chat_template and streams text as decode does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bake.errors import ExportError
from export.runtime.chat import ChatTokenizer

# A template in the style of Qwen3's: namespace, reversed loops, string tests, tojson, raise_exception,
# a thinking switch and whitespace control that trim_blocks/lstrip_blocks affect.
QWEN3_STYLE = """{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(last_query=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- if message.role == 'user' and ns.last_query == messages|length - 1 %}
        {%- set ns.last_query = messages|length - 1 - loop.index0 %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.role not in ['system', 'user', 'assistant'] %}
        {{- raise_exception('unknown role ' + message.role) }}
    {%- elif message.role != 'system' %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content | trim }}
        {%- if loop.index0 == ns.last_query %}{{ '' }}{% endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
{# {{ {"a": 1} | tojson }} #}"""

# Loop controls, .strip(), special-token variables and tojson on a condition (after a template written
# for the first transformers-free tokenizer).
RICH = """{%- set ns = namespace(last_user=-1) %}
{%- for message in messages[::-1] %}
    {%- if message.role == "user" and ns.last_user < 0 %}{% set ns.last_user = messages|length - loop.index0 - 1 %}{% endif %}
{%- endfor %}
{%- if messages[0].role == "system" %}
<|im_start|>system
{{ messages[0].content.strip() }}{{ eos_token }}
{% endif %}
{% for message in messages %}
  {% if message.role == "system" %}{% continue %}{% endif %}
<|im_start|>{{ message.role }}
{{ message.content | tojson if message.content.startswith("{") else message.content }}{% if loop.index0 == ns.last_user %} (last){% endif %}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}<|im_start|>assistant
{% if enable_thinking is defined and enable_thinking is false %}<think>

</think>

{% endif %}{% endif %}"""

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are a careful tutor."}, {"role": "user", "content": "  Why? é ü 日本 "}],
    [{"role": "user", "content": "List primes."}, {"role": "assistant", "content": "2, 3, 5"},
     {"role": "user", "content": "Next three?"}],
    [{"role": "system", "content": "  Be brief.  "}, {"role": "user", "content": "{\"x\": 1} café ünïcode"}],
]


@pytest.fixture(params=["demo template", "qwen3-style template", "rich template", "template in tokenizer_config.json"])
def folder(request, tiny_base: Path, tmp_path: Path) -> Path:
    out = tmp_path / "model"
    shutil.copytree(tiny_base, out)
    if request.param in ("qwen3-style template", "rich template"):
        (out / "chat_template.jinja").write_text(QWEN3_STYLE if request.param == "qwen3-style template" else RICH)
    elif request.param == "template in tokenizer_config.json":
        template = (out / "chat_template.jinja").read_text()
        (out / "chat_template.jinja").unlink()
        cfg = json.loads((out / "tokenizer_config.json").read_text())
        (out / "tokenizer_config.json").write_text(json.dumps(cfg | {"chat_template": template}))
    return out


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_prompt_ids_equal_transformers(folder: Path, messages) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert "<think>" in text  # thinking off renders the empty think block
    assert ChatTokenizer(folder).prompt_ids(messages) == tok(text, add_special_tokens=False)["input_ids"]


def test_template_errors_and_missing_files_are_export_errors(tiny_base: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    shutil.copytree(tiny_base, out)
    (out / "chat_template.jinja").write_text(QWEN3_STYLE)
    with pytest.raises(ExportError, match="unknown role tool"):
        ChatTokenizer(out).prompt_ids([{"role": "tool", "content": "x"}])
    (out / "chat_template.jinja").unlink()
    with pytest.raises(ExportError, match="has no chat template"):
        ChatTokenizer(out).prompt_ids(CONVERSATIONS[0])
    (out / "tokenizer.json").unlink()
    with pytest.raises(ExportError, match="has no tokenizer.json"):
        ChatTokenizer(out)


def test_eos_ids_and_streamed_text(tiny_base: Path) -> None:
    chat = ChatTokenizer(tiny_base)
    im_end = chat.tokenizer.token_to_id("<|im_end|>")
    assert chat.eos_ids() == {im_end}
    ids = chat.tokenizer.encode("Tokyo é 日本 is a city", add_special_tokens=False).ids
    pieces = list(chat.stream_text([*ids, im_end, *ids], stop={im_end}))
    assert "".join(pieces) == chat.tokenizer.decode(ids, skip_special_tokens=True)
    assert all("\ufffd" not in p for p in pieces)  # a character split over byte tokens is printed whole
    assert len(pieces) > 1  # and the text arrives in pieces, not at the end
