"""Build a Qwen3 decoder ONNX graph with KV cache straight from checkpoint tensors.

Like onnxruntime-genai's model builder, the graph is written node by node with ``onnx.helper``; no
PyTorch model is built. Three targets compute the same function:

- ``portable``: standard ONNX ops only (``graph_portable``): any runtime, exact to float rounding.
- ``cpu`` / ``cuda``: ONNX Runtime's fused kernels with an in-place KV cache (``graph_ort``), the
  graph onnxruntime-genai runs fastest; ``cuda`` also fuses the q/k norms into attention.

``quant`` (int4/int8, ``export.onnx.quantize``) turns every linear layer, lm_head included, into
com.microsoft ``MatMulNBits`` with blockwise-quantized weights: smaller and faster, no longer exact.
``ragged=True`` drops, per layer, every MLP neuron whose ``down_proj`` column is entirely zero: such
a neuron adds exactly 0, so the graph stays exact and each layer gets its own MLP width. A width
multiple (64 for ``cuda``) adds zero neurons up to the next multiple, just as exact: ONNX Runtime's
fast CUDA kernels need aligned widths.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bake.errors import ExportError
from bake.io.tensor_io import CheckpointReader
from export.onnx.graph_base import ONNX_DTYPES, BuildResult, WeightFile, qwen3_dims
from export.onnx.graph_ort import OrtGraphBuilder
from export.onnx.graph_portable import PortableGraphBuilder
from export.onnx.quantize import QuantSpec
from export.options import TARGETS, width_multiple_for


def build_qwen3_model(reader: CheckpointReader, config: dict[str, Any], data_path: Path, *, dtype: torch.dtype,
                      target: str, ragged: bool, quant: QuantSpec | None = None, fuse_qk_norm: bool | None = None,
                      width_multiple: int | None = None, embedding: str = "auto",
                      progress: Callable[[int], None] | None = None) -> BuildResult:
    """Build the graph for ``target``; weights go to ``data_path`` (raw, external data).

    ``width_multiple`` rounds each layer's MLP width up with zero neurons (default: the target's,
    ``export.options.width_multiple_for``).

    ``fuse_qk_norm`` defaults to the target's choice (only ``cuda`` fuses); tests turn it off to run
    the CUDA graph on ONNX Runtime's CPU provider, which lacks the fused q/k norm.

    ``embedding`` (``export.options.EMBEDDINGS``): a quantized ``cpu``/``cuda`` graph looks tokens up in int codes
    by default (the tied table shared with lm_head); the ``portable`` graph keeps the float table (its lookup is
    the standard Gather).
    """
    if dtype not in ONNX_DTYPES:
        raise ExportError(f"dtype {dtype} cannot be exported; use float32 or float16")
    if target not in TARGETS:
        raise ExportError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    dims = qwen3_dims(config, reader)
    with open(data_path, "wb") as f:
        weights = WeightFile(f, Path(data_path).name)
        common = {"dtype": dtype, "quant": quant, "width_multiple": width_multiple_for(target, width_multiple)}
        if target == "portable":
            if embedding == "quantized":
                raise ExportError("--embedding quantized needs ONNX Runtime's GatherBlockQuantized, which the portable "
                                  "target leaves out (standard ONNX ops only): use --target cpu or cuda")
            builder = PortableGraphBuilder(reader, dims, weights, **common)
        else:
            fuse = target == "cuda" if fuse_qk_norm is None else fuse_qk_norm
            builder = OrtGraphBuilder(reader, dims, weights, fuse_qk_norm=fuse, embedding=embedding, **common)
        return builder.build(ragged, progress)
