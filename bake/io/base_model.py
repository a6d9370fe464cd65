"""Check and describe a base model folder: a Qwen3 causal LM config plus safetensors weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bake.errors import BaseModelError
from bake.io.dtypes import COMPUTE_DTYPES, DType
from bake.io.json_files import checked_field, read_json_object
from bake.io.paths import MODEL_FOLDER, require
from bake.io.provenance import describe_local
from bake.io.tensor_io import CheckpointReader

SUPPORTED_MODEL_TYPES = ("qwen3",)
MLP_TENSOR = "model.layers.{layer}.mlp.{proj}.weight"


@dataclass
class BaseModel:
    """A validated base checkpoint: its config and a lazy reader over its tensors."""

    folder: Path
    config: dict[str, Any]
    reader: CheckpointReader
    _local: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def num_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def intermediate_size(self) -> int:
        return int(self.config["intermediate_size"])

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])

    def weight_files(self) -> list[str]:
        """The checkpoint's safetensors files, relative to its folder."""
        return sorted({info.file.name for info in self.reader.tensors.values()})

    def describe_local(self) -> dict[str, Any]:
        """The folder as it may be published: name, sha256 of config and weights, downloaded revision (computed
        once: hashing reads every weight byte)."""
        if self._local is None:
            self._local = describe_local(self.folder, ["config.json", *self.weight_files()])
        return self._local

    @property
    def dtype(self) -> DType:
        """The checkpoint's floating dtype (that of down_proj in layer 0)."""
        return self.reader.tensors[mlp_name(0, "down_proj")].dtype


def mlp_name(layer: int, proj: str) -> str:
    return MLP_TENSOR.format(layer=layer, proj=proj)


# The config fields lambda-bake reads (the bake, the exports, verify) and their bounds: a damaged config
# gets a message naming the field, never a traceback or a loop sized by a garbage number.
_CONFIG_INTS = {"num_hidden_layers": (1, 4096), "intermediate_size": (1, 1 << 20), "hidden_size": (1, 1 << 20),
                "num_attention_heads": (1, 4096), "vocab_size": (1, 1 << 24)}
_CONFIG_OPTIONAL_INTS = {"num_key_value_heads": (1, 4096), "head_dim": (1, 1 << 16),
                         "max_position_embeddings": (1, 1 << 24)}
_CONFIG_OPTIONAL_FLOATS = {"rms_norm_eps": (0.0, 1.0), "rope_theta": (0.0, 1e12)}


def read_config(folder: Path) -> dict[str, Any]:
    """config.json as a JSON object, with every field lambda-bake reads of the right type and within bounds."""
    path = require(folder, "folder", MODEL_FOLDER, BaseModelError) / "config.json"
    if not path.is_file():
        raise BaseModelError(f"{folder} has no config.json; it is not a Hugging Face model folder")
    fix = "download it again"
    config = read_json_object(path, BaseModelError, fix, "a model config")
    if config.get("model_type") not in SUPPORTED_MODEL_TYPES:
        return config  # open_base_model names the model type; nothing else is read of it
    for key, (low, high) in _CONFIG_INTS.items():
        checked_field(config, key, int, path, BaseModelError, fix, low=low, high=high)
    for key, (low, high) in _CONFIG_OPTIONAL_INTS.items():
        checked_field(config, key, int, path, BaseModelError, fix, optional=True, low=low, high=high)
    for key, (low, high) in _CONFIG_OPTIONAL_FLOATS.items():
        checked_field(config, key, (int, float), path, BaseModelError, fix, optional=True, low=low, high=high)
    checked_field(config, "tie_word_embeddings", bool, path, BaseModelError, fix, optional=True)
    checked_field(config, "attention_bias", bool, path, BaseModelError, fix, optional=True)
    return config


def open_base_model(folder: Path) -> BaseModel:
    """Validate that ``folder`` is a Qwen3 causal LM with every MLP tensor present."""
    folder = Path(folder)
    config = read_config(folder)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        archs = ", ".join(config.get("architectures") or []) or "unknown architecture"
        raise BaseModelError(
            f"{folder} is a {model_type!r} model ({archs}); lambda-bake supports Qwen3 dense models "
            f"(model_type 'qwen3', e.g. Qwen/Qwen3-0.6B) only"
        )
    reader = CheckpointReader(folder)
    base = BaseModel(folder, config, reader)
    for layer in range(base.num_layers):
        for proj, shape in (("gate_proj", (base.intermediate_size, base.hidden_size)),
                            ("up_proj", (base.intermediate_size, base.hidden_size)),
                            ("down_proj", (base.hidden_size, base.intermediate_size))):
            name = mlp_name(layer, proj)
            if name not in reader:
                raise BaseModelError(f"{folder}: tensor {name} is missing from the checkpoint")
            if reader.tensors[name].shape != shape:
                raise BaseModelError(
                    f"{folder}: {name} has shape {list(reader.tensors[name].shape)}, config says {list(shape)}; "
                    "the checkpoint does not match its config (already pruned?)"
                )
            if not reader.tensors[name].dtype.computable:
                raise BaseModelError(
                    f"{folder}: {name} is {reader.tensors[name].dtype.name}; lambda-bake folds "
                    f"{', '.join(COMPUTE_DTYPES)} checkpoints (a quantized base must be dequantized first)"
                )
    return base
