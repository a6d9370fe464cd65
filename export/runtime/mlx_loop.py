"""Run an MLX export with mlx-lm: logits at every position for verify and eval, greedy streaming for
``generate --mlx`` (mlx-lm's own ``generate_step``, its KV cache and argmax sampler).

The prompt is the chat template rendered by lambda-bake's renderer (``export.runtime.chat``, thinking off), so
every engine decodes from the same ids; mlx-lm's tokenizer is the same Hugging Face tokenizer the folder carries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bake.errors import ExportError
from export.install import require_mlx


class MlxLM:
    """An MLX export folder loaded by mlx-lm (on Apple silicon's GPU, or the CPU of mlx's Linux build)."""

    def __init__(self, folder: Path):
        require_mlx()
        import mlx.core as mx
        from mlx_lm.utils import load_model

        from export.mlx.folder import read_mlx_folder

        self.folder = Path(folder)
        read_mlx_folder(self.folder)  # config fields, weights' headers: a damaged folder is named, not a TypeError
        try:
            self.model, self.config = load_model(self.folder)
        except (ValueError, KeyError, OSError, RuntimeError) as e:
            raise ExportError(f"mlx-lm cannot load {self.folder} ({type(e).__name__}: {e}); the folder is damaged or "
                              "incomplete: export it again") from e
        self.device = str(mx.default_device())
        config = dict(self.config) if isinstance(self.config, dict) else {}
        self.context = int(config.get("max_context_length") or config.get("max_position_embeddings") or 32768)

    def score(self, seqs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """[len(seq), vocab] float32 logits at every position of each sequence (one pass each)."""
        import mlx.core as mx

        out = []
        for seq in seqs:
            logits = self.model(mx.array([list(seq)]))[0].astype(mx.float32)
            out.append(np.array(logits))
        return out

    def stream(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_ids: set[int],
               pad_id: int) -> Iterator[np.ndarray]:
        """Greedy decoding of one prompt through mlx-lm: yields [1] next tokens until an eos or ``max_new_tokens``."""
        import mlx.core as mx
        from mlx_lm.generate import generate_step

        if len(prompts) != 1:
            raise ExportError("mlx-lm decodes one prompt at a time here; give one prompt")
        length = len(prompts[0]) + max_new_tokens
        if length > self.context:
            raise ExportError(f"{len(prompts[0])} prompt tokens + {max_new_tokens} new tokens = {length} do not fit "
                              f"the model's context of {self.context} positions (its config.json); shorten the prompt "
                              "or lower --max-new-tokens")
        for token, _ in generate_step(mx.array(list(prompts[0])), self.model, max_tokens=max_new_tokens):
            token = int(token)
            yield np.array([token], np.int64)
            if token in eos_ids:
                return

    def describe(self) -> dict[str, Any]:
        return {"engine": "mlx-lm", "folder": str(self.folder), "device": self.device}
