"""Run a GGUF file with llama.cpp (through llama-cpp-python): logits at every position for verify, and greedy
streaming for ``generate --gguf``.

A file is checked before llama.cpp loads it here (``export.gguf.loadable``): its vocabulary read with gguf-py,
then one load in a child process, so that a damaged file is a clear error, never an abort of this process.

verify asks for a float32 KV cache: llama.cpp's default float16 cache alone moves the logits by about 2e-4
of the largest, which would hide a float32 export's exactness. The prompt is the chat template rendered by
lambda-bake's own renderer (``export.runtime.chat``, the same ids as every other engine), not llama.cpp's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bake.errors import ExportError
from export.install import cpu_threads, require_llama_cpp

GGML_TYPE_F32 = 0


class LlamaCppLM:
    """A GGUF file loaded by llama.cpp on the CPU."""

    def __init__(self, path: Path, n_ctx: int = 4096, threads: int | None = None, logits_all: bool = False,
                 f32_cache: bool = False):
        require_llama_cpp()
        from llama_cpp import Llama

        from export.gguf.loadable import ensure_loadable

        self.path = Path(path)
        ensure_loadable(self.path)  # an abort on a damaged file must not take this command down
        threads = threads or cpu_threads()
        cache = {"type_k": GGML_TYPE_F32, "type_v": GGML_TYPE_F32} if f32_cache else {}
        try:
            self.llm = Llama(str(self.path), n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_threads=threads,
                             logits_all=logits_all, verbose=False, **cache)
        except Exception as e:  # noqa: BLE001 - llama-cpp-python raises ValueError/RuntimeError for a bad file
            raise ExportError(f"llama.cpp cannot load {self.path} ({type(e).__name__}: {e}); the file is damaged or "
                              "not a model llama.cpp runs: export it again") from e
        self.n_ctx = n_ctx

    def score(self, seqs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """[len(seq), vocab] float32 logits at every position of each sequence (one pass each)."""
        out = []
        for seq in seqs:
            self._check(len(seq))
            self.llm.reset()
            self.llm.eval(list(seq))
            out.append(np.array(self.llm.scores[: len(seq)], dtype=np.float32))
        return out

    def stream(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_ids: set[int],
               pad_id: int) -> Iterator[np.ndarray]:
        """Greedy decoding of one prompt: yields [1] next tokens until an eos or ``max_new_tokens``."""
        if len(prompts) != 1:
            raise ExportError("llama.cpp decodes one prompt at a time here; give one prompt")
        (prompt,) = prompts
        self._check(len(prompt) + max_new_tokens)
        self.llm.reset()
        self.llm.eval(list(prompt))
        for _ in range(max_new_tokens):
            token = int(np.argmax(self._last_logits()))
            yield np.array([token], np.int64)
            if token in eos_ids:
                return
            self.llm.eval([token])

    def _last_logits(self) -> np.ndarray:
        """The logits of the last evaluated token (llama-cpp-python keeps them only with logits_all)."""
        import llama_cpp

        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),)).copy()

    def _check(self, length: int) -> None:
        if length > self.n_ctx:
            raise ExportError(f"{length} tokens do not fit the context of {self.n_ctx} this GGUF was loaded with")

    def describe(self) -> dict[str, Any]:
        return {"engine": "llama.cpp (llama-cpp-python)", "file": str(self.path)}


def llama_tokens(path: Path, texts: list[str]) -> list[list[int]]:
    """Each text as llama.cpp tokenizes it with the file's own vocabulary (special tokens parsed, no BOS added),
    from a vocabulary-only load."""
    require_llama_cpp()
    from llama_cpp import Llama

    from export.gguf.loadable import ensure_loadable

    ensure_loadable(path)
    llm = Llama(str(path), vocab_only=True, verbose=False)
    return [list(llm.tokenize(t.encode("utf-8"), add_bos=False, special=True)) for t in texts]


class GgufChat:
    """The chat prompt and text of a GGUF file, from the file itself: its chat template (rendered by lambda-bake's
    renderer, thinking off, as every engine renders it), its tokenizer (llama.cpp's) and its end-of-turn ids."""

    def __init__(self, lm: LlamaCppLM):
        self.llm = lm.llm
        meta = self.llm.metadata or {}
        self.template = meta.get("tokenizer.chat_template")
        if not self.template:
            raise ExportError(f"{lm.path} carries no chat template (tokenizer.chat_template); export it again with "
                              "lambda-bake, which writes the base model's")
        self.eos = {int(meta[k]) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id") if k in meta}
        self.eos.add(int(self.llm.token_eos()))

    def _text(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", "replace")

    def prompt_ids(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        from export.runtime.chat import render_chat_template

        specials = {"eos_token": self._text(min(self.eos)), "bos_token": None, "pad_token": None, "unk_token": None}
        text = render_chat_template(self.template, messages, specials, add_generation_prompt)
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def text_ids(self, text: str) -> list[int]:
        """Raw text as llama.cpp tokenizes it, with the BOS only where the file's vocabulary asks for one."""
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def eos_ids(self) -> set[int]:
        return set(self.eos)

    def stream_text(self, tokens: Iterator[int], stop: set[int]) -> Iterator[str]:
        """Decode the reply as it arrives (bytes held back until they make whole characters)."""
        pending = b""
        for token in tokens:
            if token in stop:
                break
            pending += self.llm.detokenize([token])
            try:
                text = pending.decode("utf-8")
            except UnicodeDecodeError:
                continue
            pending = b""
            yield text
        if pending:
            yield pending.decode("utf-8", "replace")
