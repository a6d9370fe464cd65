"""The ONNX Runtime Qwen3 graph (targets ``cpu`` and ``cuda``): what onnxruntime-genai's model builder
emits for Qwen3, for any per-layer MLP width.

Per layer: ``SkipSimplifiedLayerNormalization`` (residual add + RMSNorm in one kernel), one packed
QKV projection split three ways, ``GroupQueryAttention`` with rotary embedding inside the kernel
(cos/sin caches) writing the KV cache in place, the o projection, another skip-norm, one packed
gate/up projection, SiLU gate, and the down projection. Sequence lengths come from
``attention_mask`` inside the graph (``seqlens_k = sum(mask) - 1``); there is no ``position_ids``
input: GroupQueryAttention derives positions from the lengths, so prompts are right-padded.

The KV cache is one buffer per layer shared by ``past_key_values.{i}.*`` and ``present.{i}.*``
(bind the same tensor to both; its length is the capacity, [batch, kv_heads, max_length, head_dim]).
Only the last real token of each row gets logits ([batch, 1, vocab], in the model dtype): decoding
reads one row, and a prompt of S tokens skips S - 1 rows of the largest matmul.

``cuda`` also moves the per-head q/k RMSNorm into GroupQueryAttention (its ``q_norm_weight`` /
``k_norm_weight`` inputs, a CUDA/WebGPU-only prologue); ``cpu`` keeps it as RMSNormalization nodes.
Every op here has a CUDA kernel, and the only shape computation (the scalar total length) feeds an
input the CUDA kernel reads on the host, so no Memcpy node is needed and CUDA graphs can be captured.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import TensorProto, helper

from bake.errors import ExportError
from export.onnx.graph_base import (
    EMBED,
    LAYER,
    MS_DOMAIN,
    BuildResult,
    Embedding,
    GraphBuilder,
    MlpNeurons,
    Projection,
    QuantizedInputs,
    rotary_caches,
)
from export.onnx.quantize import QuantSpec
from export.options import EMBEDDINGS


class OrtGraphBuilder(GraphBuilder):
    """Emit the ONNX Runtime graph; ``fuse_qk_norm`` puts the q/k RMSNorm inside GroupQueryAttention."""

    opset = 23  # RMSNormalization

    def __init__(self, *args, fuse_qk_norm: bool, embedding: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.fuse_qk_norm = fuse_qk_norm
        self.embedding = embedding_form(embedding, self.quant, self.dims.hidden_size, self.dims.tied_embeddings)
        self.head: QuantizedInputs | None = None  # the tied table's codes, when the embedding shares them
        if self.dims.head_dim % 16:
            raise ExportError(f"head_dim {self.dims.head_dim} is not a multiple of 16, which ONNX Runtime's "
                              "GroupQueryAttention needs; export this model with --target portable")

    def constant_values(self) -> dict[str, np.ndarray]:
        d = self.dims
        return super().constant_values() | {
            "ax1_only": np.array([1], np.int64),
            "split_qkv": np.array([d.num_heads * d.head_dim, d.num_kv_heads * d.head_dim,
                                   d.num_kv_heads * d.head_dim], np.int64),
            "shape_q": np.array([0, 0, d.num_heads, d.head_dim], np.int64),
            "shape_kv": np.array([0, 0, d.num_kv_heads, d.head_dim], np.int64),
            "shape_qflat": np.array([0, 0, d.num_heads * d.head_dim], np.int64),
            "shape_kvflat": np.array([0, 0, d.num_kv_heads * d.head_dim], np.int64),
            "shape_rows": np.array([-1, d.hidden_size], np.int64),
            "i0": np.array(0, np.int64),
        }

    def rms_norm(self, x: str, weight_name: str, name: str) -> str:
        """RMSNorm over the last axis, computed in float32 (stash_type 1)."""
        return self.g.op("RMSNormalization", [x, self.weight(weight_name)], name, axis=-1,
                         epsilon=self.dims.rms_norm_eps, stash_type=1)

    def skip_norm(self, x: str, skip: str, weight_name: str, name: str, keep_sum: bool = True) -> tuple[str, str]:
        """Residual add + RMSNorm in one kernel: returns (normed, x + skip); without ``keep_sum`` the sum is not
        written (the final norm: nothing reads it) and '' stands for it."""
        normed, total = f"{name}/normed", f"{name}/sum" if keep_sum else ""
        self.g.op_to("SkipSimplifiedLayerNormalization", [x, skip, self.weight(weight_name)],
                     [normed, "", "", total] if keep_sum else [normed], name, domain=MS_DOMAIN,
                     epsilon=self.dims.rms_norm_eps)
        return normed, total

    def sequence_lengths(self) -> tuple[str, str, str]:
        """From attention_mask: per-row real lengths T [batch] (int64), seqlens_k = T - 1 (int32) and the
        scalar total length (int32, a host-side input of GroupQueryAttention)."""
        g, k = self.g, self.k
        lengths = g.op("ReduceSum", ["attention_mask", k["ax1_only"]], "lengths/T", keepdims=0)
        seqlens_k = g.op("Cast", [g.op("Sub", [lengths, k["i1"]], "lengths/T_minus_1")], "lengths/seqlens_k",
                         to=TensorProto.INT32)
        width = g.op("Gather", [g.op("Shape", ["attention_mask"], "lengths/mask_shape"), k["i1"]],
                     "lengths/mask_width", axis=0)
        total = g.op("Cast", [width], "lengths/total_sequence_length", to=TensorProto.INT32)
        return lengths, seqlens_k, total

    def attention(self, i: int, h: str, lengths: tuple[str, str], caches: tuple[str, str]) -> str:
        g, k, d = self.g, self.k, self.dims
        p = LAYER.format(i=i, part="self_attn")
        qkv = self.linear(h, [Projection(f"{p}.{n}_proj") for n in ("q", "k", "v")], f"{p}.qkv_proj")
        q, key, val = (f"{p}/qkv_split/{n}" for n in ("q", "k", "v"))
        g.op_to("Split", [qkv, k["split_qkv"]], [q, key, val], f"{p}/qkv_split", axis=-1)
        norm_inputs: list[str] = []
        if self.fuse_qk_norm:
            norm_inputs = ["", "", "", "", "", self.weight(f"{p}.q_norm.weight"), self.weight(f"{p}.k_norm.weight")]
        else:
            q, key = (self.head_norm(x, f"{p}.{n}_norm.weight", k[heads], k[flat], f"{p}/{n}_norm")
                      for x, n, heads, flat in ((q, "q", "shape_q", "shape_qflat"),
                                                (key, "k", "shape_kv", "shape_kvflat")))
        attrs = {"qk_norm_epsilon": d.rms_norm_eps} if self.fuse_qk_norm else {}
        ctx = f"{p}/gqa/out0"
        g.op_to("GroupQueryAttention",
                [q, key, val, f"past_key_values.{i}.key", f"past_key_values.{i}.value", *lengths, *caches,
                 *norm_inputs],
                [ctx, f"present.{i}.key", f"present.{i}.value"], f"{p}/gqa", domain=MS_DOMAIN,
                num_heads=d.num_heads, kv_num_heads=d.num_kv_heads, scale=d.head_dim ** -0.5, do_rotary=1,
                rotary_interleaved=0, local_window_size=-1, softcap=0.0, **attrs)
        return self.linear(ctx, [Projection(f"{p}.o_proj")], f"{p}.o_proj")

    def head_norm(self, x: str, weight_name: str, heads: str, flat: str, name: str) -> str:
        """Per-head RMSNorm of [batch, S, heads * head_dim]."""
        g = self.g
        x = g.op("Reshape", [x, heads], f"{name}/heads")
        return g.op("Reshape", [self.rms_norm(x, weight_name, f"{name}/RMSNorm"), flat], f"{name}/flat")

    def mlp(self, i: int, h: str, neurons: MlpNeurons) -> str:
        """down(silu(gate(h)) * up(h)) with gate and up in one packed projection."""
        g = self.g
        p = LAYER.format(i=i, part="mlp")
        proj = self.mlp_projections(i, neurons)
        gate_up = self.linear(h, [proj["gate"], proj["up"]], f"{p}.gate_up_proj")
        gate, up = f"{p}/gate_up_split/gate", f"{p}/gate_up_split/up"
        g.op_to("Split", [gate_up, g.const(f"{p}/split", np.array([neurons.width] * 2, np.int64))], [gate, up],
                f"{p}/gate_up_split", axis=-1)
        act = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{p}/Sigmoid")], f"{p}/silu")
        inner = g.op("Mul", [act, up], f"{p}/inner")
        return self.linear(inner, [proj["down"]], f"{p}.down_proj")

    def last_token(self, h: str, lengths: str) -> str:
        """Hidden state of each row's last real token, [batch, hidden]: row index min(T, S) - 1, which is
        T - 1 for a right-padded first prompt and S - 1 once a cache holds earlier tokens.

        Taken with Gather on the [batch * S, hidden] rows (row b's index offset by b * S, a CumSum of S per row),
        not GatherND: ONNX Runtime's CUDA GatherND copied its strides from the host at run time, which CUDA-graph
        capture does not allow. Every value here stays on the device."""
        g, k = self.g, self.k
        ones = g.op("ConstantOfShape", [g.op("Shape", ["input_ids"], "last/ids_shape")], "last/ones",
                    value=helper.make_tensor("one", TensorProto.INT64, [1], [1]))
        seq = g.op("ReduceSum", [ones, k["ax1_only"]], "last/S", keepdims=0)  # [batch], each S
        row_start = g.op("Sub", [g.op("CumSum", [seq, k["i0"]], "last/row_end"), seq], "last/row_start")
        index = g.op("Sub", [g.op("Min", [lengths, seq], "last/min"), k["i1"]], "last/index")
        flat = g.op("Reshape", [h, k["shape_rows"]], "last/rows")
        return g.op("Gather", [flat, g.op("Add", [row_start, index], "last/flat_index")], "last/hidden", axis=0)

    def embed_tokens(self) -> tuple[str, str | None]:
        """The token embeddings of ``input_ids`` and the float table's name (None: the table is quantized).

        Quantized (``self.embedding``), the rows come from GatherBlockQuantized on int codes: for a tied model the
        lm_head's own MatMulNBits initializers (one table on disk, as onnxruntime-genai's builder shares it), else
        the embedding's, quantized the same way. GatherBlockQuantized takes the codes as [vocab, hidden * bits / 8],
        the bytes of MatMulNBits' [vocab, blocks, block * bits / 8], so a Reshape of the same initializer feeds it.
        """
        g, q = self.g, self.quant
        if self.embedding.form == "float":
            embed = self.weight(EMBED)
            return g.op("Gather", [embed, "input_ids"], "embed_tokens", axis=0), embed
        shared = self.embedding.form == "shared"
        table = self.quantized_weight(self.reader.tensor(EMBED), "lm_head" if shared else "model.embed_tokens")
        if shared:
            self.head = table
        rows = g.op("Reshape", [table.b, g.const("const/embed_tokens/rows", np.array([table.n, table.k * q.bits // 8],
                                                                                       np.int64))],
                    "embed_tokens/Reshape")
        inputs = [rows, "input_ids", table.scales] + ([table.zero_points] if table.zero_points else [])
        out = g.op("GatherBlockQuantized", inputs, "embed_tokens",
                   domain=MS_DOMAIN, bits=q.bits, block_size=q.block_size, gather_axis=0, quantize_axis=1)
        return out, None

    def lm_head(self, h: str, embed: str | None) -> None:
        """logits [batch, 1, vocab] = h @ W.T (tied embedding or lm_head.weight; quantized: its own MatMulNBits, or the
        codes it shares with the embedding), in ``logits_dtype``."""
        g = self.g
        if self.quant is not None:
            flat = self.matmul_nbits(h, self.head or self.reader.tensor(self.head_weight_name()), "lm_head")
        else:
            head = embed if self.dims.tied_embeddings else self.weight("lm_head.weight")
            flat = g.op("Gemm", [h, head], "lm_head/Gemm", transB=1)
        if self.logits_dtype != self.onnx_dtype:
            flat = g.op("Cast", [flat], "lm_head/Cast", to=self.logits_dtype)
        g.op_to("Unsqueeze", [flat, self.k["ax1_only"]], ["logits"], "lm_head/Unsqueeze")

    def build(self, ragged: bool, progress: Callable[[int], None] | None = None) -> BuildResult:
        g, d = self.g, self.dims
        residual, embed = self.embed_tokens()
        lengths, seqlens_k, total = self.sequence_lengths()
        cos, sin = (g.weights.add(f"rotary.{n}_cache", t.to(self.dtype)) for n, t in zip(("cos", "sin"),
                                                                                         rotary_caches(d)))
        widths: list[int] = []
        padding: list[int] = []
        pending: str | None = None  # a branch output not yet added to the residual
        for i in range(d.num_layers):
            neurons = self.mlp_neurons(i, ragged)
            widths.append(neurons.width)
            padding.append(neurons.padding)
            norm_in = LAYER.format(i=i, part="input_layernorm.weight")
            if pending is None:
                h = self.rms_norm(residual, norm_in, f"layers.{i}/input_norm")
            else:
                h, residual = self.skip_norm(pending, residual, norm_in, f"layers.{i}/input_norm")
            pending = self.attention(i, h, (seqlens_k, total), (cos, sin))
            if widths[-1]:  # a layer with no neuron left adds exactly 0: no MLP at all
                h, residual = self.skip_norm(pending, residual, LAYER.format(i=i, part="post_attention_layernorm.weight"),
                                             f"layers.{i}/post_norm")
                pending = self.mlp(i, h, neurons)
            if progress is not None:
                progress(i)
        h, _ = self.skip_norm(pending, residual, "model.norm.weight", "final_norm", keep_sum=False)
        self.lm_head(self.last_token(h, lengths), embed)
        inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
                  helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence"])]
        model = self.model_proto(inputs, ["batch", 1, d.vocab_size])
        return BuildResult(model, widths, padding, g.weights.offset, self.opset, self.embedding)


def embedding_form(asked: str, quant: QuantSpec | None, hidden: int, tied: bool) -> Embedding:
    """How a graph of these weights looks up embeddings (``Embedding``), for ``--embedding`` ``asked``."""
    if asked not in EMBEDDINGS:
        raise ExportError(f"unknown --embedding {asked!r}; choose one of {', '.join(EMBEDDINGS)}")
    if quant is None:
        if asked == "quantized":
            raise ExportError("--embedding quantized needs quantized weights (--quantize int4 or int8): the table "
                              "takes the linear layers' codes")
        return Embedding("float")
    if asked == "float":
        return Embedding("float", "--embedding float")
    blocks, rest = divmod(hidden, quant.block_size)
    if rest:
        return Embedding("float", f"hidden size {hidden} is not a whole number of {quant.block_size}-wide blocks, "
                                  "which GatherBlockQuantized needs")
    if quant.bits == 4 and blocks % 2 and not quant.symmetric:
        return Embedding("float", f"{blocks} blocks a row: ONNX Runtime's CUDA GatherBlockQuantized reads 4-bit zero "
                                  "points packed across rows, wrong for an odd number of blocks (onnxruntime issue "
                                  "32663)")
    return Embedding("shared" if tied else "quantized")
