"""Each model in the runtime its users run it in, behind one small interface: tokenize a text or a chat, score
rows (logits at every position), answer a prompt greedily.

- checkpoints, the hooked model and the base: transformers (float32, rows batched by length, all cores);
- ONNX exports: ONNX Runtime, through lambda-bake's loop on the shipped graph with its logits at every position
  (``export.onnx.variants``: the last-token gather taken out) for scoring, and onnxruntime-genai (else our loop)
  for answers;
- GGUF files: llama.cpp (llama-cpp-python), one row at a time, its own tokenizer and the file's chat template.

Checkpoints, the hooked model, the base and ONNX exports tokenize with the folder's ``tokenizer.json`` and chat
template through ``export.runtime.chat`` (equal to transformers' ``apply_chat_template``, thinking off), so their
token ids are the same; a GGUF tokenizes with llama.cpp, as its users' prompts are.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from bake.eval.models import ModelSpec
from bake.eval.sets import Messages

BATCH_TOKENS = 2048  # rows batched by length up to this many (padded) tokens per forward pass ...
LOGITS_BYTES = 1 << 28  # ... and this many bytes of float32 logits (Qwen3's 151,936-token vocabulary: 441 tokens)


class EvalLM:
    """The interface ``bake.eval.evaluate`` uses; ``close()`` frees the model."""

    chat: Any
    eos: set[int]

    @property
    def pad(self) -> int:
        """What a finished row is filled with (the stop tokens may be none)."""
        from export.runtime.chat import pad_id

        return pad_id(set(self.eos))

    def text_ids(self, text: str) -> list[int]:
        return self.chat.text_ids(text)

    def chat_ids(self, messages: Messages, add_generation_prompt: bool) -> list[int]:
        return self.chat.prompt_ids(messages, add_generation_prompt)

    def score(self, rows: list[list[int]]) -> Iterator[tuple[int, np.ndarray]]:
        """(row index, [len, V] float32 logits) for every row, in an order of the runtime's choosing."""
        raise NotImplementedError

    def answer(self, prompt: list[int], max_new_tokens: int) -> str:
        raise NotImplementedError

    def close(self) -> None:
        from bake.verify.candidates import release_memory

        self.__dict__.clear()
        release_memory()


def token_budget(vocab: int) -> int:
    """Padded tokens per batch: BATCH_TOKENS, fewer where their logits would pass LOGITS_BYTES."""
    return max(1, min(BATCH_TOKENS, LOGITS_BYTES // (4 * vocab)))


def batches_by_length(rows: list[list[int]], budget: int = BATCH_TOKENS) -> Iterator[list[int]]:
    """Row indices in batches of similar length, each at most ``budget`` padded tokens (a longer row alone)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    batch: list[int] = []
    for i in order:
        if batch and len(rows[i]) * (len(batch) + 1) > budget:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


class TorchEval(EvalLM):
    """A transformers model (a checkpoint, or the base with or without the gate hooks), float32."""

    def __init__(self, spec: ModelSpec):
        import torch

        from bake.io.pretrained import load_pretrained
        from bake.verify.reference import load_hooked_model
        from export.runtime.chat import ChatTokenizer

        self.torch = torch
        if spec.kind == "hooked":
            self.model = load_hooked_model(spec.path, spec.scale, torch.float32)
        else:
            self.model = load_pretrained(spec.path, dtype=torch.float32)
        self.chat = ChatTokenizer(spec.path)
        self.eos = self.chat.eos_ids()
        self.budget = token_budget(int(self.model.config.vocab_size))

    def score(self, rows: list[list[int]]) -> Iterator[tuple[int, np.ndarray]]:
        torch = self.torch
        for batch in batches_by_length(rows, self.budget):
            longest = max(len(rows[i]) for i in batch)
            ids = torch.zeros((len(batch), longest), dtype=torch.long)
            mask = torch.zeros((len(batch), longest), dtype=torch.long)
            for b, i in enumerate(batch):
                ids[b, :len(rows[i])] = torch.tensor(rows[i])
                mask[b, :len(rows[i])] = 1
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float().numpy()
            for b, i in enumerate(batch):
                yield i, logits[b, :len(rows[i])]

    def answer(self, prompt: list[int], max_new_tokens: int) -> str:
        torch = self.torch
        with torch.no_grad():
            out = self.model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                      max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=sorted(self.eos) or None,
                                      pad_token_id=self.pad)
        return "".join(self.chat.stream_text((int(t) for t in out[0, len(prompt):]), self.eos))


class OnnxEval(EvalLM):
    """An ONNX export folder: scored by ONNX Runtime with logits at every position, answered by onnxruntime-genai
    (our loop where it is not installed), each loaded only when first needed."""

    def __init__(self, spec: ModelSpec, device: str = "auto"):
        from export.runtime.chat import ChatTokenizer

        self.folder, self.device = spec.path, device
        self.chat = ChatTokenizer(spec.path)
        self.eos = self.chat.eos_ids()
        self._scorer: Any = None
        self._engine: Any = None

    def score(self, rows: list[list[int]]) -> Iterator[tuple[int, np.ndarray]]:
        from export.runtime.ort_loop import OnnxCausalLM

        if self._scorer is None:
            self._scorer = OnnxCausalLM(self.folder, device=self.device, all_logits=True)
        for batch in batches_by_length(rows, token_budget(int(self._scorer.io["vocab_size"]))):
            yield from zip(batch, self._scorer.score_batch([rows[i] for i in batch]))

    def answer(self, prompt: list[int], max_new_tokens: int) -> str:
        from export.runtime.engines import open_engine

        if self._engine is None:
            self._scorer = None  # one session at a time
            self._engine = open_engine(self.folder, "auto", self.device, cuda_graph=False)
        tokens = (int(step[0]) for step in self._engine.stream([prompt], max_new_tokens, self.eos, self.pad))
        return "".join(self.chat.stream_text(tokens, self.eos))


class _OneRowEval(EvalLM):
    """A runtime that scores one row per call and streams greedy tokens (``lm``: ``LlamaCppLM`` or ``MlxLM``)."""

    lm: Any
    chat: Any
    eos: list[int]

    def score(self, rows: list[list[int]]) -> Iterator[tuple[int, np.ndarray]]:
        for i, row in enumerate(rows):
            yield i, self.lm.score([row])[0]

    def answer(self, prompt: list[int], max_new_tokens: int) -> str:
        tokens = (int(step[0]) for step in self.lm.stream([prompt], max_new_tokens, self.eos, self.pad))
        return "".join(self.chat.stream_text(tokens, self.eos))


class GgufEval(_OneRowEval):
    """A GGUF file in llama.cpp, with its own tokenizer and chat template."""

    def __init__(self, spec: ModelSpec, max_length: int):
        from export.runtime.llama_loop import GgufChat, LlamaCppLM

        self.lm = LlamaCppLM(spec.path, n_ctx=max_length + 64, logits_all=True)
        self.chat = GgufChat(self.lm)
        self.eos = self.chat.eos_ids()


class MlxEval(_OneRowEval):
    """An MLX folder in mlx-lm (its tokenizer and chat template are the folder's Hugging Face files)."""

    def __init__(self, spec: ModelSpec):
        from export.runtime.chat import ChatTokenizer
        from export.runtime.mlx_loop import MlxLM

        self.lm = MlxLM(spec.path)
        self.chat = ChatTokenizer(spec.path)
        self.eos = self.chat.eos_ids()


def require_runtime(spec: ModelSpec) -> None:
    """The package ``spec``'s runtime needs is installed (checked before any model runs): ONNX Runtime, llama.cpp
    (llama-cpp-python) or mlx-lm; transformers comes with lambda-bake."""
    from export.install import require_llama_cpp, require_mlx, require_onnxruntime

    {"onnx": require_onnxruntime, "gguf": require_llama_cpp, "mlx": require_mlx}.get(spec.kind, lambda: None)()


def open_model(spec: ModelSpec, max_length: int, device: str = "auto") -> EvalLM:
    if spec.kind in ("checkpoint", "hooked", "base"):
        return TorchEval(spec)
    if spec.kind == "onnx":
        from export.install import require_onnxruntime

        require_onnxruntime()
        return OnnxEval(spec, device)
    if spec.kind == "mlx":
        return MlxEval(spec)
    return GgufEval(spec, max_length)


