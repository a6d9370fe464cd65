"""Chat prompts and text for an export folder, without transformers.

The tokenizer is ``tokenizer.json`` read by the ``tokenizers`` library; the chat template
(``chat_template.jinja`` or ``tokenizer_config.json``'s ``chat_template``) is rendered the way
transformers' ``apply_chat_template`` renders it (sandboxed Jinja, trim_blocks, lstrip_blocks,
loopcontrols, ``tojson``, ``raise_exception``), with ``add_generation_prompt=True`` and
``enable_thinking=False`` as the variants were trained. Both generation engines use this module,
so they see the same prompt ids and print text the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from bake.errors import ExportError
from bake.io.json_files import read_json

Messages = list[dict[str, str]]
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


def render_chat_template(template: str, messages: Messages, special_tokens: dict[str, str | None],
                         add_generation_prompt: bool = True) -> str:
    """Render ``messages`` with a Hugging Face chat template, thinking off; with ``add_generation_prompt`` (a prompt
    to reply to) or without (a whole conversation, as a text to score)."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                enable_thinking=False, tools=None, documents=None, **special_tokens)
    except jinja2.TemplateError as e:
        raise ExportError(f"the chat template cannot render these messages: {e}") from e


class ChatTokenizer:
    """Tokenizer, chat template and end-of-turn ids of a model or export folder."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        path = self.folder / "tokenizer.json"
        if not path.is_file():
            raise ExportError(f"{self.folder} has no tokenizer.json; copy the base model's tokenizer files next to "
                              "the model (lambda-bake bake and export carry them)")
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises plain Exceptions for bad files
            raise ExportError(f"{path} cannot be read ({e}); copy the base model's tokenizer.json again") from e
        config_path = self.folder / "tokenizer_config.json"
        self.config = read_json(config_path, ExportError, "copy the base model's tokenizer files again") \
            if config_path.is_file() else {}
        self.special_tokens = {k: _token_text(self.config.get(k)) for k in SPECIAL_TOKEN_KEYS}

    def chat_template(self) -> str:
        path = self.folder / "chat_template.jinja"
        if path.is_file():
            return path.read_text()
        template = self.config.get("chat_template")
        if isinstance(template, list):  # named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if not template:
            raise ExportError(f"{self.folder} has no chat template (chat_template.jinja or tokenizer_config.json); "
                              "copy the base model's tokenizer files next to the model")
        return template

    def prompt_ids(self, messages: Messages, add_generation_prompt: bool = True) -> list[int]:
        """Chat-templated prompt (thinking off; generation prompt on unless told) as token ids."""
        text = render_chat_template(self.chat_template(), messages, self.special_tokens, add_generation_prompt)
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def text_ids(self, text: str) -> list[int]:
        """Raw text as token ids, with only the special tokens the tokenizer adds by itself (Qwen3's: none)."""
        return self.tokenizer.encode(text).ids

    def eos_ids(self) -> set[int]:
        """End-of-turn ids: generation_config.json, config.json and the tokenizer's eos token; none (an empty set) for
        a model that names no stop token, whose generation then runs to the length limit."""
        eos: set[int] = set()
        for name in ("generation_config.json", "config.json"):
            path = self.folder / name
            if path.is_file():
                value = read_json(path, ExportError, "export again").get("eos_token_id")
                eos |= set(value if isinstance(value, list) else [] if value is None else [value])
        token = self.special_tokens.get("eos_token")
        if token is not None and self.tokenizer.token_to_id(token) is not None:
            eos.add(self.tokenizer.token_to_id(token))
        return eos

    def stream_text(self, tokens: Iterable[int], stop: set[int]) -> Iterator[str]:
        """Decode a token stream as it arrives (special tokens skipped), stopping at the first ``stop`` id.

        Pieces are cut where the decoded text is stable, so a multi-byte character split across tokens
        is printed once it is complete.
        """
        ids: list[int] = []
        printed = ""
        for token in tokens:
            if token in stop:
                break
            ids.append(token)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue
            yield text[len(printed):]
            printed = text
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if len(text) > len(printed):
            yield text[len(printed):]


def pad_id(eos: set[int]) -> int:
    """The token a finished row of a batch is filled with: the lowest stop token, else 0 (no stop token)."""
    return min(eos) if eos else 0


NO_STOP = "the model names no stop token (no eos_token_id in config.json or generation_config.json): generation " \
          "runs to the length limit"
