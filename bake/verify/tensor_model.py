"""A transformers Qwen3 built from named float32 tensors, each layer's MLP as wide as its tensors say, holding one
decoder layer's weights at a time.

Verify runs its reference and yardsticks through it: the hooked base, the bake (its tensors, from a baked folder or
rebuilt from its plan) and an export's own weights, dequantized (``bake.verify.export_model``). The model is made on
the meta device; the embedding, final norm and ``lm_head`` are assigned once, and each decoder layer's tensors are
read (``LayerTensors``) when the layer runs and dropped when it is done, as accelerate's disk offload and GPTQ's
layer-by-layer calibration do. So a model costs its embedding plus one layer in float32, not the whole model,
whatever its size; the math is transformers' own modules on the same float32 values, so the logits equal an
in-memory model's (tests). Our own hook rather than accelerate's offload: that keeps the stored dtype and needs
its own offload folder, where verify widens bf16 (and dequantizes) to float32 from sources of several kinds.
Every parameter must be given (strict), so a missing or misnamed tensor is an error, not a random weight.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from bake.verify.weights.bake_tensors import config_widths

MLP_PROJ = ("gate_proj", "up_proj", "down_proj")
Named = Iterable[tuple[str, np.ndarray]]
_LAYER = re.compile(r"(?:^|\.)(?:layers|blk)\.(\d+)\.")


def layer_of(name: str) -> int | None:
    """The decoder layer a tensor name belongs to (``model.layers.N.``, ``blk.N.``, ``transformer.layers.N.``)."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


@dataclass
class LayerTensors:
    """A model's float32 tensors under transformers' names, in groups read only when asked for: ``top`` (the
    embedding, final norm and ``lm_head``) and ``layer(i)`` (decoder layer ``i``'s)."""

    top: Callable[[], Named]
    layer: Callable[[int], Named]

    @classmethod
    def grouped(cls, keys: Iterable[Hashable], read: Callable[[Any], Named],
                where: Callable[[Any], int | None] = layer_of) -> LayerTensors:
        """Source keys (tensor names of the file) grouped by the layer ``where`` finds in each; ``read(key)`` gives
        the transformers-named float32 tensors made from one key (a packed projection gives several)."""
        groups: dict[int | None, list[Any]] = defaultdict(list)
        for key in keys:
            groups[where(key)].append(key)

        def read_all(group: int | None) -> Named:
            for key in groups.get(group, []):
                yield from read(key)

        return cls(lambda: read_all(None), read_all)


def bake_layers(bake: Any) -> LayerTensors:
    """A bake's tensors (``bake.verify.weights.bake_tensors.BakeTensors``: a baked folder, the bake the base and
    gates define, or the base itself) in float32, grouped by decoder layer; the layers' widened into reused arrays
    (``Reused``)."""
    reused = Reused()

    def read(name: str) -> Named:
        stored = bake.tensor(name)
        return [(name, stored.values(out=reused.array(name, stored.shape)))]

    return LayerTensors.grouped(bake.names(), read)


class Reused:
    """float32 arrays that decoder layers' tensors are widened into, one per tensor name within a layer (``q_proj``,
    ``down_proj``, ...), handed out again to the next layer of that shape once nothing but this holds it (the layer
    that used it was dropped). A new array is zero-filled by the kernel a page at a time as it is first written: on
    every layer of every pass, about a third of the cost of reading the layer."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """An array of ``shape`` for tensor ``name`` to be written whole; None (make a new one) for a top tensor."""
        m = _LAYER.search(name)
        if m is None:
            return None
        key = name[m.end():]
        kept = self._arrays.get(key)
        if kept is not None and kept.shape == shape and sys.getrefcount(kept) == 3:  # held here, by kept and the call
            return kept
        self._arrays[key] = fresh = np.empty(shape, np.float32)
        return fresh


def qwen3_model(config: dict[str, Any], tensors: LayerTensors, widths: list[int] | None = None) -> nn.Module:
    """A float32 ``Qwen3ForCausalLM`` of ``config`` over ``tensors``, each decoder layer's read as it runs.

    ``widths``: each layer's MLP width (ragged); default: the config's (its ``per_layer_config``, else
    ``intermediate_size`` everywhere). An ``lm_head.weight`` among the top tensors unties it from the embedding.
    """
    from transformers import AutoModelForCausalLM, Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    top = {name: _tensor(a) for name, a in tensors.top()}
    cfg = dict(config)
    cfg["tie_word_embeddings"] = "lm_head.weight" not in top
    if cfg["tie_word_embeddings"]:
        top["lm_head.weight"] = top["model.embed_tokens.weight"]
    if widths is None:
        widths = config_widths(cfg)
    conf = Qwen3Config(**{k: v for k, v in cfg.items()
                          if k not in ("architectures", "transformers_version", "per_layer_config")})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(conf, dtype=torch.float32)
        hidden = conf.hidden_size
        for i, layer in enumerate(model.model.layers):
            width = widths[i]
            layer.mlp.gate_proj = nn.Linear(hidden, width, bias=False)
            layer.mlp.up_proj = nn.Linear(hidden, width, bias=False)
            layer.mlp.down_proj = nn.Linear(width, hidden, bias=False)
    missing, unexpected = model.load_state_dict(top, strict=False, assign=True)
    missing = [k for k in missing if layer_of(k) is None]
    if missing or unexpected:
        raise KeyError(f"the model's top-level tensors do not match: missing {missing}, unexpected {unexpected}")
    model.model.rotary_emb = Qwen3RotaryEmbedding(config=conf)  # its buffers are not in the state dict
    for i, layer in enumerate(model.model.layers):
        layer.register_forward_pre_hook(_loader(tensors, i))
        layer.register_forward_hook(_drop)
    return model.eval()


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _loader(tensors: LayerTensors, i: int) -> Callable[..., None]:
    prefix = f"model.layers.{i}."

    def load(layer: nn.Module, args: Any) -> None:
        state = {}
        for name, a in tensors.layer(i):
            if not name.startswith(prefix):
                raise KeyError(f"tensor {name} was read for decoder layer {i}")
            state[name[len(prefix):]] = _tensor(a)
        layer.load_state_dict(state, strict=True, assign=True)

    return load


def _drop(layer: nn.Module, args: Any, out: Any) -> None:
    """Hand the layer's weights back (the next pass reads them again)."""
    layer.to_empty(device="meta")
