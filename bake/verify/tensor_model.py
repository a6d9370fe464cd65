"""A transformers Qwen3 built straight from named float32 tensors, each layer's MLP as wide as its tensors say.

Verify runs candidates' yardsticks through it: the bake (its tensors, from a baked folder or rebuilt from
its plan) and an ONNX export's own weights, dequantized (``bake.verify.export_model``). The model is
made on the meta device and the tensors are assigned as its parameters, one at a time and without
copies, so building it costs one model's memory; every parameter must be given (strict), so a
tensor that is missing or misnamed is an error, not a random weight.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

MLP_PROJ = ("gate_proj", "up_proj", "down_proj")


def qwen3_model(config: dict[str, Any], tensors: Iterable[tuple[str, np.ndarray]],
                widths: list[int] | None = None) -> nn.Module:
    """A float32 ``Qwen3ForCausalLM`` of ``config`` holding ``tensors`` (name -> float32 array).

    ``widths``: each layer's MLP width (ragged); default ``intermediate_size`` everywhere. An
    ``lm_head.weight`` among the tensors unties it from the embedding.
    """
    from transformers import AutoModelForCausalLM, Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    state = {name: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for name, a in tensors}
    cfg = dict(config)
    cfg["tie_word_embeddings"] = "lm_head.weight" not in state
    if cfg["tie_word_embeddings"]:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    conf = Qwen3Config(**{k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version")})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(conf, dtype=torch.float32)
        hidden = conf.hidden_size
        for i, layer in enumerate(model.model.layers):
            width = conf.intermediate_size if widths is None else widths[i]
            layer.mlp.gate_proj = nn.Linear(hidden, width, bias=False)
            layer.mlp.up_proj = nn.Linear(hidden, width, bias=False)
            layer.mlp.down_proj = nn.Linear(width, hidden, bias=False)
    model.load_state_dict(state, strict=True, assign=True)
    model.model.rotary_emb = Qwen3RotaryEmbedding(config=conf)  # its buffers are not in the state dict
    return model.eval()
