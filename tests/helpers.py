"""Small test helpers: run models, measure logit differences, read figures."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import torch

from bake.gates.gate_math import GateSettings, compute_gates
from bake.gates.variant import GateVariant
from bake.verify.reference import load_hooked_model


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """One JSON object a line, as eval's sets are written."""
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


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


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG file, from its header."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def svg_size(path: Path) -> tuple[str, str]:
    """The width and height an SVG file declares."""
    root = ET.parse(path).getroot()
    return root.attrib["width"], root.attrib["height"]


def by_gid(fig: Any) -> dict[str, Any]:
    """A figure's artists that carry a gid, by gid."""
    return {a.get_gid(): a for a in fig.findobj(lambda a: a.get_gid() is not None)}


def as_numpy(value: Any) -> Any:
    """What the reader should return for an object torch.load returns (bfloat16 widened to float32)."""
    if isinstance(value, torch.Tensor):
        return value.detach().float().numpy() if value.dtype == torch.bfloat16 else value.detach().numpy()
    if isinstance(value, dict):
        return {k: as_numpy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(as_numpy(v) for v in value)
    return value
