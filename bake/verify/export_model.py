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

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from bake.errors import ExportError
from bake.io.json_files import read_json
from bake.verify.tensor_model import LayerTensors, qwen3_model
from bake.verify.weights.nbits import mlx_dequantize, unpack_codes
from bake.verify.weights.onnx_weights import ExportGraph

SKIPPED = ("const/", "rotary.")  # graph constants and the RoPE tables: no model weights
QUANT = ".weight.quant"
EMBEDDING = "model.embed_tokens.weight"


def export_model(folder: Path, io: dict[str, Any]) -> Any:
    """The export in ``folder`` (``io``: its onnx_io.json) as a float32 transformers model of its own weights."""
    folder = Path(folder)
    config = read_json(folder / "config.json", ExportError, "export again")
    return qwen3_model(config, export_tensors(ExportGraph(folder / io["model_file"]), config),
                       widths=list(io["mlp_widths"]))


def export_tensors(graph: ExportGraph, config: dict[str, Any]) -> LayerTensors:
    """Every weight the export holds as (transformers name, float32 array), read layer by layer."""
    sizes = _qkv_sizes(config)
    quantized = {use.inputs[1]: use for uses in graph.uses.values() for use in uses
                 if use.op_type == "MatMulNBits" and use.index == 1}
    lookup = embedding_lookup(graph)
    own_table = lookup.inputs[1] if lookup is not None and lookup.inputs[1] not in quantized else None

    def read(name: str) -> Iterator[tuple[str, np.ndarray]]:
        if name == own_table:
            return  # an untied table of its own: read as the embedding, below
        if name == EMBEDDING and lookup is not None:  # the table GatherBlockQuantized reads
            yield name, dequantize(graph, lookup)
            return
        if name.endswith(QUANT):
            prefix, suffix, value = name[: -len(QUANT)], "weight", dequantize(graph, quantized[name])
        else:
            prefix, _, suffix = name.rpartition(".")
            value = graph.tensor(name).astype(np.float32)
            if _read_transposed(graph, name):
                value = value.T
        yield from _unpacked(prefix, suffix, value, sizes)

    names = [n for n in graph.names() if not (n.startswith(SKIPPED) or n.endswith("/split")
                                              or n.endswith((".weight.scales", ".weight.zero_points")))]
    if lookup is not None:
        names.append(EMBEDDING)
    return LayerTensors.grouped(names, read)


def embedding_lookup(graph: ExportGraph) -> Any | None:
    """The export's GatherBlockQuantized embedding as a MatMulNBits-like use of its codes (N rows of K), or None (a
    float table). Its codes are a Reshape of a ``.weight.quant`` initializer: the bytes of [N, blocks, block * bits
    / 8]; ``K`` follows from the codes and ``bits``."""
    from onnx import helper

    from bake.verify.weights.onnx_weights import Use

    node = next((n for n in graph.model.graph.node if n.op_type == "GatherBlockQuantized"), None)
    if node is None:
        return None
    reshape = next(n for n in graph.model.graph.node if node.input[0] in n.output)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    bits, block = int(attrs["bits"]), int(attrs["block_size"])
    codes = graph.tensor(reshape.input[0])
    inputs = ("input_ids", reshape.input[0], node.input[2], node.input[3] if len(node.input) > 3 else "")
    return Use(node.name, "GatherBlockQuantized", 0, inputs, {
        "bits": bits, "block_size": block, "N": int(codes.shape[0]), "K": int(codes.shape[1]) * block})


def _qkv_sizes(config: dict[str, Any]) -> list[int]:
    """The rows of q, k and v in a fused qkv projection."""
    heads, kv = int(config["num_attention_heads"]), int(config.get("num_key_value_heads") or config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    return [heads * head_dim, kv * head_dim, kv * head_dim]


def dequantize(graph: ExportGraph, use: Any, rows_per_chunk: int = 4096) -> np.ndarray:
    """A MatMulNBits weight [N, K] as float32: ``(code - zero_point) * scale`` per block of K, a few rows at a time
    (the temporaries of a whole lm_head would be three times its float32 size)."""
    bits, block = int(use.attrs["bits"]), int(use.attrs["block_size"])
    n, k = int(use.attrs["N"]), int(use.attrs["K"])
    packed = graph.tensor(use.inputs[1])  # [N, blocks, block * bits / 8]
    blocks = packed.shape[1]
    scales = graph.tensor(use.inputs[2]).reshape(n, blocks)
    zero_points = graph.tensor(use.inputs[3]) if len(use.inputs) > 3 and use.inputs[3] else None
    out = np.empty((n, k), np.float32)
    for r0 in range(0, n, rows_per_chunk):
        r1 = min(n, r0 + rows_per_chunk)
        codes = unpack_codes(np.ascontiguousarray(packed[r0:r1]), bits)  # [rows, blocks, block]
        if zero_points is not None:
            zero = unpack_codes(np.ascontiguousarray(zero_points[r0:r1]), bits)[:, :blocks]
        else:
            zero = np.full((r1 - r0, blocks), float(1 << (bits - 1)), np.float32)
        codes -= zero[..., None]
        codes *= scales[r0:r1].astype(np.float32)[..., None]
        out[r0:r1] = codes.reshape(r1 - r0, blocks * block)[:, :k]
    return out


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


def float_activations(folder: Path, io: dict[str, Any]) -> tuple[bytes, dict[str, np.ndarray]]:
    """The export's graph with its MatMulNBits computing on float activations (accuracy_level 0), serialized, and
    its externally stored weights as memory-mapped arrays, for ``OnnxCausalLM(graph=...)``.

    Nothing else changes: the same nodes, the same packed weights. ONNX Runtime's CPU kernel at accuracy
    level 4 quantizes activations to int8, which moves the logits by several percent on deep models; at
    level 0 the graph must reproduce its dequantized weights to float rounding, which is the exact check of
    a quantized export's graph. Nothing is written: the weights are read from the export's own data file.
    """
    from export.onnx.variants import with_external

    folder = Path(folder)
    model = onnx.load(str(folder / io["model_file"]), load_external_data=False)
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend(kept)
    return with_external(folder, model)


GGUF_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
              "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
              "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj",
              "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
GGUF_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def gguf_model(path: Path, config: dict[str, Any], activations: bool = False) -> Any:
    """A GGUF file's own weights (dequantized by gguf-py, a tensor when its layer runs) as a float32 transformers
    model of ``config``, each layer as wide as its ``ffn_down``. With ``activations``, every matmul input is rounded
    as llama.cpp's CPU backend rounds it for that tensor's type (``bake.verify.llama_activations``)."""
    from gguf.quants import dequantize

    from bake.io.gguf_reader import drop_pages, read_gguf

    reader = read_gguf(path)
    tensors = {t.name: t for t in reader.tensors}
    sizes = _qkv_sizes(config)

    def read(name: str) -> Iterator[tuple[str, np.ndarray]]:
        t = tensors[name]
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        value = dequantize(np.asarray(t.data), t.tensor_type).reshape(shape).astype(np.float32)
        drop_pages(reader)
        parts = name.split(".")
        if parts[0] in GGUF_TOP:
            yield f"{GGUF_TOP[parts[0]]}.weight", value
        elif parts[2] == "attn_qkv":
            yield from _unpacked(f"model.layers.{parts[1]}.self_attn.qkv_proj", "weight", value, sizes)
        else:
            yield f"model.layers.{parts[1]}.{GGUF_NAMES[parts[2]]}.weight", value

    widths = {int(n.split(".")[1]): int(t.shape[0]) for n, t in tensors.items() if n.endswith(".ffn_down.weight")}
    layers = int(config["num_hidden_layers"])
    model = qwen3_model(config, LayerTensors.grouped(tensors, read), widths=[widths[i] for i in range(layers)])
    if activations:
        from bake.verify.llama_activations import round_inputs

        round_inputs(model, _linear_types(tensors))
    return model


def _linear_types(tensors: dict[str, Any]) -> dict[str, str]:
    """Each linear module of the transformers model (its name) -> the GGML type of the GGUF tensor it multiplies by;
    ``lm_head`` is ``output``, or ``token_embd`` where the file ties them (as llama.cpp does)."""
    types = {"lm_head": tensors["output.weight" if "output.weight" in tensors else "token_embd.weight"].tensor_type.name}
    for name, t in tensors.items():
        parts = name.split(".")
        if parts[0] != "blk" or parts[2].endswith("norm"):
            continue
        modules = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"] if parts[2] == "attn_qkv" else \
            [GGUF_NAMES[parts[2]]]
        types.update({f"model.layers.{parts[1]}.{m}": t.tensor_type.name for m in modules})
    return types


MLX_LAYER = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn.q_norm": "self_attn.q_norm",
             "attn.k_norm": "self_attn.k_norm", "attn.out_proj": "self_attn.o_proj", "attn.qkv_proj": "self_attn.qkv_proj",
             "ffn.proj_1": "mlp.gate_up_proj", "ffn.proj_2": "mlp.down_proj"}
MLX_TOP = {"transformer.token_embeddings": "model.embed_tokens", "transformer.norm": "model.norm", "lm_head": "lm_head"}


def mlx_model(folder: Path, config: dict[str, Any]) -> Any:
    """An MLX export's own weights (read with safetensors, dequantized by ``nbits.mlx_dequantize``) as a float32
    transformers model of ``config``, each ragged layer as wide as its tensors."""
    from safetensors import safe_open

    from export.mlx.folder import read_mlx_folder

    info = read_mlx_folder(folder)
    quant = info.get("quantization")
    sizes = _qkv_sizes(config)
    handles = {}
    for file in sorted(Path(folder).glob("model*.safetensors")):
        handle = safe_open(str(file), framework="np")
        handles.update({k: handle for k in handle.keys()})

    def weight(module: str) -> np.ndarray:
        w = handles[f"{module}.weight"].get_tensor(f"{module}.weight")
        if f"{module}.scales" not in handles:
            return w.astype(np.float32)
        return mlx_dequantize(w, handles[f"{module}.scales"].get_tensor(f"{module}.scales"),
                              handles[f"{module}.biases"].get_tensor(f"{module}.biases"),
                              int(quant["bits"]), int(quant["group_size"]))

    def hf_name(module: str) -> str:
        if info["layout"] != "ragged":
            return module
        if module in MLX_TOP:
            return MLX_TOP[module]
        _, _, i, kind = module.split(".", 3)
        return f"model.layers.{i}.{MLX_LAYER[kind]}"

    modules = sorted({n.rsplit(".", 1)[0] for n in handles})
    return qwen3_model(config, LayerTensors.grouped(modules, lambda m: _unpacked(hf_name(m), "weight", weight(m), sizes)),
                       widths=list(info["mlp_widths"]))
