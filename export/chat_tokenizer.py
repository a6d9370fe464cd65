"""The export folder's tokenizer and chat template, without transformers (or the Hub client it imports).

``ChatTokenizer`` reads ``tokenizer.json`` with the ``tokenizers`` library and renders the chat
template with jinja2 the way transformers does (a sandboxed environment with ``trim_blocks`` and
``lstrip_blocks``, loop controls, its ``tojson``, ``raise_exception`` and ``strftime_now``, and the
special tokens as variables). It offers the part of a transformers tokenizer that generation uses:
``apply_chat_template(..., tokenize=False)``, ``__call__`` for ids, ``eos_token_id`` and ``decode``.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from bake.errors import ExportError
from bake.json_files import read_json

SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


class ChatTokenizer:
    """Tokenizer and chat template of a model or export folder."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        folder = Path(folder)
        if not (folder / "tokenizer.json").is_file():
            raise ExportError(f"{folder} has no tokenizer.json; copy the model's tokenizer files next to the export")
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config_path = folder / "tokenizer_config.json"
        config = read_json(config_path, ExportError, "export again") if config_path.is_file() else {}
        self.special_tokens = {k: _token_text(config[k]) for k in SPECIAL_TOKENS if config.get(k) is not None}
        self.clean_up_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self._template = _compile(_chat_template(folder, config))

    @property
    def eos_token_id(self) -> int | None:
        eos = self.special_tokens.get("eos_token")
        return None if eos is None else self._tokenizer.token_to_id(eos)

    def apply_chat_template(self, messages: list[dict[str, str]], *, tokenize: bool = False,
                            add_generation_prompt: bool = False, **kwargs: Any) -> str:
        """The rendered prompt text (``tokenize=True`` is not offered: call the tokenizer on the text)."""
        if tokenize:
            raise ValueError("ChatTokenizer.apply_chat_template renders text only; pass tokenize=False")
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     **self.special_tokens, **kwargs)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        text = self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self.clean_up_spaces:
            for old, new in _CLEANUP:
                text = text.replace(old, new)
        return text


def _token_text(value: Any) -> str:
    """A special token as written in tokenizer_config.json: a string or an AddedToken dict."""
    return str(value["content"] if isinstance(value, dict) else value)


def _chat_template(folder: Path, config: dict[str, Any]) -> str:
    """``chat_template.jinja`` (transformers 5), else ``chat_template`` in tokenizer_config.json."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if not isinstance(template, str):
        raise ExportError(f"{folder} has no chat template (chat_template.jinja or tokenizer_config.json "
                          "chat_template); copy the model's tokenizer files next to the export")
    return template


def _compile(template: str) -> Any:
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
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)
