"""What ``eval --model`` names, resolved before anything is loaded: a baked checkpoint folder, an ONNX export
folder, a ``.gguf`` file, a sweep folder (every baked cut in it), the hooked model (base + gates + cut) and the
base itself. Each becomes a ``ModelSpec`` that says how to run it and what cut it is (from its manifest)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bake.errors import BakeError
from bake.write.manifest import MANIFEST_NAME, read_manifest

KINDS = ("checkpoint", "onnx", "gguf", "mlx", "hooked", "base")


@dataclass
class ModelSpec:
    """One model to evaluate: its report label, its kind, where it is, and (for bakes) the cut it carries."""

    label: str
    kind: str
    path: Path
    cut: dict[str, Any] = field(default_factory=dict)  # variant, off_fraction, layout, threshold, format
    scale: np.ndarray | None = None  # the hooked model's gate scale [L, I]
    base: Path | None = None  # the base its manifest (a folder's, or a GGUF's embedded one) records, on this machine
    base_hub: tuple[str, str | None] | None = None  # the base's Hub id and revision, where a GGUF's manifest names one

    def describe(self) -> dict[str, Any]:
        return {"model": self.label, "kind": self.kind, **self.cut}


def _base_of(manifest: dict[str, Any] | None) -> Path | None:
    local = ((manifest or {}).get("base") or {}).get("local_path")
    return Path(local) if local and Path(local).is_dir() else None


def _hub_of(manifest: dict[str, Any] | None) -> tuple[str, str | None] | None:
    base = (manifest or {}).get("base") or {}
    return (base["hub_id"], base.get("revision")) if base.get("hub_id") else None


def _cut_of(manifest: dict[str, Any] | None, fmt: str) -> dict[str, Any]:
    if manifest is None:
        return {"format": fmt}
    return {"variant": manifest["gates"]["variant"], "off_fraction": manifest["off_fraction"],
            "threshold": manifest["cut"]["threshold"], "layout": manifest["layout"], "rule": manifest["cut"].get("rule"),
            "format": fmt}


def resolve(path: Path) -> list[ModelSpec]:
    """The models ``path`` names (a sweep folder names several); a path that is none of them is a clear error."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        from bake.verify.candidates import gguf_candidate

        manifest = gguf_candidate(path).manifest
        beside = read_manifest(path.parent) if (path.parent / MANIFEST_NAME).is_file() else None  # its bake folder
        return [ModelSpec(path.name, "gguf", path, _cut_of(manifest, f"gguf {path.stem.rsplit('-', 1)[-1].lower()}"),
                          base=_base_of(beside), base_hub=_hub_of(manifest))]
    if not path.is_dir():
        raise BakeError(f"--model {path}: no such folder or .gguf file; give a baked folder, an ONNX export folder, an "
                        "MLX folder, a .gguf file or a sweep folder")
    if (path / "onnx_io.json").is_file():
        from export.onnx.folder import read_export_folder

        io = read_export_folder(path)
        manifest = read_manifest(path) if (path / MANIFEST_NAME).is_file() else None
        quant = (io.get("quantization") or {}).get("weights")
        fmt = f"onnx {io['target']} {io['layout']} {quant or io['dtype']}"
        return [ModelSpec(_label(path), "onnx", path, _cut_of(manifest, fmt), base=_base_of(manifest))]
    if (path / "mlx_export.json").is_file():
        from export.mlx.folder import read_mlx_folder

        info = read_mlx_folder(path)
        manifest = read_manifest(path) if (path / MANIFEST_NAME).is_file() else None
        quant = info.get("quantization")
        weights = f"{quant['bits']}bit" if quant else info["dtype"]
        fmt = f"mlx {info['model_type']} {info['layout']} {weights}"
        return [ModelSpec(_label(path), "mlx", path, _cut_of(manifest, fmt), base=_base_of(manifest))]
    if (path / "config.json").is_file():
        manifest = read_manifest(path) if (path / MANIFEST_NAME).is_file() else None
        return [ModelSpec(_label(path), "checkpoint", path, _cut_of(manifest, "checkpoint"), base=_base_of(manifest))]
    cuts = sorted(p for p in path.iterdir() if p.is_dir() and (p / MANIFEST_NAME).is_file() and (p / "config.json").is_file())
    if not cuts:
        raise BakeError(f"--model {path}: not a baked folder (no config.json), an ONNX export (no onnx_io.json), an MLX "
                        "folder (no mlx_export.json) nor a sweep folder (no baked folder in it); give one of those, or "
                        "a .gguf file")
    return [spec for cut in cuts for spec in resolve(cut)]


def with_unique_labels(specs: list[ModelSpec]) -> list[ModelSpec]:
    """The specs with distinct report labels: models whose labels clash (two sweeps' ``chat_energy-p3``, two bakes'
    ``model-ragged-Q8_0.gguf``) are labelled by their path as given; the same model twice is an error."""
    from collections import Counter

    paths = Counter((s.kind, Path(s.path).resolve()) for s in specs)
    twice = [s for s in specs if paths[(s.kind, Path(s.path).resolve())] > 1]
    if twice:
        raise BakeError(f"--model {twice[0].path} is given twice (or a sweep holds it too); give each model once")
    counts = Counter(s.label for s in specs)
    for s in specs:
        if counts[s.label] > 1:
            s.label = str(s.path)
    return specs


def _label(path: Path) -> str:
    """A folder's report label: its name, with its parent's for an export inside a bake (``bake/onnx``)."""
    return f"{path.parent.name}/{path.name}" if path.name in ("onnx", "mlx") else path.name


def hooked_spec(base: Path, gates_dir: Path, variant: str | None, settings: Any) -> ModelSpec:
    """The hooked model: the base with the gates' scale applied by ``down_proj`` pre-hooks (as published)."""
    from bake.gates.gate_math import compute_gates
    from bake.gates.variant import load_variant
    from bake.io.base_model import read_config

    config = read_config(base)
    v = load_variant(gates_dir, variant, num_layers=int(config["num_hidden_layers"]),
                     intermediate_size=int(config["intermediate_size"]))
    gates = compute_gates(v.logits, settings, v.selected_thresholds)
    off = float((gates.scale == 0).mean())
    return ModelSpec(f"hooked {v.name} ({settings.cut.describe()})", "hooked", Path(base),
                     {"variant": v.name, "off_fraction": off, "layout": "hooked", "format": "transformers (hooked)"},
                     scale=gates.scale)


def base_spec(base: Path) -> ModelSpec:
    return ModelSpec(f"base ({Path(base).name})", "base", Path(base), {"off_fraction": 0.0, "format": "transformers"})
