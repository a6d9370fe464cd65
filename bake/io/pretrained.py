"""Load a baked folder as a plain transformers ``Qwen3ForCausalLM``, a ragged one included, with no remote code.

A ragged bake gives each layer its own MLP width in transformers' ``per_layer_config``. transformers reads that
config (>= 5.15) but its Qwen3 modeling still sizes every MLP from the global ``intermediate_size`` (building one
raises ``AmbiguousGlobalPerLayerAttributeError``). ``load_pretrained`` therefore builds the stock classes itself,
each ``Qwen3MLP`` from its layer's width, and loads the safetensors strictly. Where transformers builds the per-layer
model on its own, ``AutoModelForCausalLM.from_pretrained`` is used instead.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bake.errors import BaseModelError
from bake.io.base_model import PER_LAYER_CONFIG, BaseModel, open_base_model

if TYPE_CHECKING:
    import torch
    from torch import nn


def load_pretrained(path: str | Path, dtype: torch.dtype | str = "auto", device: str = "cpu") -> nn.Module:
    """A ``Qwen3ForCausalLM`` of the baked (or any Qwen3) folder ``path``, in eval mode, in ``dtype`` ('auto': the
    checkpoint's), on ``device``.

    The folder is checked first (config fields, each layer's width against its tensors): a problem is a
    ``BaseModelError`` naming the file and the layer. Weights load strictly: a missing or extra tensor is an error
    naming it. ``model.config`` is the folder's own config (``save_pretrained`` writes the same ``per_layer_config``).
    """

    folder = Path(path)
    base = open_base_model(folder)
    torch_dtype = _torch_dtype(dtype, base)
    if not base.ragged or _transformers_builds(base):
        model = _from_pretrained(base, torch_dtype)
    else:
        model = _build_per_layer(base, torch_dtype)
    return model.to(device).eval()


def _torch_dtype(dtype: torch.dtype | str, base: BaseModel) -> torch.dtype:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = base.dtype.name if dtype == "auto" else str(dtype).removeprefix("torch.")
    if name not in ("float32", "bfloat16", "float16"):
        raise BaseModelError(f"dtype {dtype!r}: choose auto, float32, bfloat16 or float16")
    return getattr(torch, name)


def _config(base: BaseModel) -> Any:
    """The folder's config as transformers reads it (``per_layer_config`` included, where it knows the key)."""
    from transformers import Qwen3Config

    return Qwen3Config.from_dict(dict(base.config))


def _flat_config(base: BaseModel) -> Any:
    """The config without ``per_layer_config``: every layer at the global width, which stock modeling builds."""
    from transformers import Qwen3Config

    return Qwen3Config.from_dict({k: v for k, v in base.config.items() if k != PER_LAYER_CONFIG})


def _transformers_builds(base: BaseModel) -> bool:
    """Whether this transformers builds the per-layer model itself (tried on the meta device: no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(_config(base))
        widths = [layer.mlp.down_proj.in_features for layer in model.model.layers]
    except Exception:  # noqa: BLE001 - a transformers without per-layer modeling fails in its own way (5.25: AmbiguousGlobalPerLayerAttributeError)
        return False
    return widths == base.layer_widths


def _from_pretrained(base: BaseModel, dtype: torch.dtype) -> nn.Module:
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(str(base.folder), dtype=dtype, output_loading_info=True)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    _strict(base, set(info.get("missing_keys") or ()) - tied, set(info.get("unexpected_keys") or ()),
            [str(m) for m in info.get("mismatched_keys") or ()])
    return model


def _build_per_layer(base: BaseModel, dtype: torch.dtype) -> nn.Module:
    """Stock ``Qwen3ForCausalLM`` modules on the meta device, each layer's ``Qwen3MLP`` at its own width, then every
    safetensors tensor assigned in place (no second copy) and the rotary tables computed on the CPU."""
    import torch
    from safetensors import safe_open
    from transformers import GenerationConfig, Qwen3ForCausalLM
    from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP, Qwen3RotaryEmbedding

    flat = _flat_config(base)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(flat)
        for layer, width in zip(model.model.layers, base.layer_widths):
            layer_config = copy.copy(flat)
            layer_config.intermediate_size = width
            layer.mlp = Qwen3MLP(layer_config)
    state: dict[str, torch.Tensor] = {}
    for file in sorted({info.file for info in base.reader.tensors.values()}):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is no mapping
                state[name] = f.get_tensor(name).to(dtype)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    tied = {"lm_head.weight"} if flat.tie_word_embeddings else set()
    _strict(base, set(shapes) - set(state) - tied, set(state) - set(shapes), [
        f"{name}: {list(t.shape)} in the file, {list(shapes[name])} in the model"
        for name, t in state.items() if name in shapes and tuple(t.shape) != shapes[name]])
    model.load_state_dict(state, strict=False, assign=True)
    model.model.rotary_emb = Qwen3RotaryEmbedding(config=flat)  # its tables are buffers, not checkpoint tensors
    if flat.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left:
        raise BaseModelError(f"{base.folder}: no tensor for {', '.join(left[:5])}; the checkpoint is incomplete")
    model.config = _config(base)
    model.config.dtype = dtype
    if (base.folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(base.folder))
    return model


def _strict(base: BaseModel, missing: set[str], unexpected: set[str], mismatched: list[str]) -> None:
    """A missing, extra or misshapen tensor is an error naming it and the folder."""
    problems = ([f"missing {', '.join(sorted(missing)[:5])}"] if missing else []) + (
        [f"not in the model: {', '.join(sorted(unexpected)[:5])}"] if unexpected else []) + (
        [f"other shapes: {'; '.join(mismatched[:5])}"] if mismatched else [])
    if problems:
        files = json.dumps(base.weight_files())
        raise BaseModelError(f"{base.folder}: the weights ({files}) do not match a Qwen3 model of its config.json: "
                             f"{'; '.join(problems)}; bake or download the folder again")
