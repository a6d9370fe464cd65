"""genai_config.json: what onnxruntime-genai needs to run an export folder with no hand edits.

onnxruntime-genai's parser rejects unknown keys, so only keys it knows are written: model type,
context length, vocab size (the logits' last dim), bos/eos/pad ids, the decoder file, head size, KV
heads, layers, input/output names (``position_ids`` only when the graph takes it), provider options
for the target device, search defaults from generation_config.json, and a shared past/present buffer
exactly when the graph writes its KV cache in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

GENAI_FILE = "genai_config.json"


def _first_id(*values: Any) -> int | None:
    """The first id given (a list counts by its first entry)."""
    for value in values:
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return None


def genai_config(config: dict[str, Any], generation: dict[str, Any], io: dict[str, Any],
                 cuda_graph: bool = False) -> dict[str, Any]:
    """The genai_config.json of an export described by ``io`` (onnx_io.json) of a model with ``config``."""
    eos = generation.get("eos_token_id", config.get("eos_token_id"))
    eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos] if eos is not None else [])]
    pad = _first_id(generation.get("pad_token_id"), config.get("pad_token_id"), eos_ids)
    bos = _first_id(generation.get("bos_token_id"), config.get("bos_token_id"))
    context = int(config.get("max_position_embeddings", 32768))
    shared = io["kv_cache"] == "shared-buffer"
    inputs = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    if any(i["name"] == "position_ids" for i in io["inputs"]):
        inputs["position_ids"] = "position_ids"
    providers = [{"cuda": {"enable_cuda_graph": "1" if cuda_graph else "0"}}] if io["target"] == "cuda" else []
    model: dict[str, Any] = {
        "context_length": context,
        "decoder": {
            "session_options": {"log_id": "onnxruntime-genai", "provider_options": providers},
            "filename": io["model_file"],
            "head_size": io["head_dim"],
            "hidden_size": io["hidden_size"],
            "inputs": inputs | {"past_key_names": "past_key_values.%d.key",
                                "past_value_names": "past_key_values.%d.value"},
            "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                        "present_value_names": "present.%d.value"},
            "num_attention_heads": io["num_attention_heads"],
            "num_hidden_layers": io["num_layers"],
            "num_key_value_heads": io["num_key_value_heads"],
        },
        "eos_token_id": eos_ids if len(eos_ids) != 1 else eos_ids[0],
        "type": "qwen3",
        "vocab_size": io["vocab_size"],
    }
    if bos is not None:
        model["bos_token_id"] = bos
    if pad is not None:
        model["pad_token_id"] = pad
    do_sample = bool(generation.get("do_sample", False))
    search = {
        "diversity_penalty": 0.0,
        "do_sample": do_sample,
        "early_stopping": True,
        "length_penalty": 1.0,
        "max_length": context,
        "min_length": 0,
        "no_repeat_ngram_size": 0,
        "num_beams": 1,
        "num_return_sequences": 1,
        "past_present_share_buffer": shared,
        "repetition_penalty": float(generation.get("repetition_penalty", 1.0)),
        "temperature": float(generation.get("temperature", 1.0)),
        "top_k": int(generation.get("top_k", 50)),
        "top_p": float(generation.get("top_p", 1.0)),
    }
    return {"model": model, "search": search}


def read_genai_config(folder: Path) -> dict[str, Any]:
    """An export's genai_config.json, checked for what lambda-bake reads of it (``model.context_length``)."""
    from bake.errors import ExportError
    from bake.io.json_files import read_json_object

    path = Path(folder) / GENAI_FILE
    config = read_json_object(path, ExportError, "export again", "onnxruntime-genai's configuration")
    context = (config.get("model") or {}).get("context_length") if isinstance(config.get("model"), dict) else None
    if not isinstance(context, int) or isinstance(context, bool) or context < 1:
        raise ExportError(f"{path} has no model.context_length (a positive integer); export again")
    return config
