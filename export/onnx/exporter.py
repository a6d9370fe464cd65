"""Write an ONNX export folder, all or nothing.

The folder holds ``model.onnx`` (plus ``model.onnx.data`` when the weights pass 64 MiB: below it, one file), the
model's ``config.json``, generation config, tokenizer files and chat template, ``genai_config.json`` (so
onnxruntime-genai runs the folder as it is) and ``onnx_io.json``: graph inputs/outputs with dtypes and dims,
target, KV-cache convention, per-layer MLP widths, layout, variant, the embedding's form and the weight
quantization (null for an unquantized export).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch
from onnx.external_data_helper import load_external_data_for_model
from tqdm.auto import tqdm

from bake import __version__
from bake.errors import BaseModelError, ExportError
from bake.io.atomic import atomic_output_dir
from bake.io.base_model import open_base_model
from bake.io.json_files import read_json
from bake.write.checkpoint import carry_base_files, check_carried_files
from bake.write.manifest import MANIFEST_NAME
from export.install import pick_device, providers_for
from export.onnx.builder import build_qwen3_model
from export.onnx.folder import DATA_FILE, FORMAT, FORMAT_VERSION, IO_FILE, MODEL_FILE, read_export_folder
from export.onnx.genai_config import GENAI_FILE, genai_config
from export.onnx.graph_base import Embedding
from export.onnx.quantize import QuantSpec, quant_spec
from export.options import DEVICES, EMBEDDINGS, GRAPH_DEFAULTS, LAYOUTS, TARGETS, width_multiple_for

# Bytes of weights above which they go to model.onnx.data (as onnxruntime-genai's builder writes every model). Inline,
# ONNX Runtime holds the parsed protobuf beside the tensors it makes of it: an int4 0.6B export inline kept about
# 100 MiB more resident after load than the same weights as external data (docs/BENCHMARKS.md); past 2 GB the
# protobuf cannot hold them at all. Small test models stay one file.
EXTERNAL_DATA_THRESHOLD = 64 << 20
EXPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_ELEM_TYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
               onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.INT64: "int64"}


def check_export_options(dtype: str, layout: str, device: str = "auto", quantize: str = "none",
                         target: str = GRAPH_DEFAULTS["target"], width_multiple: int | None = None,
                         embedding: str = "auto", quant_scheme: str = "symmetric") -> None:
    """Refuse option values the export cannot honour, with the reason and the fix."""
    if embedding not in EMBEDDINGS:
        raise ExportError(f"unknown --embedding {embedding!r}; choose one of {', '.join(EMBEDDINGS)}")
    if embedding == "quantized" and (quantize == "none" or target == "portable"):
        raise ExportError("--embedding quantized looks tokens up in int codes through ONNX Runtime's "
                          "GatherBlockQuantized: it needs --quantize int4 or int8 and --target cpu or cuda")
    if width_multiple is not None and not 1 <= width_multiple <= 4096:
        raise ExportError(f"--width-multiple {width_multiple}: give a whole number from 1 (no rounding) to 4096; "
                          "64 is the cuda target's default")
    if dtype == "bfloat16" and target != "cuda":
        raise ExportError(
            f"--dtype bfloat16 needs --target cuda: ONNX Runtime's CPU provider has no bfloat16 kernels for MatMul, "
            f"Add, Mul, Softmax, Sigmoid or ReduceMean, so a --target {target} graph could not run; its CUDA provider "
            "has one for every op of the cuda graph (add --target cuda), or use --dtype float16 or float32 here"
        )
    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; choose one of {', '.join(EXPORT_DTYPES)}")
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if target not in TARGETS:
        raise ExportError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if device not in DEVICES:
        raise ExportError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if target == "cuda" and dtype not in ("float16", "bfloat16"):
        raise ExportError(
            f"--target cuda needs --dtype float16 or bfloat16: ONNX Runtime's CUDA GroupQueryAttention computes in "
            f"float16 or bfloat16 only, so a {dtype} graph could not run there; add --dtype bfloat16 (as Qwen3 ships: "
            "no float16 overflow) or float16, or use --target cpu"
        )
    quant_spec(quantize, target, quant_scheme)
    if device != "auto":
        pick_device(device)


def open_model_folder(folder: Path) -> tuple[dict[str, Any], Any]:
    """Config and lazy reader of a (baked) Qwen3 folder; problems become ExportError naming --model."""
    try:
        base = open_base_model(folder)
    except BaseModelError as e:
        raise ExportError(f"--model {folder}: {e}") from e
    return base.config, base.reader


def export_onnx(
    model_dir: Path,
    out_dir: Path,
    *,
    overwrite: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Export ``model_dir`` to ``out_dir`` all or nothing, and load it once; return the report.

    ``options`` are those of ``write_export`` (target, dtype, layout, quantize, device, progress, ...).
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    with atomic_output_dir(out_dir, overwrite=overwrite, inputs=(model_dir,)) as tmp:
        report = write_export(model_dir, tmp, **options)
    return report | {"out": str(out_dir.absolute())}


def export_into(model_dir: Path, subfolder: str = "onnx", **options: Any) -> dict[str, Any]:
    """Export ``model_dir`` into its own new ``subfolder`` (what ``bake --onnx`` does, inside the bake's
    temporary folder, whose rename already makes the whole result all or nothing)."""
    out = Path(model_dir) / subfolder
    out.mkdir()
    return write_export(Path(model_dir), out, **options)


def write_export(
    model_dir: Path,
    out: Path,
    *,
    target: str = GRAPH_DEFAULTS["target"],
    dtype: str = "float32",
    layout: str = "as-is",
    quantize: str = "none",
    device: str = "auto",
    cuda_graph: bool = False,
    width_multiple: int | None = None,
    embedding: str = "auto",
    quant_scheme: str = "symmetric",
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the export of ``model_dir`` into the empty folder ``out`` and load it once on ``device``.

    ``target`` picks the graph (``export.onnx.builder``); ``quantize`` 'int4'/'int8' stores every linear
    layer (lm_head included) as blockwise-quantized MatMulNBits weights: smaller and faster, judged by
    verify on KL and top-1 rather than exactness. ``cuda_graph`` turns on CUDA-graph capture in
    genai_config.json (``cuda`` target). ``width_multiple`` rounds every layer's MLP width up with zero neurons
    (default: 64 for ``cuda``, whose fast kernels need aligned widths; 1, no rounding, elsewhere). ``embedding``:
    how a quantized graph looks tokens up (``export.onnx.builder``); the report says which and its bytes.
    ``quant_scheme``: symmetric (no zero points, as the builder) or asymmetric (``export.onnx.quantize``).
    """
    check_export_options(dtype, layout, device, quantize, target, width_multiple, embedding, quant_scheme)
    multiple = width_multiple_for(target, width_multiple)
    quant = quant_spec(quantize, target, quant_scheme)
    config, reader = open_model_folder(model_dir)
    check_carried_files(model_dir, ExportError)  # the tokenizer and template the export carries must parse
    started = time.monotonic()
    bar = tqdm(total=int(config["num_hidden_layers"]), desc="building ONNX graph", unit="layer",
               disable=not progress, file=sys.stderr)
    try:
        built = build_qwen3_model(reader, config, out / DATA_FILE, dtype=EXPORT_DTYPES[dtype], target=target,
                                  ragged=layout == "ragged", quant=quant, width_multiple=multiple,
                                  embedding=embedding, progress=lambda _: bar.update())
    finally:
        bar.close()
    external = built.weight_bytes > external_data_threshold
    if not external:  # small enough for one protobuf: pull the weights back into the graph
        load_external_data_for_model(built.model, str(out))
        (out / DATA_FILE).unlink()
    onnx.save(built.model, str(out / MODEL_FILE))
    check_graph(out / MODEL_FILE)
    shutil.copy2(model_dir / "config.json", out / "config.json")
    carried = carry_base_files(model_dir, out)
    if (model_dir / MANIFEST_NAME).is_file():  # provenance: verify --onnx reads the bake it came from
        shutil.copy2(model_dir / MANIFEST_NAME, out / MANIFEST_NAME)
        carried.append(MANIFEST_NAME)
    io = describe(built.model, config, target=target, dtype=dtype, layout=layout, quant=quant,
                  widths=built.mlp_widths, padding=built.mlp_padding, width_multiple=multiple, opset=built.opset,
                  external_bytes=built.weight_bytes if external else None,
                  embedding=embedding_record(built.embedding, config, dtype, quant))
    (out / IO_FILE).write_text(json.dumps(io, indent=2) + "\n")
    generation = read_json(out / "generation_config.json", ExportError, "copy it from the base model") \
        if (out / "generation_config.json").is_file() else {}
    (out / GENAI_FILE).write_text(json.dumps(genai_config(config, generation, io, cuda_graph), indent=2) + "\n")
    checked_on = smoke_test(out, device, target)
    files = sorted(p.name for p in out.iterdir())
    size = sum(p.stat().st_size for p in out.iterdir())
    return {
        "out": str(out.absolute()),
        "model": str(model_dir.absolute()),
        "target": target,
        "dtype": dtype,
        "layout": layout,
        "quantize": quantize,
        "checked_on": checked_on,
        "mlp_widths": built.mlp_widths,
        "config_intermediate_size": int(config["intermediate_size"]),
        "mlp_neurons": sum(built.mlp_widths) - sum(built.mlp_padding),
        "width_multiple": multiple,
        "mlp_padding_neurons": sum(built.mlp_padding),
        "mlp_padding_per_layer": built.mlp_padding,
        "embedding": io["embedding"],
        "external_data": external,
        "files": files,
        "carried_files": carried,
        "bytes": size,
        "seconds": round(time.monotonic() - started, 2),
    }


def embedding_record(embedding: Embedding, config: dict[str, Any], dtype: str, quant: QuantSpec | None
                     ) -> dict[str, Any]:
    """onnx_io.json's ``embedding``: its form, why a quantized export kept the float table, the bytes the table
    takes in the file (0 when it shares lm_head's codes) and what the float table takes."""
    vocab, hidden = int(config["vocab_size"]), int(config["hidden_size"])
    float_bytes = vocab * hidden * torch.finfo(EXPORT_DTYPES[dtype]).bits // 8
    if embedding.form == "float":
        own = float_bytes
    else:
        blocks = -(-hidden // quant.block_size)
        scale = torch.finfo(EXPORT_DTYPES[dtype]).bits // 8
        zero_points = 0 if quant.symmetric else -(-blocks * quant.bits // 8)
        own = 0 if embedding.form == "shared" else vocab * (hidden * quant.bits // 8 + blocks * scale + zero_points)
    return {"form": embedding.form, "why": embedding.why, "bytes": own, "float_bytes": float_bytes}


def check_graph(path: Path) -> None:
    """onnx.checker on the saved model; full_check adds strict shape inference (path-based: works past 2 GB)."""
    onnx.checker.check_model(str(path), full_check=True)


def describe(model: onnx.ModelProto, config: dict[str, Any], *, target: str, dtype: str, layout: str,
             quant: QuantSpec | None, widths: list[int], padding: list[int], width_multiple: int, opset: int,
             external_bytes: int | None, embedding: dict[str, Any]) -> dict[str, Any]:
    """The content of onnx_io.json."""

    def tensors(values: Any) -> list[dict[str, Any]]:
        return [{
            "name": v.name,
            "dtype": _ELEM_TYPES[v.type.tensor_type.elem_type],
            "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
        } for v in values]

    heads = int(config["num_attention_heads"])
    portable = target == "portable"
    contrib = sorted({n.op_type for n in model.graph.node if n.domain == "com.microsoft"})
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_by": f"lambda-bake {__version__}",
        "model_file": MODEL_FILE,
        "external_data_file": DATA_FILE if external_bytes is not None else None,
        "external_data_bytes": external_bytes,
        "target": target,
        "kv_cache": "concat" if portable else "shared-buffer",
        "logits": "all" if portable else "last",
        "dtype": dtype,
        "layout": layout,
        "quantization": quant.describe() if quant is not None else None,
        "embedding": embedding,
        "opset": opset,
        "requires": (f"ONNX Runtime with com.microsoft {', '.join(contrib)}, opset {opset}; exported and checked "
                     f"with onnxruntime {ort.__version__}") if contrib else f"ONNX opset {opset}",
        "num_layers": int(config["num_hidden_layers"]),
        "hidden_size": int(config["hidden_size"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(config.get("num_key_value_heads") or heads),
        "head_dim": int(config.get("head_dim") or int(config["hidden_size"]) // heads),
        "vocab_size": int(config["vocab_size"]),
        "max_position_id": None if portable else int(config.get("max_position_embeddings", 32768)) - 1,
        "config_intermediate_size": int(config["intermediate_size"]),
        "mlp_widths": widths,
        "width_multiple": width_multiple,
        "mlp_padding": padding,
        "inputs": tensors(model.graph.input),
        "outputs": tensors(model.graph.output),
        "notes": (
            "attention_mask covers past + new tokens (1 = real, 0 = padding, any padding); position_ids count "
            "real tokens from 0; feed present.* back as past_key_values.*; logits for every position"
            if portable else
            "prompts right-padded; attention_mask [batch, total] with sum(row) = that row's tokens so far "
            "(past + new), width = sequence length on the first call; bind one buffer [batch, kv_heads, "
            "capacity, head_dim] per layer as both past_key_values.* and present.* (written in place); logits "
            "of each row's last real token; positions up to max_position_id (RoPE tables)"
        ),
    }


def smoke_test(folder: Path, device: str, target: str) -> str:
    """Load the fresh export in ONNX Runtime on ``device`` (graph checked, a kernel for every node, weights
    mapped from the data file) without copying its weights, so the check costs far less than the weights;
    return where it was loaded. Running it is ``verify --onnx``'s job (``bake --onnx --verify`` does both
    before anything is published). A ``cuda`` graph on a machine without CUDA loads on the CPU provider,
    which resolves its graph and types; its fused q/k norm runs only on CUDA. A bfloat16 graph cannot even
    load there (the CPU provider has no bfloat16 kernels): onnx.checker's full check is all it gets."""
    device = pick_device(device)
    io = read_export_folder(folder)
    if io["dtype"] == "bfloat16" and device == "cpu":
        return "cpu (not loaded: ONNX Runtime's CPU provider has no bfloat16 kernels; onnx.checker and strict shape " \
               "inference passed)"
    try:
        load_check_session(folder / io["model_file"], device)
    except Exception as e:  # ORT raises its own exception types; name the folder and the fix
        raise ExportError(f"ONNX Runtime cannot load the export in {folder} on {device}: {e}; the export is not "
                          "usable (a bug: please report it with this message)") from e
    if target == "cuda" and device == "cpu":
        return "cpu (loaded only: the fused q/k norm of the cuda target runs on CUDA)"
    return device


def load_check_session(model: Path, device: str) -> ort.InferenceSession:
    """Load an export the cheap way, to check that it loads: ONNX Runtime parses and checks the graph,
    gives every node a kernel on ``device`` and maps the weights from the external-data file (it
    memory-maps page-aligned external tensors), but makes no copies of them: no pre-packing, no memory
    arena, and basic graph optimizations without constant folding (constant folding is where the CPU
    provider turns float16 weights into float32 copies). Nothing is run, so no weight is read.
    """
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(model), options, providers=providers_for(device),
                                disabled_optimizers=["ConstantFolding"])
