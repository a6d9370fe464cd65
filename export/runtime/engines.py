"""Pick the generation loop for an export and stream a chat reply through it.

Two loops run an export: onnxruntime-genai's C++ loop (``genai_runtime``, when installed) and
lambda-bake's own Python loop over ONNX Runtime (``runtime``). ``auto`` takes onnxruntime-genai when
it is installed for the device: on 2 CPU cores it decoded as fast as our loop or faster on every
graph once given every core (docs/BENCHMARKS.md), and on CUDA its loop keeps the whole step on the
GPU and can capture it as a CUDA graph. Our loop is the fallback, and what verify uses.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bake.errors import ExportError
from export.install import CPU_INSTALL, GPU_INSTALL, pick_device
from export.options import ENGINES
from export.runtime import genai_loop as genai_runtime
from export.runtime.chat import NO_STOP, ChatTokenizer, Messages, pad_id
from export.runtime.ort_loop import OnnxCausalLM


def choose_engine(engine: str, device: str) -> str:
    """'genai' or 'ort' for ``engine`` ('auto' decides as the module docstring says)."""
    if engine not in ENGINES:
        raise ExportError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "genai" and not genai_runtime.available():
        raise ExportError(f"--engine genai: onnxruntime-genai is not installed; {CPU_INSTALL} ({GPU_INSTALL} on a "
                          "GPU), or use --engine ort")
    if engine != "auto":
        return engine
    if not genai_runtime.available():
        return "ort"
    if pick_device(device) == "cuda":
        return "genai" if genai_runtime.cuda_available() else "ort"
    return "genai"


def open_engine(folder: Path, engine: str = "auto", device: str = "auto", threads: int | None = None,
                cuda_graph: bool = True) -> Any:
    """The loaded model behind ``engine``: a ``GenaiLM`` or an ``OnnxCausalLM`` (both have ``stream``).

    On CUDA, a session that refuses CUDA-graph capture (ONNX Runtime checks at load that every node
    runs on the GPU) is loaded again without it, and the refusal is said on stderr.
    """
    if choose_engine(engine, device) != "genai":
        return OnnxCausalLM(folder, device=device, threads=threads)
    try:
        return genai_runtime.GenaiLM(folder, device=device, threads=threads, cuda_graph=cuda_graph)
    except ExportError as e:
        if not (cuda_graph and pick_device(device) == "cuda"):
            raise
        print(f"warning: CUDA-graph capture refused, running without it: {e}", file=sys.stderr)
        return genai_runtime.GenaiLM(folder, device=device, threads=threads, cuda_graph=False)


def describe(lm: Any) -> str:
    """One line for stderr: which loop runs the export, and where."""
    loop = "onnxruntime-genai" if isinstance(lm, genai_runtime.GenaiLM) else "lambda-bake's ONNX Runtime loop"
    return f"{loop} on {lm.device}"


def stream_reply(lm: Any, chat: ChatTokenizer, messages: Messages, max_new_tokens: int) -> Iterator[str]:
    """The greedy reply to ``messages`` as text pieces, printed as the tokens arrive, up to the end of turn."""
    eos = chat.eos_ids()
    if not eos:
        print(f"note: {NO_STOP} (--max-new-tokens {max_new_tokens})", file=sys.stderr)
    tokens = (int(step[0]) for step in lm.stream([chat.prompt_ids(messages)], max_new_tokens, eos, pad_id(eos)))
    return chat.stream_text(tokens, stop=eos)
