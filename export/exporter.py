"""Write an ONNX export folder, all or nothing.

The folder holds ``model.onnx`` (plus ``model.onnx.data`` when the weights pass 2 GB, the protobuf
limit), the model's ``config.json``, generation config, tokenizer files and chat template, and
``onnx_io.json``: graph inputs/outputs with dtypes and dims, per-layer MLP widths, layout, variant,
and the weight quantization (null for an unquantized export).
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
from bake.atomic import atomic_output_dir
from bake.base_model import open_base_model
from bake.checkpoint_writer import carry_base_files
from bake.errors import BaseModelError, ExportError
from bake.manifest import MANIFEST_NAME

from .onnx_builder import build_qwen3_model
from .quantize import QUANT_BITS, QuantSpec, quant_spec
from .runtime import (
    DATA_FILE,
    FORMAT,
    FORMAT_VERSION,
    IO_FILE,
    MODEL_FILE,
    load_check_session,
    pick_device,
    read_export_folder,
)

EXTERNAL_DATA_THRESHOLD = 2_000_000_000  # bytes of weights above which they go to model.onnx.data
EXPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16}
LAYOUTS = ("as-is", "ragged")
DEVICES = ("cpu", "cuda")
QUANTIZATIONS = ("none", *QUANT_BITS)
_ELEM_TYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
               onnx.TensorProto.INT64: "int64"}


def check_export_options(dtype: str, layout: str, device: str, quantize: str = "none") -> None:
    """Refuse option values the export cannot honour, with the reason and the fix."""
    if dtype == "bfloat16":
        raise ExportError(
            "bfloat16 export is not offered: ONNX Runtime's CPU provider has no bfloat16 kernels for MatMul, "
            "Add, Mul, Softmax, Sigmoid or ReduceMean, so the model could not run on CPU; use --dtype float16 "
            "(same memory, runs on CPU and CUDA) or --dtype float32"
        )
    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; choose one of {', '.join(EXPORT_DTYPES)}")
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if device not in DEVICES:
        raise ExportError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if quant_spec(quantize) is not None and dtype != "float32":
        raise ExportError(
            f"--quantize {quantize} applies to float32 exports only (the quantized MatMulNBits layers take float32 "
            f"activations and scales); drop --dtype {dtype} or use --quantize none"
        )
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
    """Export ``model_dir`` to ``out_dir`` all or nothing, and load it once on the device; return the report.

    ``options`` are those of ``write_export`` (dtype, layout, fused, quantize, device, progress, ...).
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
    dtype: str = "float32",
    layout: str = "as-is",
    fused: bool = False,
    quantize: str = "none",
    device: str = "cpu",
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the export of ``model_dir`` into the empty folder ``out`` and load it once on ``device``.

    ``quantize`` 'int4'/'int8' stores every linear layer (lm_head included) as blockwise-quantized
    MatMulNBits weights: smaller and faster, judged by verify on KL and top-1 rather than exactness.
    """
    check_export_options(dtype, layout, device, quantize)
    quant = quant_spec(quantize)
    config, reader = open_model_folder(model_dir)
    started = time.monotonic()
    bar = tqdm(total=int(config["num_hidden_layers"]), desc="building ONNX graph", unit="layer",
               disable=not progress, file=sys.stderr)
    try:
        built = build_qwen3_model(reader, config, out / DATA_FILE, dtype=EXPORT_DTYPES[dtype],
                                  ragged=layout == "ragged", fused=fused, quant=quant,
                                  progress=lambda _: bar.update())
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
    io = describe(built.model, config, dtype=dtype, layout=layout, fused=fused, quant=quant, device=device,
                  widths=built.mlp_widths, opset=built.opset,
                  external_bytes=built.weight_bytes if external else None)
    (out / IO_FILE).write_text(json.dumps(io, indent=2) + "\n")
    smoke_test(out, device)
    files = sorted(p.name for p in out.iterdir())
    size = sum(p.stat().st_size for p in out.iterdir())
    return {
        "out": str(out.absolute()),
        "model": str(model_dir.absolute()),
        "dtype": dtype,
        "layout": layout,
        "fused": fused,
        "quantize": quantize,
        "device": device,
        "mlp_widths": built.mlp_widths,
        "config_intermediate_size": int(config["intermediate_size"]),
        "mlp_neurons": sum(built.mlp_widths),
        "external_data": external,
        "files": files,
        "carried_files": carried,
        "bytes": size,
        "seconds": round(time.monotonic() - started, 2),
    }


def check_graph(path: Path) -> None:
    """onnx.checker on the saved model; full_check adds strict shape inference (path-based: works past 2 GB)."""
    onnx.checker.check_model(str(path), full_check=True)


def describe(model: onnx.ModelProto, config: dict[str, Any], *, dtype: str, layout: str, fused: bool,
             quant: QuantSpec | None, device: str, widths: list[int], opset: int,
             external_bytes: int | None) -> dict[str, Any]:
    """The content of onnx_io.json."""

    def tensors(values: Any) -> list[dict[str, Any]]:
        return [{
            "name": v.name,
            "dtype": _ELEM_TYPES[v.type.tensor_type.elem_type],
            "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
        } for v in values]

    heads = int(config["num_attention_heads"])
    contrib = [op for flag, op in ((fused, "GroupQueryAttention (attention_bias)"), (quant, "MatMulNBits")) if flag]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_by": f"lambda-bake {__version__}",
        "model_file": MODEL_FILE,
        "external_data_file": DATA_FILE if external_bytes is not None else None,
        "external_data_bytes": external_bytes,
        "dtype": dtype,
        "layout": layout,
        "fused_ops": fused,
        "quantization": quant.describe() if quant is not None else None,
        "target_device": device,
        "opset": opset,
        "requires": (f"ONNX Runtime with com.microsoft {' and '.join(contrib)}, opset {opset}; "
                     f"exported and checked with onnxruntime {ort.__version__}") if contrib else f"ONNX opset {opset}",
        "num_layers": int(config["num_hidden_layers"]),
        "hidden_size": int(config["hidden_size"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(config.get("num_key_value_heads") or heads),
        "head_dim": int(config.get("head_dim") or int(config["hidden_size"]) // heads),
        "vocab_size": int(config["vocab_size"]),
        "max_position_id": int(config.get("max_position_embeddings", 32768)) - 1 if fused else None,
        "config_intermediate_size": int(config["intermediate_size"]),
        "mlp_widths": widths,
        "inputs": tensors(model.graph.input),
        "outputs": tensors(model.graph.output),
        "notes": (
            "attention_mask covers past + new tokens (1 = real, 0 = padding, left padding allowed); "
            "position_ids count real tokens from 0; feed present.* back as past_key_values.* "
            + ("(fused: more than one new token per call needs batch 1 or an empty past; positions are limited "
               "to max_position_id by the RoPE tables)" if fused else "")
        ).strip(),
    }


def smoke_test(folder: Path, device: str) -> None:
    """Load the fresh export in ONNX Runtime on ``device`` (graph checked, a kernel for every node, weights
    mapped from the data file) without copying its weights: the check costs far less than the weights.
    Running it is ``verify --onnx``'s job (``bake --onnx --verify`` does both before anything is published)."""
    io = read_export_folder(folder)
    pick_device(device)
    try:
        load_check_session(folder / io["model_file"], device)
    except Exception as e:  # ORT raises its own exception types; name the folder and the fix
        raise ExportError(f"ONNX Runtime cannot load the export in {folder} on {device}: {e}; the export is not "
                          "usable (a bug: please report it with this message)") from e
