"""What every Qwen3 graph form shares: config dims, streamed weights, node helpers, linear layers.

Weights are read one at a time with ``CheckpointReader``, converted to the target dtype and streamed
into a raw external-data file as they are added, so peak memory is one tensor and the graph proto
stays small (the exporter inlines the data again for small models). The graph forms themselves
live in ``graph_portable`` (standard ONNX ops) and ``graph_ort`` (ONNX Runtime's fused kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from bake.errors import ExportError
from bake.io.base_model import rope_theta
from bake.io.tensor_io import CheckpointReader, tensor_bytes
from export.onnx.quantize import QuantSpec, quantize_weight

ONNX_DTYPES: dict[torch.dtype, int] = {
    torch.float32: TensorProto.FLOAT,
    torch.float16: TensorProto.FLOAT16,
    torch.bfloat16: TensorProto.BFLOAT16,
    torch.uint8: TensorProto.UINT8,  # packed MatMulNBits weights and zero points
}
MS_DOMAIN = "com.microsoft"
DATA_ALIGN = 4096  # page-align large external tensors so ONNX Runtime can map them directly
ALIGN_FROM = 64 << 10  # smaller ones (norms, q/k norms, scales of small layers) are packed tight: no page each

LAYER = "model.layers.{i}.{part}"
EMBED = "model.embed_tokens.weight"


@dataclass(frozen=True)
class Qwen3Dims:
    """The numbers of a Qwen3 config that shape the graph."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    mlp_widths: tuple[int, ...]  # each layer's MLP width in the checkpoint (a ragged bake: each its own)
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
    theta = rope_theta(config)
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
        mlp_widths=tuple(int(reader.tensors[LAYER.format(i=i, part="mlp.down_proj.weight")].shape[1])
                         for i in range(int(config["num_hidden_layers"]))),
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


def rotary_caches(dims: Qwen3Dims) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [max_positions, head_dim / 2] in float32, as ONNX Runtime's rotary kernels take them."""
    freqs = torch.arange(dims.max_positions, dtype=torch.float)[:, None] * inv_freq(dims)[None, :]
    return freqs.cos(), freqs.sin()


class WeightFile:
    """Streams initializers into one raw file; each becomes an external-data ``TensorProto``."""

    def __init__(self, file: BinaryIO, location: str):
        self.file = file
        self.location = location
        self.offset = 0
        self.initializers: list[TensorProto] = []

    def add(self, name: str, t: torch.Tensor) -> str:
        data = tensor_bytes(t)
        pad = -self.offset % DATA_ALIGN if len(data) >= ALIGN_FROM else 0
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
class GraphNodes:
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


class Constants:
    """Lazily added named constants: only those the graph uses end up in it."""

    def __init__(self, graph: GraphNodes, values: dict[str, np.ndarray]):
        self.graph, self.values, self.names = graph, values, {}

    def __getitem__(self, key: str) -> str:
        if key not in self.names:
            self.names[key] = self.graph.const(f"const/{key}", self.values[key])
        return self.names[key]


@dataclass
class BuildResult:
    """What was built: the model proto (weights external) and the facts onnx_io.json records."""

    model: onnx.ModelProto
    mlp_widths: list[int]  # per layer, the graph's MLP width: kept neurons plus zero neurons for alignment
    mlp_padding: list[int]  # per layer, the zero neurons added to reach a multiple of the width multiple
    weight_bytes: int
    opset: int
    embedding: Embedding = field(default_factory=lambda: Embedding("float"))


@dataclass(frozen=True)
class QuantizedInputs:
    """The stored initializers of one blockwise-quantized [n, k] weight (MatMulNBits' B, scales, zero points)."""

    b: str
    scales: str
    zero_points: str  # "" when symmetric (the kernels' implicit zero point)
    n: int
    k: int


@dataclass(frozen=True)
class Embedding:
    """How the graph looks up token embeddings: ``float`` (a Gather on the export-dtype table), ``shared`` (the
    tied table's int codes shared with the quantized lm_head, through GatherBlockQuantized) or ``quantized`` (an
    untied table quantized the same way); ``why``: why a quantized export kept the float table."""

    form: str
    why: str | None = None


@dataclass(frozen=True)
class MlpNeurons:
    """The neurons one layer's MLP holds in the graph: the checkpoint's neurons ``keep`` (None: all of them), then
    ``padding`` zero neurons (zero gate/up rows, zero down columns: they add exactly 0)."""

    keep: torch.Tensor | None
    kept: int
    padding: int

    @property
    def width(self) -> int:
        return self.kept + self.padding


def aligned_width(kept: int, multiple: int) -> int:
    """``kept`` rounded up to a multiple of ``multiple``; a layer with nothing left stays 0 (it has no MLP)."""
    return -(-kept // multiple) * multiple


@dataclass(frozen=True)
class Projection:
    """One checkpoint linear layer, optionally restricted to some of its output rows or input columns, then
    extended by ``pad_rows`` zero rows or ``pad_cols`` zero input columns."""

    prefix: str
    rows: torch.Tensor | None = None
    cols: torch.Tensor | None = None
    pad_rows: int = 0
    pad_cols: int = 0


class GraphBuilder:
    """Weight reading, linear layers (float or MatMulNBits) and the model proto; subclasses emit the layers."""

    opset = 21

    def __init__(self, reader: CheckpointReader, dims: Qwen3Dims, weights: WeightFile, *, dtype: torch.dtype,
                 quant: QuantSpec | None = None, width_multiple: int = 1):
        if width_multiple < 1:
            raise ExportError(f"width multiple {width_multiple} must be at least 1")
        self.reader = reader
        self.dims = dims
        self.dtype = dtype
        self.onnx_dtype = ONNX_DTYPES[dtype]
        self.quant = quant
        self.width_multiple = width_multiple
        self.g = GraphNodes(weights)
        self.k = Constants(self.g, self.constant_values())

    def constant_values(self) -> dict[str, np.ndarray]:
        """Small constants by key; ``self.k[key]`` adds one to the graph the first time it is used."""
        return {"ax_last": np.array([-1], np.int64), "ax0": np.array([0], np.int64),
                "ax1": np.array([1], np.int64), "i1": np.array(1, np.int64)}

    def read(self, p: Projection, part: str = "weight") -> torch.Tensor:
        """One checkpoint tensor of a projection, with only its selected rows/columns."""
        t = self.reader.tensor(f"{p.prefix}.{part}")
        if p.rows is not None:
            t = t.index_select(0, p.rows)
        if p.cols is not None and part == "weight":
            t = t.index_select(1, p.cols)
        if p.pad_rows:
            t = torch.nn.functional.pad(t, (0, 0) * (t.dim() - 1) + (0, p.pad_rows))
        if p.pad_cols and part == "weight":
            t = torch.nn.functional.pad(t, (0, p.pad_cols))
        return t

    def weight(self, name: str) -> str:
        """Store one checkpoint tensor as is, in the target dtype."""
        return self.g.weights.add(name, self.reader.tensor(name).to(self.dtype).contiguous())

    def linear(self, x: str, projections: Sequence[Projection], name: str, output: str | None = None) -> str:
        """``x @ W.T (+ b)`` for W the projections' weights stacked along the output dim (one MatMul for all).

        Float: W stored transposed as [in, out]; quantized: one MatMulNBits on the stacked [out, in] weight.
        Biases (Qwen3 attention_bias) are added when the projections have them.
        """
        w = torch.cat([self.read(p) for p in projections]) if len(projections) > 1 else self.read(projections[0])
        if self.quant is not None:
            y = self.matmul_nbits(x, w, name, output)
        else:
            stored = self.g.weights.add(f"{name}.weight", w.to(self.dtype).t().contiguous())
            y = output or f"{name}/MatMul/out0"
            self.g.op_to("MatMul", [x, stored], [y], f"{name}/MatMul")
        if self.dims.attention_bias and ".self_attn." in projections[0].prefix:
            b = torch.cat([self.read(p, "bias") for p in projections])
            y = self.g.op("Add", [y, self.g.weights.add(f"{name}.bias", b.to(self.dtype))], f"{name}/Add")
        return y

    def quantized_weight(self, w: torch.Tensor, name: str) -> QuantizedInputs:
        """``w`` [N, K] quantized blockwise and stored as ``{name}.weight.quant/.scales/.zero_points`` (scales in the
        activation dtype): the inputs of MatMulNBits, and of GatherBlockQuantized through a reshape."""
        packed = quantize_weight(w, self.quant, scale_dtype=self.dtype)
        add = self.g.weights.add
        zero_points = "" if packed.zero_points is None else add(f"{name}.weight.zero_points", packed.zero_points)
        return QuantizedInputs(add(f"{name}.weight.quant", packed.b), add(f"{name}.weight.scales", packed.scales),
                               zero_points, int(w.shape[0]), int(w.shape[1]))

    def matmul_nbits(self, x: str, w: torch.Tensor | QuantizedInputs, name: str, output: str | None = None) -> str:
        """``x @ w.T`` through MatMulNBits with ``w`` [N, K] quantized (or already stored); scales in the activation
        dtype."""
        q = self.quant
        stored = w if isinstance(w, QuantizedInputs) else self.quantized_weight(w, name)
        out = output or f"{name}/MatMulNBits/out0"
        attrs = {"accuracy_level": q.accuracy_level} if q.accuracy_level else {}
        inputs = [x, stored.b, stored.scales] + ([stored.zero_points] if stored.zero_points else [])
        self.g.op_to("MatMulNBits", inputs, [out], f"{name}/MatMulNBits",
                     domain=MS_DOMAIN, K=stored.k, N=stored.n, bits=q.bits, block_size=q.block_size, **attrs)
        return out

    def mlp_neurons(self, i: int, ragged: bool) -> MlpNeurons:
        """The neurons layer ``i`` holds: a ragged layer its live ones (else all), then zeros up to the multiple."""
        keep = live_neurons(self.reader, i) if ragged else None
        kept = self.dims.mlp_widths[i] if keep is None else int(keep.numel())
        return MlpNeurons(keep, kept, aligned_width(kept, self.width_multiple) - kept)

    def mlp_projections(self, i: int, neurons: MlpNeurons) -> dict[str, Projection]:
        """Layer ``i``'s gate, up and down projections restricted to ``neurons`` (and padded with zero neurons)."""
        p = LAYER.format(i=i, part="mlp")
        rows = {"rows": neurons.keep, "pad_rows": neurons.padding}
        return {"gate": Projection(f"{p}.gate_proj", **rows), "up": Projection(f"{p}.up_proj", **rows),
                "down": Projection(f"{p}.down_proj", cols=neurons.keep, pad_cols=neurons.padding)}

    @property
    def logits_dtype(self) -> int:
        """The logits' ONNX type: the model dtype, but float32 for a bfloat16 graph (as onnxruntime-genai's builder
        does: numpy and the sampling code have no bfloat16, and 8 significant bits would blur near-ties)."""
        return TensorProto.FLOAT if self.dtype == torch.bfloat16 else self.onnx_dtype

    def head_weight_name(self) -> str:
        return EMBED if self.dims.tied_embeddings else "lm_head.weight"

    def kv_value_infos(self) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
        d, dt = self.dims, self.onnx_dtype
        past = ["batch", d.num_kv_heads, "past_sequence", d.head_dim]
        present = ["batch", d.num_kv_heads, "total_sequence", d.head_dim]
        inputs, outputs = [], []
        for i in range(d.num_layers):
            for part in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{part}", dt, past))
                outputs.append(helper.make_tensor_value_info(f"present.{i}.{part}", dt, present))
        return inputs, outputs

    def model_proto(self, inputs: list[onnx.ValueInfoProto], logits_shape: list[Any]) -> onnx.ModelProto:
        """The model: the given inputs plus the KV cache; outputs logits and present KV."""
        past, present = self.kv_value_infos()
        outputs = [helper.make_tensor_value_info("logits", self.logits_dtype, logits_shape), *present]
        graph = helper.make_graph(self.g.nodes, "qwen3", inputs + past, outputs,
                                  initializer=self.g.constants + self.g.weights.initializers)
        opsets = [helper.make_opsetid("", self.opset)]
        if any(n.domain == MS_DOMAIN for n in self.g.nodes):
            opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
        model = helper.make_model(graph, opset_imports=opsets, producer_name="lambda-bake")
        model.ir_version = 10
        return model

    def build(self, ragged: bool, progress: Callable[[int], None] | None = None) -> BuildResult:
        raise NotImplementedError
