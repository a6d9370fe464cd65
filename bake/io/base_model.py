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
PER_LAYER_CONFIG = "per_layer_config"  # transformers' per-layer overrides (>= 5.15): a ragged bake's MLP widths
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
        """The config's global MLP width (a ragged checkpoint's widest layer; ``layer_widths`` gives each)."""
        return int(self.config["intermediate_size"])

    @property
    def layer_widths(self) -> list[int]:
        """Each decoder layer's MLP width: its ``per_layer_config`` entry, else the global ``intermediate_size``."""
        return layer_widths(self.config, self.folder / "config.json")

    @property
    def ragged(self) -> bool:
        """Whether the layers' MLP widths differ (a ragged bake): only per-layer-aware code may build it."""
        return len(set(self.layer_widths)) > 1

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


def layer_widths(config: dict[str, Any], path: Path) -> list[int]:
    """Each decoder layer's MLP width from a checked ``config`` (``path``: its file, for messages).

    transformers' ``per_layer_config`` maps a layer index (a digit string, zero-padded as ``save_pretrained`` writes
    it) to the attributes that differ from the global config; a layer without an entry has the global width.
    lambda-bake writes and reads only ``intermediate_size`` there; anything else is refused by name.
    """
    layers, width = int(config["num_hidden_layers"]), int(config["intermediate_size"])
    per_layer = config.get(PER_LAYER_CONFIG)
    widths = [width] * layers
    if per_layer is None:
        return widths
    fix = "bake the folder again (lambda-bake bake --layout ragged writes it)"
    if not isinstance(per_layer, dict):
        raise BaseModelError(f"{path}: {PER_LAYER_CONFIG!r} is a JSON {type(per_layer).__name__}, not an object of "
                             f"layer index -> overrides; {fix}")
    seen: dict[int, str] = {}
    for key, overrides in per_layer.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and int(key) < layers):
            raise BaseModelError(f"{path}: {PER_LAYER_CONFIG} has the key {key!r}, which is not a layer index from 0 to "
                                 f"{layers - 1} (num_hidden_layers is {layers}); {fix}")
        layer = int(key)
        if layer in seen:
            raise BaseModelError(f"{path}: {PER_LAYER_CONFIG} gives layer {layer} twice ({seen[layer]!r} and {key!r}); "
                                 f"{fix}")
        seen[layer] = key
        if not isinstance(overrides, dict):
            raise BaseModelError(f"{path}: {PER_LAYER_CONFIG}[{key!r}] (layer {layer}) is {overrides!r}, not an object "
                                 f"of overrides; {fix}")
        other = sorted(set(overrides) - {"intermediate_size"})
        if other:
            raise BaseModelError(f"{path}: {PER_LAYER_CONFIG}[{key!r}] (layer {layer}) overrides {', '.join(other)}; "
                                 "lambda-bake reads per-layer MLP widths (intermediate_size) only")
        if "intermediate_size" in overrides:
            value = overrides["intermediate_size"]
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _CONFIG_INTS[
                    "intermediate_size"][1]:
                raise BaseModelError(f"{path}: layer {layer}'s intermediate_size in {PER_LAYER_CONFIG} is {value!r}, "
                                     f"not a positive whole number of neurons; {fix}")
            widths[layer] = value
    return widths


TRANSFORMERS_ROPE_THETA = 10_000.0  # transformers' RotaryEmbeddingConfigMixin.default_theta


def rope_theta(config: dict[str, Any]) -> float:
    """RoPE's base as transformers reads a config: ``rope_parameters``' rope_theta, else the top-level rope_theta,
    else transformers' default (10,000: a config that names none gets it in transformers, so every export must)."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    value = rope.get("rope_theta", config.get("rope_theta")) if isinstance(rope, dict) else config.get("rope_theta")
    return float(value) if value is not None else TRANSFORMERS_ROPE_THETA


def per_layer_config(widths: list[int]) -> dict[str, dict[str, int]]:
    """``per_layer_config`` for these MLP widths under a global ``intermediate_size`` of ``max(widths)``, exactly as
    transformers' ``save_pretrained`` writes it: only the layers that differ from the global value, keyed by the
    layer index zero-padded to the widest key's digits (so that keys sort numerically); empty when all agree."""
    top = max(widths)
    differ = [i for i, w in enumerate(widths) if w != top]
    digits = len(str(max(differ))) if differ else 1
    return {str(i).zfill(digits): {"intermediate_size": widths[i]} for i in differ}


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
    layer_widths(config, path)
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
    per_layer = config.get(PER_LAYER_CONFIG) or {}
    for layer, width in enumerate(base.layer_widths):
        for proj, shape in (("gate_proj", (width, base.hidden_size)),
                            ("up_proj", (width, base.hidden_size)),
                            ("down_proj", (base.hidden_size, width))):
            name = mlp_name(layer, proj)
            if name not in reader:
                raise BaseModelError(f"{folder}: tensor {name} is missing from the checkpoint")
            if reader.tensors[name].shape != shape:
                entry = next((k for k in per_layer if k.isdigit() and int(k) == layer), None)
                said = (f"its {PER_LAYER_CONFIG}[{entry!r}] gives layer {layer} {width} neurons" if entry is not None
                        else f"layer {layer} has no {PER_LAYER_CONFIG} entry, so it takes the global intermediate_size "
                             f"{width}")
                raise BaseModelError(
                    f"{folder}: {reader.tensors[name].file.name}'s {name} has shape {list(reader.tensors[name].shape)}, "
                    f"but config.json says {list(shape)} ({said}); the checkpoint does not match its config.json "
                    "(already pruned, or one of the two edited?)"
                )
            if not reader.tensors[name].dtype.computable:
                raise BaseModelError(
                    f"{folder}: {name} is {reader.tensors[name].dtype.name}; lambda-bake folds "
                    f"{', '.join(COMPUTE_DTYPES)} checkpoints (a quantized base must be dequantized first)"
                )
    return base
