"""Build a Qwen3 decoder ONNX graph with KV cache straight from checkpoint tensors.

Like onnxruntime-genai's model builder, the graph is written node by node with ``onnx.helper``;
no PyTorch model is built. Weights are read one at a time with ``CheckpointReader``, converted to
the target dtype and streamed into a raw external-data file as they are added, so peak memory is
one tensor and the graph proto stays small (the exporter inlines the data again for small models).

Two variants compute the same function:

- plain: standard ONNX ops only (opset 21): portable and exact to float rounding.
- fused: ONNX Runtime's com.microsoft kernels (SkipSimplifiedLayerNormalization, RotaryEmbedding,
  GroupQueryAttention) plus the standard RMSNormalization (opset 23); needs ONNX Runtime.

``quant`` (int4/int8, ``export.quantize``) turns every linear layer, lm_head included, into
com.microsoft ``MatMulNBits`` with blockwise-quantized weights: smaller and faster, no longer exact.
With tied embeddings the Gather keeps the float embedding and lm_head gets its own quantized copy.

``ragged=True`` drops, per layer, every MLP neuron whose ``down_proj`` column is entirely zero: such
a neuron adds exactly 0, so the graph is exact and each layer gets its own MLP width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from bake.errors import ExportError
from bake.tensor_io import CheckpointReader, tensor_bytes

from .quantize import QuantSpec, quantize_weight

ONNX_DTYPES: dict[torch.dtype, int] = {
    torch.float32: TensorProto.FLOAT,
    torch.float16: TensorProto.FLOAT16,
    torch.bfloat16: TensorProto.BFLOAT16,
    torch.uint8: TensorProto.UINT8,  # packed MatMulNBits weights and zero points
}
PLAIN_OPSET = 21
FUSED_OPSET = 23  # RMSNormalization
MS_DOMAIN = "com.microsoft"
DATA_ALIGN = 4096  # page-align external tensors so ONNX Runtime can map them directly

LAYER = "model.layers.{i}.{part}"


@dataclass(frozen=True)
class Qwen3Dims:
    """The numbers of a Qwen3 config that shape the graph."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    max_positions: int
    attention_bias: bool
    tied_embeddings: bool

    @property
    def groups(self) -> int:
        return self.num_heads // self.num_kv_heads


def qwen3_dims(config: dict[str, Any], reader: CheckpointReader) -> Qwen3Dims:
    """Read and check the config fields the graph needs; anything unsupported is an ExportError."""
    if config.get("model_type") != "qwen3":
        raise ExportError(
            f"config.json says model_type {config.get('model_type')!r}; export supports Qwen3 dense models "
            "(model_type 'qwen3') only: give --model a baked Qwen3 folder"
        )
    if config.get("hidden_act", "silu") != "silu":
        raise ExportError(f"hidden_act {config['hidden_act']!r} is not supported (Qwen3 uses 'silu')")
    if config.get("use_sliding_window"):
        raise ExportError("use_sliding_window=true is not supported by the export; set it to false in config.json")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ExportError(f"rope_type {rope_type!r} is not supported by the export (only 'default' RoPE)")
    theta = rope.get("rope_theta", config.get("rope_theta"))
    if theta is None:
        raise ExportError("config.json has no rope_theta (neither top-level nor in rope_parameters)")
    heads = int(config["num_attention_heads"])
    tied = bool(config.get("tie_word_embeddings", False))
    if not tied and "lm_head.weight" not in reader:
        raise ExportError("tie_word_embeddings is false but the checkpoint has no lm_head.weight: it is incomplete")
    kv_heads = int(config.get("num_key_value_heads") or heads)
    if heads % kv_heads:
        raise ExportError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    return Qwen3Dims(
        num_layers=int(config["num_hidden_layers"]),
        hidden_size=int(config["hidden_size"]),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=int(config.get("head_dim") or int(config["hidden_size"]) // heads),
        vocab_size=int(config["vocab_size"]),
        intermediate_size=int(config["intermediate_size"]),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=float(theta),
        max_positions=int(config.get("max_position_embeddings", 32768)),
        attention_bias=bool(config.get("attention_bias", False)),
        tied_embeddings=tied,
    )


def live_neurons(reader: CheckpointReader, layer: int) -> torch.Tensor:
    """Indices of the MLP neurons whose down_proj column has a nonzero entry (the ragged layout keeps these)."""
    w = reader.tensor(LAYER.format(i=layer, part="mlp.down_proj.weight"))
    return torch.nonzero((w != 0).any(dim=0)).reshape(-1)


def inv_freq(dims: Qwen3Dims) -> torch.Tensor:
    """RoPE inverse frequencies, computed exactly as transformers' default rope does (float32)."""
    return 1.0 / (dims.rope_theta ** (torch.arange(0, dims.head_dim, 2, dtype=torch.float) / dims.head_dim))


class WeightFile:
    """Streams initializers into one raw file; each becomes an external-data ``TensorProto``."""

    def __init__(self, file: BinaryIO, location: str):
        self.file = file
        self.location = location
        self.offset = 0
        self.initializers: list[TensorProto] = []

    def add(self, name: str, t: torch.Tensor) -> str:
        data = tensor_bytes(t)
        pad = -self.offset % DATA_ALIGN
        self.file.write(b"\0" * pad)
        self.offset += pad
        self.file.write(data)
        proto = TensorProto(name=name, data_type=ONNX_DTYPES[t.dtype], dims=list(t.shape))
        proto.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", self.offset), ("length", len(data))):
            proto.external_data.add(key=key, value=str(value))
        self.offset += len(data)
        self.initializers.append(proto)
        return name


@dataclass
class _Graph:
    """Node list plus helpers that name outputs after their node."""

    weights: WeightFile
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    constants: list[TensorProto] = field(default_factory=list)

    def op(self, op_type: str, inputs: Sequence[str], name: str, domain: str = "", **attrs: Any) -> str:
        """Add a one-output node; its output is named ``name/out0``."""
        out = f"{name}/out0"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=name, domain=domain, **attrs))
        return out

    def op_to(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: str, domain: str = "",
              **attrs: Any) -> None:
        """Add a node whose outputs are named by the caller ('' for an omitted optional output)."""
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=name, domain=domain, **attrs))

    def const(self, name: str, value: np.ndarray) -> str:
        """A small constant kept inside the graph."""
        self.constants.append(numpy_helper.from_array(np.asarray(value), name))
        return name


class _Constants:
    """Lazily added named constants: only those the graph uses end up in it."""

    def __init__(self, graph: _Graph, values: dict[str, np.ndarray]):
        self.graph, self.values, self.names = graph, values, {}

    def __getitem__(self, key: str) -> str:
        if key not in self.names:
            self.names[key] = self.graph.const(f"const/{key}", self.values[key])
        return self.names[key]


@dataclass
class BuildResult:
    """What was built: the model proto (weights external) and the facts onnx_io.json records."""

    model: onnx.ModelProto
    mlp_widths: list[int]
    weight_bytes: int
    opset: int


class Qwen3GraphBuilder:
    """Emit the graph for one Qwen3 checkpoint; see the module docstring for the variants."""

    def __init__(self, reader: CheckpointReader, dims: Qwen3Dims, weights: WeightFile, *, dtype: torch.dtype,
                 fused: bool, quant: QuantSpec | None = None):
        self.reader = reader
        self.dims = dims
        self.dtype = dtype
        self.onnx_dtype = ONNX_DTYPES[dtype]
        self.fused = fused
        self.quant = quant
        self.g = _Graph(weights)
        self.k = _Constants(self.g, self._consts())

    # ---- small helpers -------------------------------------------------------------------
    def _consts(self) -> dict[str, np.ndarray]:
        """Small constants by key; ``self.k[key]`` adds one to the graph the first time it is used."""
        d = self.dims
        bias_dtype = self.dtype if self.fused else torch.float32  # GQA takes the bias in the model dtype
        np_bias = np.float16 if bias_dtype == torch.float16 else np.float32
        return {
            "i0": np.array(0, np.int64),
            "i1": np.array(1, np.int64),
            "ax_last": np.array([-1], np.int64),
            "ax0": np.array([0], np.int64),
            "ax1": np.array([1], np.int64),
            "ax2": np.array([2], np.int64),
            "ax12": np.array([1, 2], np.int64),
            "two": np.array(2.0, np.float32),
            "eps": np.array(d.rms_norm_eps, np.float32),
            "scale": np.array(d.head_dim ** -0.5, np.float32),
            "bias_zero": np.array(0.0, np_bias),
            "bias_min": np.array(torch.finfo(bias_dtype).min, np_bias),  # finite: masked rows stay NaN-free
            "half0": np.array([0], np.int64),
            "half1": np.array([d.head_dim // 2], np.int64),
            "half2": np.array([d.head_dim], np.int64),
            "shape_q": np.array([0, 0, d.num_heads, d.head_dim], np.int64),
            "shape_kv": np.array([0, 0, d.num_kv_heads, d.head_dim], np.int64),
            "shape_q5": np.array([0, 0, d.num_kv_heads, d.groups, d.head_dim], np.int64),
            "shape_qflat": np.array([0, 0, d.num_heads * d.head_dim], np.int64),
            "shape_kvflat": np.array([0, 0, d.num_kv_heads * d.head_dim], np.int64),
            "shape_2d": np.array([-1, d.hidden_size], np.int64),
            "vocab": np.array([d.vocab_size], np.int64),
        }

    def _read(self, name: str, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> torch.Tensor:
        """One checkpoint tensor, optionally with only the given rows/columns."""
        t = self.reader.tensor(name)
        if rows is not None:
            t = t.index_select(0, rows)
        if cols is not None:
            t = t.index_select(1, cols)
        return t

    def _weight(self, name: str, transpose: bool = False, rows: torch.Tensor | None = None,
                cols: torch.Tensor | None = None) -> str:
        """Read one checkpoint tensor, optionally select rows/columns and transpose, store in the target dtype."""
        t = self._read(name, rows, cols).to(self.dtype)
        if transpose:
            t = t.t()
        return self.g.weights.add(name, t.contiguous())

    def _matmul_nbits(self, x: str, w: torch.Tensor, prefix: str, output: str | None = None) -> str:
        """``x @ w.T`` through MatMulNBits with ``w`` [N, K] quantized; ``output`` names the result if given."""
        q = self.quant
        packed = quantize_weight(w, q)
        add = self.g.weights.add
        inputs = [x, add(f"{prefix}.weight.quant", packed.b), add(f"{prefix}.weight.scales", packed.scales),
                  add(f"{prefix}.weight.zero_points", packed.zero_points)]
        out = output or f"{prefix}/MatMulNBits/out0"
        self.g.op_to("MatMulNBits", inputs, [out], f"{prefix}/MatMulNBits", domain=MS_DOMAIN, K=w.shape[1],
                     N=w.shape[0], bits=q.bits, block_size=q.block_size, accuracy_level=q.accuracy_level)
        return out

    def _linear(self, x: str, prefix: str, **select: torch.Tensor) -> str:
        """``x @ W.T (+ b)``: W stored transposed as [in, out], or quantized for MatMulNBits."""
        if self.quant is not None:
            y = self._matmul_nbits(x, self._read(f"{prefix}.weight", **select), prefix)
        else:
            y = self.g.op("MatMul", [x, self._weight(f"{prefix}.weight", transpose=True, **select)],
                          f"{prefix}/MatMul")
        if self.dims.attention_bias and ".self_attn." in prefix:
            y = self.g.op("Add", [y, self._weight(f"{prefix}.bias")], f"{prefix}/Add")
        return y

    def _rms_norm(self, x: str, weight_name: str, name: str) -> str:
        """RMSNorm as transformers computes it: normalise in float32, cast back, multiply by the weight."""
        g, w = self.g, self._weight(weight_name)
        if self.fused:
            return g.op("RMSNormalization", [x, w], name, axis=-1, epsilon=self.dims.rms_norm_eps, stash_type=1)
        xf = g.op("Cast", [x], f"{name}/Cast", to=TensorProto.FLOAT) if self.dtype != torch.float32 else x
        var = g.op("ReduceMean", [g.op("Pow", [xf, self.k["two"]], f"{name}/Pow"), self.k["ax_last"]],
                   f"{name}/ReduceMean", keepdims=1)
        std = g.op("Sqrt", [g.op("Add", [var, self.k["eps"]], f"{name}/AddEps")], f"{name}/Sqrt")
        y = g.op("Div", [xf, std], f"{name}/Div")
        if self.dtype != torch.float32:
            y = g.op("Cast", [y], f"{name}/CastBack", to=self.onnx_dtype)
        return g.op("Mul", [y, w], f"{name}/Mul")

    # ---- graph pieces shared by all layers --------------------------------------------------
    def _lengths(self) -> tuple[str, str, str]:
        """Scalars: new tokens S, total length T (past + S) and the batch size as a 1-D shape."""
        g, k = self.g, self.k
        ids_shape = g.op("Shape", ["input_ids"], "lengths/ids_shape")
        seq = g.op("Gather", [ids_shape, k["i1"]], "lengths/seq", axis=0)
        total = g.op("Gather", [g.op("Shape", ["attention_mask"], "lengths/mask_shape"), k["i1"]],
                     "lengths/total", axis=0)
        batch = g.op("Slice", [ids_shape, k["ax0"], k["ax1"]], "lengths/batch")
        return seq, total, batch

    def _attention_bias(self, seq: str, total: str) -> str:
        """Additive mask [batch, 1, S, T]: 0 where a query may attend (causal and not padding), else dtype min."""
        g, k = self.g, self.k
        past = g.op("Sub", [total, seq], "mask/past")
        q_pos = g.op("Range", [past, total, k["i1"]], "mask/q_pos")
        k_pos = g.op("Range", [k["i0"], total, k["i1"]], "mask/k_pos")
        causal = g.op("LessOrEqual", [g.op("Unsqueeze", [k_pos, k["ax0"]], "mask/k_row"),
                                      g.op("Unsqueeze", [q_pos, k["ax_last"]], "mask/q_col")], "mask/causal")
        valid = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], "mask/valid", to=TensorProto.BOOL), k["ax12"]],
                     "mask/valid4d")
        allowed = g.op("And", [causal, valid], "mask/allowed")
        return g.op("Where", [allowed, k["bias_zero"], k["bias_min"]], "mask/bias")

    def _rotary_tables(self) -> tuple[str, str]:
        """Plain: cos/sin [batch, S, 1, head_dim] from position_ids. Fused: [max_positions, head_dim/2] caches."""
        g, d = self.g, self.dims
        if self.fused:
            freqs = torch.arange(d.max_positions, dtype=torch.float)[:, None] * inv_freq(d)[None, :]
            return (g.weights.add("rotary.cos_cache", freqs.cos().to(self.dtype)),
                    g.weights.add("rotary.sin_cache", freqs.sin().to(self.dtype)))
        pos = g.op("Cast", ["position_ids"], "rotary/pos", to=TensorProto.FLOAT)
        pos = g.op("Unsqueeze", [pos, self.k["ax_last"]], "rotary/pos3d")
        freqs = g.op("Mul", [pos, g.const("rotary.inv_freq", inv_freq(d).numpy())], "rotary/freqs")
        emb = g.op("Concat", [freqs, freqs], "rotary/emb", axis=-1)
        tables = []
        for fn in ("Cos", "Sin"):
            t = g.op(fn, [emb], f"rotary/{fn}")
            if self.dtype != torch.float32:
                t = g.op("Cast", [t], f"rotary/{fn}/Cast", to=self.onnx_dtype)
            tables.append(g.op("Unsqueeze", [t, self.k["ax2"]], f"rotary/{fn}/4d"))
        return tables[0], tables[1]

    def _rope_plain(self, x: str, cos: str, sin: str, name: str) -> str:
        """x*cos + rotate_half(x)*sin on [batch, S, heads, head_dim]."""
        g, k = self.g, self.k
        x1 = g.op("Slice", [x, k["half0"], k["half1"], k["ax_last"]], f"{name}/x1")
        x2 = g.op("Slice", [x, k["half1"], k["half2"], k["ax_last"]], f"{name}/x2")
        rot = g.op("Concat", [g.op("Neg", [x2], f"{name}/Neg"), x1], f"{name}/rotate_half", axis=-1)
        return g.op("Add", [g.op("Mul", [x, cos], f"{name}/MulCos"), g.op("Mul", [rot, sin], f"{name}/MulSin")],
                    f"{name}/Add")

    # ---- one decoder layer ---------------------------------------------------------------
    def _attention_plain(self, i: int, h: str, cos: str, sin: str, bias: str) -> str:
        g, k = self.g, self.k
        p = LAYER.format(i=i, part="self_attn")
        q = g.op("Reshape", [self._linear(h, f"{p}.q_proj"), k["shape_q"]], f"{p}/q_heads")
        q = self._rope_plain(self._rms_norm(q, f"{p}.q_norm.weight", f"{p}/q_norm"), cos, sin, f"{p}/q_rope")
        key = g.op("Reshape", [self._linear(h, f"{p}.k_proj"), k["shape_kv"]], f"{p}/k_heads")
        key = self._rope_plain(self._rms_norm(key, f"{p}.k_norm.weight", f"{p}/k_norm"), cos, sin, f"{p}/k_rope")
        val = g.op("Reshape", [self._linear(h, f"{p}.v_proj"), k["shape_kv"]], f"{p}/v_heads")
        present_k, present_v = f"present.{i}.key", f"present.{i}.value"
        for src, past, present in ((key, f"past_key_values.{i}.key", present_k),
                                   (val, f"past_key_values.{i}.value", present_v)):
            new = g.op("Transpose", [src], f"{present}/Transpose", perm=[0, 2, 1, 3])
            g.op_to("Concat", [past, new], [present], f"{present}/Concat", axis=2)
        # grouped-query attention without repeating K/V: query heads as [batch, kv, group, S, head_dim]
        q5 = g.op("Transpose", [g.op("Reshape", [q, k["shape_q5"]], f"{p}/q5")], f"{p}/q5T", perm=[0, 2, 3, 1, 4])
        k5 = g.op("Unsqueeze", [g.op("Transpose", [present_k], f"{p}/kT", perm=[0, 1, 3, 2]), k["ax2"]], f"{p}/k5")
        scores = g.op("MatMul", [q5, k5], f"{p}/scores")
        if self.dtype != torch.float32:
            scores = g.op("Cast", [scores], f"{p}/scores/Cast", to=TensorProto.FLOAT)
        scores = g.op("Add", [g.op("Mul", [scores, k["scale"]], f"{p}/scaled"), bias], f"{p}/masked")
        probs = g.op("Softmax", [scores], f"{p}/Softmax", axis=-1)
        if self.dtype != torch.float32:
            probs = g.op("Cast", [probs], f"{p}/probs/Cast", to=self.onnx_dtype)
        v5 = g.op("Unsqueeze", [present_v, k["ax2"]], f"{p}/v5")
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v5], f"{p}/ctx5")], f"{p}/ctxT", perm=[0, 3, 1, 2, 4])
        ctx = g.op("Reshape", [ctx, k["shape_qflat"]], f"{p}/ctx")
        return self._linear(ctx, f"{p}.o_proj")

    def _attention_fused(self, i: int, h: str, cos_cache: str, sin_cache: str, bias: str,
                         seqlens_k: str, total_i32: str) -> str:
        g, k, d = self.g, self.k, self.dims
        p = LAYER.format(i=i, part="self_attn")

        def normed_rope(proj: str, shape: str, flat: str) -> str:
            x = g.op("Reshape", [self._linear(h, f"{p}.{proj}_proj"), k[shape]], f"{p}/{proj}_heads")
            x = self._rms_norm(x, f"{p}.{proj}_norm.weight", f"{p}/{proj}_norm")
            x = g.op("Reshape", [x, k[flat]], f"{p}/{proj}_flat")
            return g.op("RotaryEmbedding", [x, "position_ids", cos_cache, sin_cache], f"{p}/{proj}_rope",
                        domain=MS_DOMAIN)

        q = normed_rope("q", "shape_q", "shape_qflat")
        key = normed_rope("k", "shape_kv", "shape_kvflat")
        val = self._linear(h, f"{p}.v_proj")
        ctx = f"{p}/gqa/out0"
        g.op_to(
            "GroupQueryAttention",
            [q, key, val, f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens_k, total_i32,
             "", "", "", bias],
            [ctx, f"present.{i}.key", f"present.{i}.value"], f"{p}/gqa", domain=MS_DOMAIN,
            num_heads=d.num_heads, kv_num_heads=d.num_kv_heads, scale=d.head_dim ** -0.5, do_rotary=0,
        )
        return self._linear(ctx, f"{p}.o_proj")

    def _mlp(self, i: int, h: str, keep: torch.Tensor | None) -> str:
        """down(silu(gate(h)) * up(h)); ``keep`` selects the neurons of a ragged layer."""
        g = self.g
        p = LAYER.format(i=i, part="mlp")
        rows = {} if keep is None else {"rows": keep}
        cols = {} if keep is None else {"cols": keep}
        gate = self._linear(h, f"{p}.gate_proj", **rows)
        act = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{p}/Sigmoid")], f"{p}/silu")
        inner = g.op("Mul", [act, self._linear(h, f"{p}.up_proj", **rows)], f"{p}/inner")
        return self._linear(inner, f"{p}.down_proj", **cols)

    def _skip_norm(self, x: str, skip: str, weight_name: str, name: str) -> tuple[str, str]:
        """Fused residual add + RMSNorm: returns (normed, x + skip)."""
        normed, total = f"{name}/normed", f"{name}/sum"
        self.g.op_to("SkipSimplifiedLayerNormalization", [x, skip, self._weight(weight_name)],
                     [normed, "", "", total], name, domain=MS_DOMAIN, epsilon=self.dims.rms_norm_eps)
        return normed, total

    # ---- the whole graph -----------------------------------------------------------------
    def build(self, ragged: bool, progress: Callable[[int], None] | None = None) -> BuildResult:
        g, d = self.g, self.dims
        embed_name = "model.embed_tokens.weight"
        embed = self._weight(embed_name)
        residual = g.op("Gather", [embed, "input_ids"], "embed_tokens", axis=0)
        seq, total, batch = self._lengths()
        bias = self._attention_bias(seq, total)
        cos, sin = self._rotary_tables()
        if self.fused:
            total_i32 = g.op("Cast", [total], "gqa/total", to=TensorProto.INT32)
            last = g.op("Cast", [g.op("Sub", [total, self.k["i1"]], "gqa/last")], "gqa/last_i32", to=TensorProto.INT32)
            seqlens_k = g.op("Expand", [last, batch], "gqa/seqlens_k")
        else:
            bias = g.op("Unsqueeze", [bias, self.k["ax1"]], "mask/bias5d")
        widths: list[int] = []
        pending: str | None = None  # fused: a branch output not yet added to the residual
        for i in range(d.num_layers):
            keep = live_neurons(self.reader, i) if ragged else None
            widths.append(d.intermediate_size if keep is None else int(keep.numel()))
            norm_in = LAYER.format(i=i, part="input_layernorm.weight")
            norm_post = LAYER.format(i=i, part="post_attention_layernorm.weight")
            if self.fused:
                if pending is None:
                    h = self._rms_norm(residual, norm_in, f"layers.{i}/input_norm")
                else:
                    h, residual = self._skip_norm(pending, residual, norm_in, f"layers.{i}/input_norm")
                attn = self._attention_fused(i, h, cos, sin, bias, seqlens_k, total_i32)
                if widths[-1]:
                    h, residual = self._skip_norm(attn, residual, norm_post, f"layers.{i}/post_norm")
                    pending = self._mlp(i, h, keep)
                else:
                    residual, pending = g.op("Add", [residual, attn], f"layers.{i}/attn_residual"), None
            else:
                h = self._rms_norm(residual, norm_in, f"layers.{i}/input_norm")
                attn = self._attention_plain(i, h, cos, sin, bias)
                residual = g.op("Add", [residual, attn], f"layers.{i}/attn_residual")
                if widths[-1]:  # a layer with no neuron left adds exactly 0: no MLP at all
                    h = self._rms_norm(residual, norm_post, f"layers.{i}/post_norm")
                    residual = g.op("Add", [residual, self._mlp(i, h, keep)], f"layers.{i}/mlp_residual")
            if progress is not None:
                progress(i)
        if self.fused and pending is not None:
            h, _ = self._skip_norm(pending, residual, "model.norm.weight", "final_norm")
        else:
            h = self._rms_norm(residual, "model.norm.weight", "final_norm")
        self._lm_head(h, embed_name, embed)
        return BuildResult(self._model(), widths, g.weights.offset, FUSED_OPSET if self.fused else PLAIN_OPSET)

    def _lm_head(self, h: str, embed_name: str, embed: str) -> None:
        """logits = h @ W.T with W the (tied) embedding or lm_head.weight; quantized: a MatMulNBits of its own."""
        g, d = self.g, self.dims
        head_name = embed_name if d.tied_embeddings else "lm_head.weight"
        if self.quant is not None:
            self._matmul_nbits(h, self._read(head_name), "lm_head", output="logits")
            return
        head = embed if d.tied_embeddings else self._weight(head_name)
        flat = g.op("Gemm", [g.op("Reshape", [h, self.k["shape_2d"]], "lm_head/flat"), head], "lm_head/Gemm",
                    transB=1)
        out_shape = g.op("Concat", [g.op("Shape", ["input_ids"], "lm_head/ids_shape"), self.k["vocab"]],
                         "lm_head/shape", axis=0)
        g.op_to("Reshape", [flat, out_shape], ["logits"], "lm_head/Reshape")

    def _model(self) -> onnx.ModelProto:
        d, dt = self.dims, self.onnx_dtype
        kv = ["batch", d.num_kv_heads, "past_sequence", d.head_dim]
        present = ["batch", d.num_kv_heads, "total_sequence", d.head_dim]
        inputs = [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"]),
        ]
        outputs = [helper.make_tensor_value_info("logits", dt, ["batch", "sequence", d.vocab_size])]
        for i in range(d.num_layers):
            for part in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{part}", dt, kv))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{part}", dt, present))
        graph = helper.make_graph(self.g.nodes, "qwen3", inputs, outputs,
                                  initializer=self.g.constants + self.g.weights.initializers)
        opsets = [helper.make_opsetid("", FUSED_OPSET if self.fused else PLAIN_OPSET)]
        if self.fused or self.quant is not None:
            opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
        model = helper.make_model(graph, opset_imports=opsets, producer_name="lambda-bake")
        model.ir_version = 10
        return model


def build_qwen3_model(reader: CheckpointReader, config: dict[str, Any], data_path: Path, *,
                      dtype: torch.dtype, ragged: bool, fused: bool, quant: QuantSpec | None = None,
                      progress: Callable[[int], None] | None = None) -> BuildResult:
    """Build the graph; weights go to ``data_path`` (raw, external data). Returns the proto and facts."""
    if dtype not in ONNX_DTYPES:
        raise ExportError(f"dtype {dtype} cannot be exported; use float32 or float16")
    dims = qwen3_dims(config, reader)
    with open(data_path, "wb") as f:
        weights = WeightFile(f, Path(data_path).name)
        return Qwen3GraphBuilder(reader, dims, weights, dtype=dtype, fused=fused, quant=quant).build(ragged, progress)
