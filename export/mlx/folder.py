"""The MLX export folder format, as ``export.mlx.writer`` writes it and every reader checks it.

mlx-lm's own files (``config.json``, ``model*.safetensors``, ``model.safetensors.index.json``), the tokenizer,
chat template and generation config, the bake's manifest, and ``mlx_export.json``: the layout, dtype,
quantization and each layer's MLP width (kept neurons, then zero neurons up to the quantization group).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bake.errors import ExportError
from bake.io.json_files import checked_field, read_json_object
from bake.io.paths import MLX_FOLDER, require
from bake.io.tensor_io import read_header

INFO_FILE = "mlx_export.json"
FORMAT = "lambda-bake-mlx"
FORMAT_VERSION = 1
MLX_DTYPES = ("float32", "float16", "bfloat16")
MODEL_TYPES = {"as-is": "qwen3", "ragged": "openelm"}


def is_mlx_folder(folder: Path) -> bool:
    return (Path(folder) / INFO_FILE).is_file()


def read_mlx_folder(folder: Path) -> dict[str, Any]:
    """Check that ``folder`` is a complete MLX export (its description, config and weights); return the
    description."""
    folder = require(folder, "folder", MLX_FOLDER, ExportError)
    path = folder / INFO_FILE
    if not path.is_file():
        raise ExportError(f"{folder} is not a lambda-bake MLX export (no {INFO_FILE}); create one with lambda-bake "
                          "export --format mlx")
    info = read_json_object(path, ExportError, "export again", "an MLX export description")
    fix = "the file is damaged or was edited: export again"

    def need(key: str, kind: Any, **kw: Any) -> Any:
        return checked_field(info, key, kind, path, ExportError, fix, **kw)

    if info.get("format") != FORMAT:
        raise ExportError(f"{path} does not describe a {FORMAT} export; export again with lambda-bake export")
    for key, choices in (("layout", tuple(MODEL_TYPES)), ("dtype", MLX_DTYPES)):
        if need(key, str) not in choices:
            raise ExportError(f"{path}: {key} is {info[key]!r}, expected one of {', '.join(choices)}; {fix}")
    if need("model_type", str) != MODEL_TYPES[info["layout"]]:
        raise ExportError(f"{path}: model_type {info['model_type']!r} does not go with layout {info['layout']!r}; {fix}")
    layers = need("num_layers", int, low=1, high=4096)
    for key in ("mlp_widths", "mlp_kept"):
        values = need(key, list)
        if len(values) != layers or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in values):
            raise ExportError(f"{path}: {key} must give a count for each of the {layers} layers; {fix}")
    quant = need("quantization", dict, optional=True)
    if quant is not None:
        if checked_field(quant, "bits", int, path, ExportError, fix) not in (4, 8):
            raise ExportError(f"{path}: quantization bits {quant['bits']!r}, expected 4 or 8; {fix}")
        checked_field(quant, "group_size", int, path, ExportError, fix, low=16, high=1024)
    for name in ("config.json", "model.safetensors.index.json"):
        if not (folder / name).is_file():
            raise ExportError(f"{folder}: {name} is missing; copy the whole MLX folder or export again")
    if not any(folder.glob("model*.safetensors")):
        raise ExportError(f"{folder}: no model*.safetensors; copy the whole MLX folder or export again")
    check_mlx_config(folder / "config.json", info["model_type"], quant is not None)
    for file in sorted(folder.glob("model*.safetensors")):  # headers, and every tensor inside its file (truncation)
        read_header(file, ExportError)
    return info


# The config fields mlx-lm's ModelArgs of each model type read, and their types: a missing or mistyped one is an
# ExportError naming config.json, not mlx-lm's TypeError
_NUMBER = (int, float)
_MLX_FIELDS: dict[str, dict[str, Any]] = {
    "qwen3": {"hidden_size": int, "num_hidden_layers": int, "intermediate_size": int, "num_attention_heads": int,
              "rms_norm_eps": _NUMBER, "vocab_size": int, "num_key_value_heads": int, "max_position_embeddings": int,
              "rope_theta": _NUMBER, "head_dim": int, "tie_word_embeddings": bool},
    "openelm": {"head_dim": int, "num_transformer_layers": int, "model_dim": int, "vocab_size": int,
                "ffn_dim_divisor": int, "num_query_heads": list, "num_kv_heads": list, "ffn_multipliers": list,
                "ffn_with_glu": bool, "normalize_qk_projections": bool, "share_input_output_layers": bool,
                "rms_norm_eps": _NUMBER, "rope_freq_constant": _NUMBER},
}


def check_mlx_config(path: Path, model_type: str, quantized: bool) -> None:
    """mlx-lm's config.json of an MLX folder: every field its model reads, of the right type (lists of numbers for
    openelm's per-layer fields, one per layer), and the quantization block of a quantized folder."""
    fix = "the file is damaged or was edited: export again"
    config = read_json_object(path, ExportError, fix, "mlx-lm's model config")
    if config.get("model_type") != model_type:
        raise ExportError(f"{path}: model_type is {config.get('model_type')!r}, but mlx_export.json says "
                          f"{model_type!r}; {fix}")
    for key, kind in _MLX_FIELDS[model_type].items():
        checked_field(config, key, kind, path, ExportError, fix, **({"low": 1} if kind is int else {}))
    if model_type == "openelm":
        layers = config["num_transformer_layers"]
        for key in ("num_query_heads", "num_kv_heads", "ffn_multipliers"):
            values = config[key]
            number = (int, float) if key == "ffn_multipliers" else int
            if len(values) != layers or not all(isinstance(v, number) and not isinstance(v, bool) and v > 0
                                                for v in values):
                raise ExportError(f"{path}: {key} must give a positive number for each of the {layers} layers; {fix}")
    quant = checked_field(config, "quantization", dict, path, ExportError, fix, optional=not quantized)
    if quant is not None:
        for key in ("group_size", "bits"):
            checked_field(quant, key, int, path, ExportError, fix, low=1)
