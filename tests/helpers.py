"""Small test helpers: run models and measure logit differences."""

from __future__ import annotations

from pathlib import Path

import torch

from bake.gate_math import GateSettings, compute_gates
from bake.gates import GateVariant
from bake.reference import load_hooked_model


def load_plain(folder: Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A checkpoint loaded with nothing but AutoModelForCausalLM (no hooks, no custom code)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).eval()


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.to(torch.float32)


def hooked_logits(base: Path, variant: GateVariant, settings: GateSettings, ids: torch.Tensor) -> torch.Tensor:
    scale = compute_gates(variant.logits, settings, variant.selected_thresholds).scale
    return logits(load_hooked_model(base, scale), ids)


def rel_diff(ref: torch.Tensor, cand: torch.Tensor) -> float:
    """max |diff| relative to the largest |reference logit|."""
    return float((ref - cand).abs().max() / ref.abs().max())
