"""What verify runs: the candidates (a baked checkpoint through transformers, an ONNX export through ONNX
Runtime) and the yardsticks (any transformers model), each as a runner that gives, per prompt, the logits
at every position and the greedy continuation.

A candidate is described when it is named and loaded only when its turn comes (``open``), so verify holds
one model at a time.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from bake.io.base_model import read_config
from bake.verify.precision import Step, checkpoint_chain, export_chain
from bake.write.manifest import MANIFEST_NAME, read_manifest


class Runner(Protocol):
    def run(self, ids: list[int], greedy_tokens: int) -> tuple[torch.Tensor, list[int]]:
        """[S, V] float32 logits at every position of ``ids``, and the greedy continuation (new ids only)."""


@dataclass
class Outputs:
    """What a runner gave on every prompt: logits per prompt and greedy continuations."""

    logits: list[torch.Tensor] = field(default_factory=list)
    greedy: list[list[int]] = field(default_factory=list)


class TorchRunner:
    """A transformers causal LM: one pass over the prompt gives every position's logits and the KV cache
    that the greedy continuation (a pure argmax chain; EOS not special, so every model runs N steps) goes on from."""

    def __init__(self, model: Any):
        self.model = model

    def run(self, ids: list[int], greedy_tokens: int) -> tuple[torch.Tensor, list[int]]:
        tokens: list[int] = []
        with torch.no_grad():
            out = self.model(torch.tensor([ids]), use_cache=greedy_tokens > 1)
            logits = out.logits[0].to(torch.float32)
            while len(tokens) < greedy_tokens:
                tokens.append(int(out.logits[0, -1].argmax()))
                if len(tokens) < greedy_tokens:
                    out = self.model(torch.tensor([[tokens[-1]]]), use_cache=True, **_cache_kwargs(self.model, out))
        return logits, tokens

    def greedy(self, ids: list[int], greedy_tokens: int) -> list[int]:
        return self.run(ids, greedy_tokens)[1]


def _cache_kwargs(model: Any, out: Any) -> dict[str, Any]:
    """Pass the KV cache back under the name this transformers uses (``cache`` since 5.2x)."""
    if "cache" in inspect.signature(model.forward).parameters:
        return {"cache": out.cache}
    return {"past_key_values": out.past_key_values}


class OnnxRunner:
    """An export in lambda-bake's ONNX Runtime loop (``export.runtime.ort_loop``): both paths of the shipped graph,
    the full prompt and one-token steps through the KV cache, are what give its logits."""

    def __init__(self, model: Any):
        self.model = model

    def run(self, ids: list[int], greedy_tokens: int) -> tuple[torch.Tensor, list[int]]:
        logits = torch.from_numpy(self.model.logits(ids))
        tokens = [int(t) for t in self.model.greedy([ids], greedy_tokens, eos_ids=set(), pad_id=0)[0]]
        return logits, tokens


def collect(runner: Runner, prompts: list[list[int]], greedy_tokens: int) -> Outputs:
    out = Outputs()
    for ids in prompts:
        logits, tokens = runner.run(ids, greedy_tokens)
        out.logits.append(logits)
        out.greedy.append(tokens)
    return out


@dataclass
class Candidate:
    """A model under test, not yet loaded: its name, its dtype label, its precision chain and where it is."""

    name: str
    dtype: str
    chain: list[Step]
    folder: Path
    kind: str  # "checkpoint" or "onnx"
    compute_dtype: torch.dtype = torch.float32
    device: str = "auto"
    quantization: dict[str, Any] | None = None  # onnx_io.json's, for a quantized export
    export_dtype: str | None = None
    not_run: str | None = None  # why its logits cannot be computed on this machine

    def open(self) -> Runner:
        """Load the model (transformers, or an ONNX Runtime session) and return its runner."""
        if self.kind == "checkpoint":
            from transformers import AutoModelForCausalLM

            return TorchRunner(AutoModelForCausalLM.from_pretrained(str(self.folder), dtype=self.compute_dtype).eval())
        from export.runtime.ort_loop import OnnxCausalLM

        return OnnxRunner(OnnxCausalLM(self.folder, device=self.device))


def torch_candidate(folder: Path, compute_dtype: torch.dtype = torch.float32) -> Candidate:
    """A checkpoint, to be loaded with plain AutoModelForCausalLM; its chain is its checkpoint dtype.

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
    chain = export_chain(bake_dtype, io["dtype"], quant["weights"] if quant else None)
    label = quant["weights"] if quant else io["dtype"]
    target = io.get("target", "portable")
    common = {"quantization": quant, "export_dtype": io["dtype"], "device": device}
    if target == "cuda" and pick_device(device) == "cpu":
        return Candidate(f"onnx (cuda graph, {io['layout']}, not run)", label, chain, Path(folder), "onnx",
                         not_run="logits NOT compared: a --target cuda export runs only on CUDA and this onnxruntime "
                                 "has no CUDA provider; only its weights were checked", **common)
    return Candidate(f"onnx ({target} graph, {io['layout']}, on {pick_device(device)})", label, chain, Path(folder),
                     "onnx", **common)


def _bake_dtype(export: Path) -> str:
    """The dtype of the bake an export was made from: its manifest's, else its config's."""
    if (export / MANIFEST_NAME).is_file():
        return str(read_manifest(export)["dtype"])
    config = read_config(export)
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")
