"""The ONNX export folder format, as ``export.onnx.exporter`` writes it and every reader checks it.

``model.onnx`` (plus ``model.onnx.data`` when the weights pass 2 GB), ``onnx_io.json`` (what the graph
takes and gives, its target, KV-cache convention, MLP widths, quantization) beside the model's
config, tokenizer, ``genai_config.json`` and the bake's manifest.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bake.errors import ExportError
from bake.io.json_files import checked_field, read_json_object
from bake.io.paths import EXPORT_FOLDER, require
from export.options import TARGETS

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
PLAIN_NAME = re.compile(r"^[\w.-]+$")
NP_DTYPES = ("float32", "float16", "bfloat16")
IO_FILE = "onnx_io.json"
FORMAT = "lambda-bake-onnx"
FORMAT_VERSION = 2  # 2: target, kv_cache and logits fields; 1 (concat cache, all logits) is still read


def read_export_folder(folder: Path) -> dict[str, Any]:
    """Check that ``folder`` is a complete export (onnx_io.json, model, external data); return onnx_io."""
    folder = require(folder, "folder", EXPORT_FOLDER, ExportError)
    io_path = folder / IO_FILE
    if not io_path.is_file():
        raise ExportError(f"{folder} is not a lambda-bake ONNX export (no {IO_FILE}); create one with lambda-bake export")
    io = read_json_object(io_path, ExportError, "export again", "an export description")
    if io.get("format") != FORMAT:
        raise ExportError(f"{io_path} does not describe a {FORMAT} export; export again with lambda-bake export")
    check_io(io, io_path)
    model = folder / io["model_file"]
    if not model.is_file():
        raise ExportError(f"{folder}: {io['model_file']} is missing; copy the whole export folder or export again")
    data_name = io.get("external_data_file")
    if data_name:
        data = folder / data_name
        if not data.is_file():
            raise ExportError(
                f"{folder}: external-data file {data_name} is missing ({io['external_data_bytes']} bytes of "
                f"weights that {io['model_file']} refers to); copy it next to {io['model_file']} or export again"
            )
        if data.stat().st_size < io["external_data_bytes"]:
            raise ExportError(
                f"{data}: {data.stat().st_size} bytes, expected {io['external_data_bytes']}; the file is truncated: "
                "copy it again or export again"
            )
    return io


def check_io(io: dict[str, Any], path: Path) -> None:
    """Every field the runtimes and verify read of onnx_io.json: of its type, within bounds (a KV cache and the
    logits are sized from them), file names plain names in the folder."""
    fix = "the file is damaged or was edited: export again"

    def need(key: str, kind: Any, **kw: Any) -> Any:
        return checked_field(io, key, kind, path, ExportError, fix, **kw)

    for key in ("model_file",) + (("external_data_file",) if io.get("external_data_file") else ()):
        name = need(key, str)
        if not PLAIN_NAME.match(name):
            raise ExportError(f"{path}: {key} {name!r} is not a file name in the export folder; {fix}")
    need("external_data_bytes", int, optional=True, low=0)
    if io.get("external_data_file") and io.get("external_data_bytes") is None:
        raise ExportError(f"{path} names an external-data file without its size; {fix}")
    for key, choices in (("dtype", NP_DTYPES), ("target", TARGETS), ("layout", ("as-is", "ragged")),
                         ("kv_cache", ("concat", "shared-buffer")), ("logits", ("all", "last"))):
        if key in io or key in ("dtype", "layout"):
            if need(key, str) not in choices:
                raise ExportError(f"{path}: {key} is {io[key]!r}, expected one of {', '.join(choices)}; {fix}")
    layers = need("num_layers", int, low=1, high=4096)
    need("num_key_value_heads", int, low=1, high=4096)
    need("head_dim", int, low=1, high=1 << 16)
    need("vocab_size", int, low=1, high=1 << 24)
    need("max_position_id", int, optional=True, low=0, high=1 << 24)
    widths = need("mlp_widths", list)
    if len(widths) != layers or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in widths):
        raise ExportError(f"{path}: mlp_widths must give a width for each of the {layers} layers; {fix}")
    multiple = need("width_multiple", int, optional=True, low=1, high=4096) or 1
    padding = need("mlp_padding", list, optional=True)
    if padding is not None and (len(padding) != layers or not all(
            isinstance(p, int) and not isinstance(p, bool) and 0 <= p < multiple and p <= w
            for p, w in zip(padding, widths))):
        raise ExportError(f"{path}: mlp_padding must give, for each of the {layers} layers, the zero neurons added "
                          f"to its width (0 to width_multiple - 1 = {multiple - 1}); {fix}")
    quant = need("quantization", dict, optional=True)
    if quant is not None:
        for key in ("bits", "block_size"):
            checked_field(quant, key, int, path, ExportError, fix, low=1, high=1 << 16)
        checked_field(quant, "weights", str, path, ExportError, fix)
        checked_field(quant, "accuracy_level", int, path, ExportError, fix, optional=True, low=0, high=4)
    embedding = need("embedding", dict, optional=True)
    if embedding is not None and embedding.get("form") not in ("float", "shared", "quantized"):
        raise ExportError(f"{path}: embedding form is {embedding.get('form')!r}, expected float, shared or "
                          f"quantized; {fix}")
    for key in ("inputs", "outputs"):
        items = need(key, list, optional=True) or []
        if not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in items):
            raise ExportError(f"{path}: {key} must list named tensors; {fix}")
