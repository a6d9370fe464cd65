"""The portable Qwen3 graph: standard ONNX ops only (opset 21), exact to float rounding.

Inputs ``input_ids``, ``attention_mask`` [batch, past + seq] (any padding), ``position_ids`` and
``past_key_values.{i}.key/value`` [batch, kv_heads, past, head_dim]; outputs ``logits`` for every
position and ``present.{i}.key/value`` (past and new keys concatenated). Runs on any ONNX runtime
and execution provider, with no position limit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from onnx import TensorProto, helper

from export.onnx.graph_base import EMBED, LAYER, BuildResult, GraphBuilder, MlpNeurons, Projection, inv_freq


class PortableGraphBuilder(GraphBuilder):
    """Emit the standard-ops graph for one Qwen3 checkpoint."""

    def constant_values(self) -> dict[str, np.ndarray]:
        d = self.dims
        return super().constant_values() | {
            "i0": np.array(0, np.int64),
            "ax2": np.array([2], np.int64),
            "ax12": np.array([1, 2], np.int64),
            "two": np.array(2.0, np.float32),
            "eps": np.array(d.rms_norm_eps, np.float32),
            "scale": np.array(d.head_dim ** -0.5, np.float32),
            "bias_zero": np.array(0.0, np.float32),
            "bias_min": np.array(torch.finfo(torch.float32).min, np.float32),  # finite: masked rows stay NaN-free
            "half0": np.array([0], np.int64),
            "half1": np.array([d.head_dim // 2], np.int64),
            "half2": np.array([d.head_dim], np.int64),
            "shape_q": np.array([0, 0, d.num_heads, d.head_dim], np.int64),
            "shape_kv": np.array([0, 0, d.num_kv_heads, d.head_dim], np.int64),
            "shape_q5": np.array([0, 0, d.num_kv_heads, d.groups, d.head_dim], np.int64),
            "shape_qflat": np.array([0, 0, d.num_heads * d.head_dim], np.int64),
            "shape_2d": np.array([-1, d.hidden_size], np.int64),
            "vocab": np.array([d.vocab_size], np.int64),
        }

    def rms_norm(self, x: str, weight_name: str, name: str) -> str:
        """RMSNorm as transformers computes it: normalise in float32, cast back, multiply by the weight."""
        g, w = self.g, self.weight(weight_name)
        xf = g.op("Cast", [x], f"{name}/Cast", to=TensorProto.FLOAT) if self.dtype != torch.float32 else x
        var = g.op("ReduceMean", [g.op("Pow", [xf, self.k["two"]], f"{name}/Pow"), self.k["ax_last"]],
                   f"{name}/ReduceMean", keepdims=1)
        std = g.op("Sqrt", [g.op("Add", [var, self.k["eps"]], f"{name}/AddEps")], f"{name}/Sqrt")
        y = g.op("Div", [xf, std], f"{name}/Div")
        if self.dtype != torch.float32:
            y = g.op("Cast", [y], f"{name}/CastBack", to=self.onnx_dtype)
        return g.op("Mul", [y, w], f"{name}/Mul")

    def lengths(self) -> tuple[str, str]:
        """Scalars: new tokens S and total length T (past + S)."""
        g, k = self.g, self.k
        seq = g.op("Gather", [g.op("Shape", ["input_ids"], "lengths/ids_shape"), k["i1"]], "lengths/seq", axis=0)
        total = g.op("Gather", [g.op("Shape", ["attention_mask"], "lengths/mask_shape"), k["i1"]],
                     "lengths/total", axis=0)
        return seq, total

    def attention_bias(self, seq: str, total: str) -> str:
        """Additive mask [batch, 1, 1, S, T]: 0 where a query may attend (causal and not padding), else min."""
        g, k = self.g, self.k
        past = g.op("Sub", [total, seq], "mask/past")
        q_pos = g.op("Range", [past, total, k["i1"]], "mask/q_pos")
        k_pos = g.op("Range", [k["i0"], total, k["i1"]], "mask/k_pos")
        causal = g.op("LessOrEqual", [g.op("Unsqueeze", [k_pos, k["ax0"]], "mask/k_row"),
                                      g.op("Unsqueeze", [q_pos, k["ax_last"]], "mask/q_col")], "mask/causal")
        valid = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], "mask/valid", to=TensorProto.BOOL), k["ax12"]],
                     "mask/valid4d")
        allowed = g.op("And", [causal, valid], "mask/allowed")
        bias = g.op("Where", [allowed, k["bias_zero"], k["bias_min"]], "mask/bias")
        return g.op("Unsqueeze", [bias, k["ax1"]], "mask/bias5d")

    def rotary_tables(self) -> tuple[str, str]:
        """cos/sin [batch, S, 1, head_dim] from position_ids."""
        g = self.g
        pos = g.op("Cast", ["position_ids"], "rotary/pos", to=TensorProto.FLOAT)
        pos = g.op("Unsqueeze", [pos, self.k["ax_last"]], "rotary/pos3d")
        freqs = g.op("Mul", [pos, g.const("rotary.inv_freq", inv_freq(self.dims).numpy())], "rotary/freqs")
        emb = g.op("Concat", [freqs, freqs], "rotary/emb", axis=-1)
        tables = []
        for fn in ("Cos", "Sin"):
            t = g.op(fn, [emb], f"rotary/{fn}")
            if self.dtype != torch.float32:
                t = g.op("Cast", [t], f"rotary/{fn}/Cast", to=self.onnx_dtype)
            tables.append(g.op("Unsqueeze", [t, self.k["ax2"]], f"rotary/{fn}/4d"))
        return tables[0], tables[1]

    def rope(self, x: str, cos: str, sin: str, name: str) -> str:
        """x*cos + rotate_half(x)*sin on [batch, S, heads, head_dim]."""
        g, k = self.g, self.k
        x1 = g.op("Slice", [x, k["half0"], k["half1"], k["ax_last"]], f"{name}/x1")
        x2 = g.op("Slice", [x, k["half1"], k["half2"], k["ax_last"]], f"{name}/x2")
        rot = g.op("Concat", [g.op("Neg", [x2], f"{name}/Neg"), x1], f"{name}/rotate_half", axis=-1)
        return g.op("Add", [g.op("Mul", [x, cos], f"{name}/MulCos"), g.op("Mul", [rot, sin], f"{name}/MulSin")],
                    f"{name}/Add")

    def attention(self, i: int, h: str, cos: str, sin: str, bias: str) -> str:
        g, k = self.g, self.k
        p = LAYER.format(i=i, part="self_attn")

        def heads(proj: str, shape: str) -> str:
            return g.op("Reshape", [self.linear(h, [Projection(f"{p}.{proj}")], f"{p}.{proj}"), k[shape]],
                        f"{p}/{proj}_heads")

        q = self.rope(self.rms_norm(heads("q_proj", "shape_q"), f"{p}.q_norm.weight", f"{p}/q_norm"), cos, sin,
                      f"{p}/q_rope")
        key = self.rope(self.rms_norm(heads("k_proj", "shape_kv"), f"{p}.k_norm.weight", f"{p}/k_norm"), cos, sin,
                        f"{p}/k_rope")
        val = heads("v_proj", "shape_kv")
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
        return self.linear(ctx, [Projection(f"{p}.o_proj")], f"{p}.o_proj")

    def mlp(self, i: int, h: str, neurons: MlpNeurons) -> str:
        """down(silu(gate(h)) * up(h)) over ``neurons`` (a ragged layer's live ones, zero neurons for alignment)."""
        g = self.g
        p = LAYER.format(i=i, part="mlp")
        proj = self.mlp_projections(i, neurons)
        gate = self.linear(h, [proj["gate"]], f"{p}.gate_proj")
        act = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{p}/Sigmoid")], f"{p}/silu")
        inner = g.op("Mul", [act, self.linear(h, [proj["up"]], f"{p}.up_proj")], f"{p}/inner")
        return self.linear(inner, [proj["down"]], f"{p}.down_proj")

    def build(self, ragged: bool, progress: Callable[[int], None] | None = None) -> BuildResult:
        g, d = self.g, self.dims
        embed = self.weight(EMBED)
        residual = g.op("Gather", [embed, "input_ids"], "embed_tokens", axis=0)
        seq, total = self.lengths()
        bias = self.attention_bias(seq, total)
        cos, sin = self.rotary_tables()
        widths: list[int] = []
        padding: list[int] = []
        for i in range(d.num_layers):
            neurons = self.mlp_neurons(i, ragged)
            widths.append(neurons.width)
            padding.append(neurons.padding)
            h = self.rms_norm(residual, LAYER.format(i=i, part="input_layernorm.weight"), f"layers.{i}/input_norm")
            residual = g.op("Add", [residual, self.attention(i, h, cos, sin, bias)], f"layers.{i}/attn_residual")
            if widths[-1]:  # a layer with no neuron left adds exactly 0: no MLP at all
                h = self.rms_norm(residual, LAYER.format(i=i, part="post_attention_layernorm.weight"),
                                  f"layers.{i}/post_norm")
                residual = g.op("Add", [residual, self.mlp(i, h, neurons)], f"layers.{i}/mlp_residual")
            if progress is not None:
                progress(i)
        self.lm_head(self.rms_norm(residual, "model.norm.weight", "final_norm"), embed)
        inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, dims) for name, dims in (
            ("input_ids", ["batch", "sequence"]), ("attention_mask", ["batch", "total_sequence"]),
            ("position_ids", ["batch", "sequence"]))]
        model = self.model_proto(inputs, ["batch", "sequence", d.vocab_size])
        return BuildResult(model, widths, padding, g.weights.offset, self.opset)

    def lm_head(self, h: str, embed: str) -> None:
        """logits = h @ W.T with W the (tied) embedding or lm_head.weight; quantized: a MatMulNBits of its own."""
        g = self.g
        if self.quant is not None:
            self.matmul_nbits(h, self.reader.tensor(self.head_weight_name()), "lm_head", output="logits")
            return
        head = embed if self.dims.tied_embeddings else self.weight("lm_head.weight")
        flat = g.op("Gemm", [g.op("Reshape", [h, self.k["shape_2d"]], "lm_head/flat"), head], "lm_head/Gemm",
                    transB=1)
        out_shape = g.op("Concat", [g.op("Shape", ["input_ids"], "lm_head/ids_shape"), self.k["vocab"]],
                         "lm_head/shape", axis=0)
        g.op_to("Reshape", [flat, out_shape], ["logits"], "lm_head/Reshape")
