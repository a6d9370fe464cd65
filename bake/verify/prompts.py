"""The prompts verify runs: built-in chat prompts of mixed lengths, a JSONL file of the user's, and their
rendering with the chat template (``add_generation_prompt=True, enable_thinking=False``, as the variants
were trained) to token ids."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bake.errors import BakeError
from bake.io.paths import PROMPTS_FILE, require

Messages = list[dict[str, str]]

DEFAULT_PROMPTS: tuple[Messages, ...] = (
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Solve for x: 3x + 5 = 20. Show each step."}],
    [{"role": "system", "content": "You are a careful math tutor."},
     {"role": "user", "content": "Explain why the derivative of x squared is two x, then integrate 2x."}],
    [{"role": "user", "content": "List three prime numbers and say why each is prime."},
     {"role": "assistant", "content": "2, 3 and 5: each has exactly two divisors."},
     {"role": "user", "content": "Now give the next three, and the sum of all six."}],
    [{"role": "user", "content": "def add(a, b): return a + b -- what does add(2, 3) return and why?"}],
    [{"role": "user", "content": "Who wrote the novel set in Paris in the year the tower was built? "
      "If you are not sure, reason about what you know of the city, the tower and the year, step by step."}],
)


def render_prompt_texts(tokenizer: Any, prompts: Sequence[Messages | str]) -> list[str]:
    """Chat-template each prompt (add_generation_prompt=True, enable_thinking=False) to text."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}] if isinstance(p, str) else p,
                                          tokenize=False, add_generation_prompt=True, enable_thinking=False)
            for p in prompts]


def render_prompts(tokenizer: Any, prompts: Sequence[Messages | str]) -> list[list[int]]:
    """Chat-template each prompt (add_generation_prompt=True, enable_thinking=False) to token ids."""
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in render_prompt_texts(tokenizer, prompts)]


def read_prompts_file(path: Path) -> list[Messages | str]:
    """JSONL: each line a list of messages, an object with "messages", or a string; other lines are plain text."""
    prompts: list[Messages | str] = []
    for n, line in enumerate(require(path, "file", PROMPTS_FILE).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            item = line
        if isinstance(item, dict):
            item = item.get("messages", item.get("prompt", item.get("text")))
        if not (isinstance(item, str) or (isinstance(item, list) and all(isinstance(m, dict) for m in item))):
            raise BakeError(f"{path}:{n}: expected a string, a list of messages or {{\"messages\": [...]}}")
        prompts.append(item)
    if not prompts:
        raise BakeError(f"{path} holds no prompts")
    return prompts
