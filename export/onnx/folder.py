"""The ONNX export folder format, as ``export.onnx.exporter`` writes it and every reader checks it.

``model.onnx`` (plus ``model.onnx.data`` when the weights pass 2 GB), ``onnx_io.json`` (what the graph
takes and gives, its target, KV-cache convention, MLP widths, quantization) beside the model's
config, tokenizer, ``genai_config.json`` and the bake's manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bake.errors import ExportError
from bake.io.json_files import read_json
from bake.io.paths import EXPORT_FOLDER, require

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
IO_FILE = "onnx_io.json"
FORMAT = "lambda-bake-onnx"
FORMAT_VERSION = 2  # 2: target, kv_cache and logits fields; 1 (concat cache, all logits) is still read


def read_export_folder(folder: Path) -> dict[str, Any]:
    """Check that ``folder`` is a complete export (onnx_io.json, model, external data); return onnx_io."""
    folder = require(folder, "folder", EXPORT_FOLDER, ExportError)
    io_path = folder / IO_FILE
    if not io_path.is_file():
        raise ExportError(f"{folder} is not a lambda-bake ONNX export (no {IO_FILE}); create one with lambda-bake export")
    io = read_json(io_path, ExportError, "export again")
    if io.get("format") != FORMAT:
        raise ExportError(f"{io_path} does not describe a {FORMAT} export; export again with lambda-bake export")
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
