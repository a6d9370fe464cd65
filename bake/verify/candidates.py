"""What verify runs: the candidates (a baked checkpoint through transformers, an ONNX export through ONNX
Runtime) and the yardsticks (the hooked reference, the bake, an export's dequantized weights).

The hooked reference decodes greedily from each prompt (``TorchRunner.generate``). Everything else is
scored on the reference's own sequences, the prompt followed by the reference's greedy tokens (teacher
forcing): its logits are compared with the reference's at every position it gives, and its greedy agreement
is the first continuation step at which its argmax differs, which is exactly where its own greedy decoding
would first diverge. Every position, in one pass over all sequences (transformers, llama.cpp, mlx-lm); an ONNX
graph with last-token logits, at the positions a deployment reads, as it reads them: every prompt's last in one
batched prefill, then each continuation token stepped through the KV cache, all sequences together. No decode
loop per candidate.

A candidate is described when it is named and loaded only when its turn comes (``open``), so verify holds
one model at a time.
"""

from __future__ import annotations

import ctypes
import gc
import inspect
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from bake.io.base_model import read_config
from bake.verify import precision
from bake.verify.precision import Step, checkpoint_chain, export_chain
from bake.write.manifest import GGUF_LAYOUT_KEY, MANIFEST_NAME, read_manifest


class Runner(Protocol):
    def score_from(self, seqs: list[list[int]], firsts: list[int]) -> Iterable[tuple[int, torch.Tensor]]:
        """For each sequence in turn, the first position scored (at most ``firsts[i]``, 0 where every position is) and
        [len(seq) - first, V] float32 logits from there on."""


class LogitStore:
    """Logits kept for later comparisons, in an unnamed temporary file rather than in memory: one sequence's
    [S, V] float32 logits are read back at a time, so keeping the reference's (and the bake's) costs page
    cache, not the process's memory (at Qwen3-0.6B's vocabulary: 0.6 MB per position, 300 MB per run)."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="lambda-bake-logits-")
        self._where: list[tuple[int, tuple[int, ...]]] = []

    def append(self, logits: torch.Tensor) -> None:
        a = np.ascontiguousarray(logits.numpy(), dtype=np.float32)
        self._file.seek(0, 2)
        self._where.append((self._file.tell(), a.shape))
        self._file.write(memoryview(a.reshape(-1).view(np.uint8)))

    def __getitem__(self, i: int) -> torch.Tensor:
        offset, shape = self._where[i]
        self._file.seek(offset)
        a = np.fromfile(self._file, dtype=np.float32, count=int(np.prod(shape)))
        if a.size != int(np.prod(shape)):
            raise OSError(f"the temporary file of kept logits is cut short (sequence {i}); is the disk full?")
        return torch.from_numpy(a.reshape(shape))

    def __len__(self) -> int:
        return len(self._where)


@dataclass
class Outputs:
    """A model's logits on every scored sequence, and its continuation: the tokens its argmax picks after the
    prompt (for the reference, the greedy tokens it decoded)."""

    logits: LogitStore = field(default_factory=LogitStore)
    continuation: list[list[int]] = field(default_factory=list)
    which: list[int] | None = None  # the sequences held, when only some were scored (default: all, in order)

    def add(self, i: int, logits: torch.Tensor, continuation: list[int]) -> None:
        if self.which is not None:
            self.which.append(i)
        self.logits.append(logits)
        self.continuation.append(continuation)

    def holds(self, i: int) -> bool:
        return self.which is None or i in self.which

    def of(self, i: int) -> tuple[torch.Tensor, list[int]]:
        """Sequence ``i``'s logits and continuation."""
        k = i if self.which is None else self.which.index(i)
        return self.logits[k], self.continuation[k]


@dataclass(frozen=True)
class Sequences:
    """The reference's sequences: each prompt and the greedy tokens after it (all but the last are inputs)."""

    prompts: list[list[int]]
    greedy: list[list[int]]

    @property
    def inputs(self) -> list[list[int]]:
        return [p + g[:-1] for p, g in zip(self.prompts, self.greedy)]

    @property
    def firsts(self) -> list[int]:
        """Each sequence's first position that predicts its continuation: its prompt's last."""
        return [len(p) - 1 for p in self.prompts]

    def continuation(self, i: int, logits: torch.Tensor, first: int = 0) -> list[int]:
        """The argmax tokens of ``logits`` (of sequence ``i``, from position ``first`` on) at the positions that
        predict the continuation."""
        start = len(self.prompts[i]) - 1 - first
        return [int(t) for t in logits[start:start + len(self.greedy[i])].argmax(-1)]


class TorchRunner:
    """A transformers causal LM."""

    def __init__(self, model: Any):
        self.model = model

    def generate(self, prompts: list[list[int]], greedy_tokens: int) -> tuple[Sequences, Outputs]:
        """Greedy decoding from every prompt at once (left-padded, one step for all rows; a pure argmax chain, EOS
        not special, so every sequence runs N steps): the sequences, and each one's logits at every position (its
        prompt's, then each step's)."""
        batch, longest = len(prompts), max(len(p) for p in prompts)
        ids = torch.zeros((batch, longest), dtype=torch.long)
        mask = torch.zeros((batch, longest), dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, longest - len(p):] = torch.tensor(p)
            mask[b, longest - len(p):] = 1
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        rows: list[list[torch.Tensor]] = [[] for _ in prompts]
        tokens: list[list[int]] = [[] for _ in prompts]
        body, head = self.model.model, self.model.lm_head
        with torch.no_grad():
            out = body(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=greedy_tokens > 1)
            for b, p in enumerate(prompts):  # the lm_head on real positions only, not on the padding
                rows[b].append(head(out.last_hidden_state[b, longest - len(p):]).to(torch.float32))
            last = torch.stack([r[0][-1] for r in rows])
            for step in range(greedy_tokens):
                nxt = last.argmax(-1)
                for b in range(batch):
                    tokens[b].append(int(nxt[b]))
                if step + 1 == greedy_tokens:
                    break
                mask = torch.cat([mask, torch.ones((batch, 1), dtype=torch.long)], dim=1)
                positions = positions[:, -1:] + 1
                out = body(input_ids=nxt[:, None], attention_mask=mask, position_ids=positions, use_cache=True,
                           **_cache_kwargs(body, out))
                last = head(out.last_hidden_state[:, -1]).to(torch.float32)
                for b in range(batch):
                    rows[b].append(last[b:b + 1])
        outputs = Outputs()
        for b in range(batch):
            outputs.logits.append(torch.cat(rows[b]))
            outputs.continuation.append(tokens[b])
        return Sequences(prompts, tokens), outputs

    def greedy(self, ids: list[int], greedy_tokens: int) -> list[int]:
        return self.generate([ids], greedy_tokens)[0].greedy[0]

    def score(self, seqs: list[list[int]]) -> Iterator[torch.Tensor]:
        """Consecutive sequences scored together, right-padded, up to ``PASS_POSITIONS`` positions a pass: a model that
        reads its layers as they run (``bake.verify.tensor_model``) reads each once per pass, not once per sequence.
        Causal attention never lets a token see the padding after it, so each row's logits are its sequence's own.
        It never yields inside ``torch.no_grad()``: a generator suspended there would switch gradients off for its
        caller, and two run side by side would leave them off for good."""
        for group in _passes(seqs):
            longest = max(len(s) for s in group)
            ids = torch.zeros((len(group), longest), dtype=torch.long)
            for b, s in enumerate(group):
                ids[b, :len(s)] = torch.tensor(s)
            with torch.no_grad():
                hidden = self.model.model(ids).last_hidden_state
            for b, s in enumerate(group):  # the lm_head on each row's own positions, not on its padding
                with torch.no_grad():
                    logits = self.model.lm_head(hidden[b, :len(s)]).to(torch.float32)
                yield logits
            del hidden

    def score_from(self, seqs: list[list[int]], firsts: list[int]) -> Iterator[tuple[int, torch.Tensor]]:
        """Every position (``score``): one pass costs the same."""
        return ((0, logits) for logits in self.score(seqs))


PASS_POSITIONS = 1024  # padded positions per pass (its activations; the logits are made one row at a time)


def _passes(seqs: list[list[int]]) -> Iterator[list[list[int]]]:
    """``seqs`` in order, in groups whose padded size (count x longest) stays within ``PASS_POSITIONS`` (a longer
    sequence goes alone)."""
    group: list[list[int]] = []
    longest = 0
    for s in seqs:
        if group and (len(group) + 1) * max(longest, len(s)) > PASS_POSITIONS:
            yield group
            group, longest = [], 0
        group.append(s)
        longest = max(longest, len(s))
    if group:
        yield group


def _cache_kwargs(model: Any, out: Any) -> dict[str, Any]:
    """Pass the KV cache back under the name this transformers uses (``cache`` since 5.2x)."""
    if "cache" in inspect.signature(model.forward).parameters:
        return {"cache": out.cache}
    return {"past_key_values": out.past_key_values}


class BatchRunner:
    """A runtime that scores all sequences in one call: lambda-bake's ONNX Runtime loop (``OnnxCausalLM.score_from``:
    a last-token graph as a deployment runs it, one batched prefill through each prompt and one-token steps through
    the KV cache over the continuation), llama.cpp (``LlamaCppLM.score``) or mlx-lm (``MlxLM.score``): every
    position."""

    def __init__(self, model: Any, from_prompt_end: bool = False):
        self.model = model
        self.from_prompt_end = from_prompt_end  # the model's own score_from decides what it scores

    def score_from(self, seqs: list[list[int]], firsts: list[int]) -> Iterator[tuple[int, torch.Tensor]]:
        rows = self.model.score_from(seqs, firsts) if self.from_prompt_end else \
            [(0, logits) for logits in self.model.score(seqs)]
        rows.reverse()
        while rows:  # each sequence's logits are let go once the caller has counted them
            first, logits = rows.pop()
            yield first, torch.from_numpy(logits)


def release_memory() -> None:
    """Collect garbage and hand freed heap memory back to the system: glibc keeps freed blocks below its mmap
    threshold (up to 32 MB, the size of a layer's weights) in the heap, so a freed model would stay resident."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the allocator keeps what it keeps
        pass


@dataclass
class Candidate:
    """A model under test, not yet loaded: its name, its dtype label, its precision chain and where it is."""

    name: str
    dtype: str
    chain: list[Step]
    folder: Path
    kind: str  # "checkpoint", "onnx", "gguf" or "mlx"
    compute_dtype: torch.dtype = torch.float32
    device: str = "auto"
    quantization: dict[str, Any] | None = None  # onnx_io.json's, for a quantized export
    export_dtype: str | None = None
    not_run: str | None = None  # why its logits cannot be computed on this machine
    manifest: dict[str, Any] | None = None  # a GGUF's embedded bake manifest
    gguf_type: str | None = None
    max_length: int = 4096  # a GGUF's context when loaded for verify

    def open(self) -> Runner:
        """Load the model (transformers, or an ONNX Runtime session) and return its runner."""
        if self.kind == "checkpoint" and self.compute_dtype == torch.float32:  # one layer in memory at a time
            from bake.verify.tensor_model import bake_layers, qwen3_model
            from bake.verify.weights.bake_tensors import BakeFolder

            folder = BakeFolder(self.folder)
            return TorchRunner(qwen3_model(folder.config, bake_layers(folder)))
        if self.kind == "checkpoint":  # as a user runs it in that dtype: from_pretrained (a ragged one: the loader)
            from bake.io.pretrained import load_pretrained

            return TorchRunner(load_pretrained(self.folder, dtype=self.compute_dtype))
        if self.kind == "mlx":
            from export.runtime.mlx_loop import MlxLM

            return BatchRunner(MlxLM(self.folder))
        if self.kind == "gguf":
            from export.runtime.llama_loop import LlamaCppLM

            return BatchRunner(LlamaCppLM(self.folder, n_ctx=self.max_length, logits_all=True, f32_cache=True))
        from export.runtime.ort_loop import OnnxCausalLM

        return BatchRunner(OnnxCausalLM(self.folder, device=self.device), from_prompt_end=True)


def torch_candidate(folder: Path, compute_dtype: torch.dtype = torch.float32) -> Candidate:
    """A checkpoint, run in float32 by transformers' Qwen3 modules one layer at a time (its tensors read from its
    safetensors as each layer runs), or in another ``compute_dtype`` loaded whole with plain AutoModelForCausalLM;
    its chain is its checkpoint dtype.

    The bake manifest names the layout; a checkpoint without one (baked elsewhere) is still checked.
    """
    folder = Path(folder)
    layout = read_manifest(folder)["layout"] if (folder / MANIFEST_NAME).is_file() else "no manifest"
    config = read_config(folder)
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return Candidate(f"checkpoint ({layout})", dtype, checkpoint_chain(dtype), folder, "checkpoint",
                     compute_dtype=compute_dtype)


def onnx_candidate(folder: Path, device: str = "auto") -> Candidate:
    """An export folder; a quantized export is labelled by its weight type (int4, int8).

    A ``--target cuda`` export on a machine without CUDA is a candidate whose logits are not run (its
    fused q/k norm has no CPU kernel); verify then judges it by its weight check alone and says so.
    """
    from export.install import pick_device, require_onnxruntime
    from export.onnx.folder import read_export_folder

    require_onnxruntime()
    io = read_export_folder(folder)
    quant = io.get("quantization")
    bake_dtype = _bake_dtype(Path(folder))
    coded = precision.WITH_EMBEDDING.get((io.get("embedding") or {}).get("form"), precision.LINEAR)
    chain = export_chain(bake_dtype, io["dtype"], quant["weights"] if quant else None, coded)
    label = quant["weights"] if quant else io["dtype"]
    target = io.get("target", "portable")
    common = {"quantization": quant, "export_dtype": io["dtype"], "device": device}
    if target == "cuda" and pick_device(device) == "cpu":
        return Candidate(f"onnx (cuda graph, {io['layout']}, not run)", label, chain, Path(folder), "onnx",
                         not_run="logits NOT compared: a --target cuda export runs only on CUDA and this onnxruntime "
                                 "has no CUDA provider; only its weights were checked", **common)
    return Candidate(f"onnx ({target} graph, {io['layout']}, on {pick_device(device)})", label, chain, Path(folder),
                     "onnx", **common)


def mlx_candidate(folder: Path) -> Candidate:
    """An MLX export folder, run by mlx-lm; its chain is the bake's dtype, the export's dtype, then its bits."""
    from export.install import require_mlx
    from export.mlx.folder import read_mlx_folder

    require_mlx()
    import mlx.core as mx

    info = read_mlx_folder(folder)
    quant = info.get("quantization")
    bits = f"int{quant['bits']}" if quant else None
    chain = export_chain(_bake_dtype(Path(folder)), info["dtype"], bits)
    where = "cpu" if "cpu" in str(mx.default_device()) else "gpu"
    return Candidate(f"mlx ({info['model_type']}, {info['layout']}, mlx-lm on {where})", bits or info["dtype"], chain,
                     Path(folder), "mlx", quantization={"weights": bits, **quant} if quant else None,
                     export_dtype=info["dtype"])


GGUF_STEPS = {"f32": ("float32", None), "f16": ("float16", None), "bf16": ("bfloat16", None),
              "q8_0": ("float32", "int8"), "q4_0": ("float32", "int4"),  # the K-quants: their coarsest tensors' bits
              "q6_k": ("float32", "int8"), "q5_k_m": ("float32", "int4"), "q4_k_m": ("float32", "int4")}


def gguf_candidate(path: Path) -> Candidate:
    """A GGUF file, run by llama.cpp with a float32 KV cache; its chain is the bake's dtype, then its GGML type
    (f16/bf16 weights make llama.cpp compute in that type; q8_0/q4_0 are 8- and 4-bit block codes)."""
    from bake.io.gguf_reader import read_gguf
    from bake.verify.weights.gguf_check import embedded_manifest, field
    from export.gguf.writer import file_type_name
    from export.install import require_gguf

    require_gguf()
    reader = read_gguf(path)
    manifest = embedded_manifest(reader, str(path))
    name = file_type_name(int(field(reader, "general.file_type") or 0))
    export_dtype, quant = GGUF_STEPS.get(name, ("float32", None))
    bake_dtype = str((manifest or {}).get("dtype") or "float32")
    layout = field(reader, GGUF_LAYOUT_KEY) or "as-is"
    arch = field(reader, "general.architecture")
    import importlib.util

    from export.install import LLAMA_CPP_INSTALL

    not_run = None if importlib.util.find_spec("llama_cpp") is not None else (
        f"logits NOT compared: llama.cpp (llama-cpp-python) is not installed here; only its weights were checked. To "
        f"run it: {LLAMA_CPP_INSTALL}")
    return Candidate(f"gguf ({arch}, {layout}, {name}, llama.cpp{', not run' if not_run else ''})", name,
                     export_chain(bake_dtype, export_dtype, quant), Path(path), "gguf",
                     quantization={"weights": quant} if quant else None, export_dtype=export_dtype, manifest=manifest,
                     gguf_type=name, not_run=not_run)


def _bake_dtype(export: Path) -> str:
    """The dtype of the bake an export was made from: its manifest's, else its config's."""
    if (export / MANIFEST_NAME).is_file():
        return str(read_manifest(export)["dtype"])
    config = read_config(export)
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")
