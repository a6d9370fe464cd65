"""Generation through onnxruntime-genai (its C++ loop), on the CPU or CUDA.

onnxruntime-genai reads the export's genai_config.json; this module only picks the device, the
thread count and CUDA-graph capture, and runs greedy search. It is optional: ``available()`` says
whether the package is installed (``onnxruntime-genai`` on CPU, ``onnxruntime-genai-cuda`` on GPU).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bake.errors import ExportError
from export.install import GPU_INSTALL, cpu_threads, mixed_install_hint, pick_device
from export.onnx.folder import read_export_folder
from export.onnx.genai_config import GENAI_FILE, read_genai_config


def available() -> bool:
    """Whether onnxruntime-genai is installed (CPU or CUDA package)."""
    return importlib.util.find_spec("onnxruntime_genai") is not None


def cuda_available() -> bool:
    import onnxruntime_genai as og

    return bool(og.is_cuda_available())


def load_model(folder: Path, device: str, threads: int | None = None, cuda_graph: bool = False) -> Any:
    """An ``og.Model`` of ``folder`` (any folder with a genai_config.json) on ``device`` ('cpu' or 'cuda'):
    CUDA with or without CUDA-graph capture; on the CPU ``threads`` intra-op threads (default: every CPU
    this process may use)."""
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.clear_providers()
    if device == "cuda":
        config.append_provider("cuda")
        config.set_provider_option("cuda", "enable_cuda_graph", "1" if cuda_graph else "0")
    threads = threads or (cpu_threads() if device == "cpu" else None)
    if threads:
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
    return og.Model(config)


class GenaiLM:
    """An export folder loaded by onnxruntime-genai.

    On the CPU, ``threads`` defaults to every CPU this process may use: left to itself,
    onnxruntime-genai ran one intra-op thread on a 2-core machine and decoded at the one-thread
    speed (docs/BENCHMARKS.md).
    """

    def __init__(self, folder: Path, device: str = "auto", threads: int | None = None, cuda_graph: bool = False):
        self.folder = Path(folder)
        self.io = read_export_folder(self.folder)
        if not (self.folder / GENAI_FILE).is_file():
            raise ExportError(f"{self.folder} has no {GENAI_FILE}; export again with this version of lambda-bake "
                              "(it writes one into every export), or run with --engine ort")
        self.context = int(read_genai_config(self.folder)["model"]["context_length"])
        self.device = pick_device(device)
        self.cuda_graph = cuda_graph and self.device == "cuda"
        if self.device == "cuda" and not cuda_available():
            raise ExportError(f"onnxruntime-genai here is the CPU package; {GPU_INSTALL} or use --device cpu."
                              f"{mixed_install_hint()}")
        if self.io["target"] == "cuda" and self.device == "cpu":
            raise ExportError(f"{self.folder} is a --target cuda export: its fused q/k norm runs only on CUDA; "
                              "run it on a GPU, or export again with --target cpu for the CPU")
        try:
            self.model = load_model(self.folder, self.device, threads, cuda_graph)
        except Exception as e:  # onnxruntime-genai raises plain RuntimeErrors; name the folder and the fix
            raise ExportError(f"onnxruntime-genai cannot load {self.folder}: {e}; check {GENAI_FILE} and the model "
                              "files, or export again") from e

    def stream(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_ids: set[int],
               pad_id: int) -> Iterator[np.ndarray]:
        """Greedy search over a batch of prompts (right-padded with ``pad_id``): yields [batch] next tokens
        per step until every row has emitted one of ``eos_ids`` (or genai_config's eos) or
        ``max_new_tokens`` were made."""
        import onnxruntime_genai as og

        if self.cuda_graph and len(prompts) > 1:
            raise ExportError(f"onnxruntime-genai captures a CUDA graph at batch 1 only, and this is a batch of "
                              f"{len(prompts)}: with CUDA graphs its static attention mask makes GroupQueryAttention "
                              "see a past at the prompt and abort; run one prompt at a time, or load without CUDA "
                              "graphs (generate --no-cuda-graph, cuda_graph=False)")
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > self.context:
            room = self.context - longest
            fix = f"give --max-new-tokens {room} or less" if room > 0 else "shorten the prompt"
            raise ExportError(f"a {longest}-token prompt and {max_new_tokens} new tokens do not fit this export's "
                              f"context of {self.context} tokens (genai_config.json context_length); {fix}")
        ids = np.full((len(prompts), longest), pad_id, np.int32)
        for b, p in enumerate(prompts):
            ids[b, :len(p)] = p
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=longest + max_new_tokens, do_sample=False, batch_size=len(prompts))
        generator = og.Generator(self.model, params)
        generator.append_tokens(ids)
        done = np.zeros(len(prompts), dtype=bool)
        for _ in range(max_new_tokens):
            if generator.is_done() or done.all():
                return
            generator.generate_next_token()
            token = np.asarray(generator.get_next_tokens(), dtype=np.int64)
            yield token
            done |= np.isin(token, list(eos_ids))
