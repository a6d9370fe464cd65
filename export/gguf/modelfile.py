"""An Ollama ``Modelfile`` beside every GGUF: without one, ``ollama create`` from a local file (and Ollama before 0.30)
picks a chat template by matching ``tokenizer.chat_template`` against its own list, which has no Qwen3 entry, and
falls back to a bare ``{{ .Prompt }}``: chat breaks.

The TEMPLATE is Ollama's Go ``text/template`` form of the Qwen3 chat template with thinking off, as the gates were
trained: for chats of system, user and assistant messages ending in a user turn (what Ollama renders to reply), its
output equals ``apply_chat_template(..., add_generation_prompt=True, enable_thinking=False)`` (tests render both
with Go's text/template and lambda-bake's Jinja renderer). Stop strings are the model's end-of-turn tokens, and the
sampling defaults are the base's ``generation_config.json``'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Each message as the Qwen3 template writes it (a system message at any position as a user one is), then the
# reply's generation prompt with the empty think block that turns thinking off.
OLLAMA_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n"
)
SAMPLING = ("temperature", "top_p", "top_k", "repetition_penalty")
_OLLAMA_NAMES = {"repetition_penalty": "repeat_penalty"}


def modelfile_name(gguf_name: str) -> str:
    """``model-ragged-Q8_0.gguf`` -> ``model-ragged-Q8_0.Modelfile`` (one beside each GGUF)."""
    return Path(gguf_name).stem + ".Modelfile"


def modelfile_text(gguf_name: str, model_dir: Path) -> str:
    """The Modelfile of the GGUF file ``gguf_name`` (beside it) made from the baked folder ``model_dir``."""
    generation = _json(model_dir / "generation_config.json")
    lines = [f"# Ollama: ollama create NAME -f {modelfile_name(gguf_name)}  (then: ollama run NAME)",
             f"FROM ./{gguf_name}", f'TEMPLATE """{OLLAMA_TEMPLATE}"""']
    lines += [f'PARAMETER stop "{token}"' for token in stop_tokens(model_dir, generation)]
    for key in SAMPLING:
        if isinstance(generation.get(key), (int, float)) and not isinstance(generation.get(key), bool):
            lines.append(f"PARAMETER {_OLLAMA_NAMES.get(key, key)} {generation[key]}")
    return "\n".join(lines) + "\n"


def stop_tokens(model_dir: Path, generation: dict[str, Any]) -> list[str]:
    """The end-of-turn tokens (generation_config's eos ids, else config.json's) as text, <|im_end|> first."""
    from tokenizers import Tokenizer

    eos = generation.get("eos_token_id", _json(model_dir / "config.json").get("eos_token_id"))
    ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokens = [t for t in (tokenizer.id_to_token(int(i)) for i in ids) if t]
    return sorted(set(tokens) | {"<|im_end|>"}, key=lambda t: (t != "<|im_end|>", t))


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
