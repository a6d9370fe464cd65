"""An ONNX export's own weights, as a transformers Qwen3: what the export should compute, by other code.

Every initializer is read back with ``bake.verify.weights.onnx_weights`` (the protobuf, no ONNX Runtime):
``MatMulNBits`` weights are dequantized by verify's own unpacker (``bake.verify.weights.nbits``, not the
exporter's quantizer), ``(code - zero_point) * scale`` per block; float weights are widened to
float32 and turned back to ``[out, in]`` where the graph reads them as ``[in, out]``; the packed
projections are split again (``qkv_proj`` into q, k, v; ``gate_up_proj`` into gate, up); a ragged
layer keeps its width. Run in float32 by transformers, this model is the exact yardstick of a
quantized export: the export must reproduce it to the rounding of ONNX Runtime's kernels, whatever
the bake's logits look like (``bake.verify.verifier``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from bake.errors import ExportError
from bake.io.json_files import read_json
from bake.verify.tensor_model import qwen3_model
from bake.verify.weights.nbits import unpack_codes
from bake.verify.weights.onnx_weights import ExportGraph

SKIPPED = ("const/", "rotary.")  # graph constants and the RoPE tables: no model weights
QUANT = ".weight.quant"


def export_model(folder: Path, io: dict[str, Any]) -> Any:
    """The export in ``folder`` (``io``: its onnx_io.json) as a float32 transformers model of its own weights."""
    folder = Path(folder)
    config = read_json(folder / "config.json", ExportError, "export again")
    graph = ExportGraph(folder / io["model_file"])
    return qwen3_model(config, export_tensors(graph, config), widths=list(io["mlp_widths"]))


def export_tensors(graph: ExportGraph, config: dict[str, Any]) -> Iterator[tuple[str, np.ndarray]]:
    """(transformers name, float32 array) for every weight the export holds."""
    heads, kv = int(config["num_attention_heads"]), int(config.get("num_key_value_heads") or config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    sizes = [heads * head_dim, kv * head_dim, kv * head_dim]
    quantized = {use.inputs[1]: use for uses in graph.uses.values() for use in uses
                 if use.op_type == "MatMulNBits" and use.index == 1}
    for name in graph.names():
        if name.startswith(SKIPPED) or name.endswith("/split") or name.endswith((".weight.scales", ".weight.zero_points")):
            continue
        if name.endswith(QUANT):
            prefix, suffix, value = name[: -len(QUANT)], "weight", dequantize(graph, quantized[name])
        else:
            prefix, _, suffix = name.rpartition(".")
            value = graph.tensor(name).astype(np.float32)
            if _read_transposed(graph, name):
                value = value.T
        yield from _unpacked(prefix, suffix, value, sizes)


def dequantize(graph: ExportGraph, use: Any) -> np.ndarray:
    """A MatMulNBits weight [N, K] as float32: ``(code - zero_point) * scale`` per block of K."""
    bits, block = int(use.attrs["bits"]), int(use.attrs["block_size"])
    n, k = int(use.attrs["N"]), int(use.attrs["K"])
    codes = unpack_codes(np.ascontiguousarray(graph.tensor(use.inputs[1])), bits)  # [N, blocks, block]
    blocks = codes.shape[1]
    scales = graph.tensor(use.inputs[2]).astype(np.float32).reshape(n, blocks)
    if len(use.inputs) > 3 and use.inputs[3]:
        zero = unpack_codes(np.ascontiguousarray(graph.tensor(use.inputs[3])), bits)[:, :blocks]
    else:
        zero = np.full((n, blocks), float(1 << (bits - 1)), np.float32)
    return ((codes - zero[..., None]) * scales[..., None]).reshape(n, blocks * block)[:, :k]


def _read_transposed(graph: ExportGraph, name: str) -> bool:
    """Whether the graph multiplies by ``name`` as ``[in, out]`` (MatMul's B, or Gemm's B without transB)."""
    return any((u.op_type == "MatMul" and u.index == 1) or (u.op_type == "Gemm" and u.index == 1
                                                           and not u.attrs.get("transB", 0))
               for u in graph.uses[name])


def _unpacked(prefix: str, suffix: str, value: np.ndarray, qkv_sizes: list[int]
              ) -> Iterator[tuple[str, np.ndarray]]:
    """Split a packed projection back into transformers' tensors; anything else passes as it is."""
    if prefix.endswith(".self_attn.qkv_proj"):
        base = prefix[: -len("qkv_proj")]
        starts = np.cumsum([0, *qkv_sizes])
        for proj, a, b in zip(("q_proj", "k_proj", "v_proj"), starts[:-1], starts[1:]):
            yield f"{base}{proj}.{suffix}", value[a:b]
    elif prefix.endswith(".mlp.gate_up_proj"):
        base, half = prefix[: -len("gate_up_proj")], value.shape[0] // 2
        yield f"{base}gate_proj.{suffix}", value[:half]
        yield f"{base}up_proj.{suffix}", value[half:]
    else:
        yield f"{prefix}.{suffix}", value


@contextmanager
def float_activations(folder: Path, io: dict[str, Any]) -> Iterator[Path]:
    """A temporary copy of the export whose MatMulNBits compute with float activations (accuracy_level 0).

    Nothing else changes: the same nodes, the same packed weights (the external-data file is linked,
    not copied). ONNX Runtime's CPU kernel at accuracy level 4 quantizes activations to int8, which moves
    the logits by several percent on deep models; at level 0 the graph must reproduce its dequantized
    weights to float rounding, which is the exact check of a quantized export's graph.
    """
    folder = Path(folder)
    model = onnx.load(str(folder / io["model_file"]), load_external_data=False)
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend(kept)
    with tempfile.TemporaryDirectory(prefix="lambda-bake-verify-") as tmp:
        copy = Path(tmp)
        onnx.save(model, str(copy / io["model_file"]))
        if io.get("external_data_file"):
            (copy / io["external_data_file"]).symlink_to((folder / io["external_data_file"]).resolve())
        for name in ("onnx_io.json", "config.json"):
            shutil.copy2(folder / name, copy / name)
        yield copy
