"""Load a gate variant folder: the per-neuron logits and the files the card publishes beside them.

A variant folder holds ``lambda_logits.pt`` (or ``lambda_logits.safetensors``) and, when present,
``gate_stats.json``, ``selected_thresholds.txt`` and ``neuron_indices.json``. ``.pt`` files come from
the internet and a pickle can run code, so they are read by ``bake.gates.pt_reader``, which accepts only
tensors and plain containers and runs nothing (no torch needed); only a file in torch's legacy
(pre-1.6, non-zip) format goes to ``torch.load(..., weights_only=True)``. Logits are numpy arrays.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bake.errors import GateFileError
from bake.gates.pt_reader import DamagedArchive, LegacyFormat, UnsafePickle, load_pt
from bake.io.dtypes import to_float32
from bake.io.json_files import read_json
from bake.io.paths import GATE_FILE_SUFFIXES, GATES_PATH, require
from bake.io.provenance import sha256_file
from bake.io.tensor_io import read_header, read_rows

GATE_FILENAMES = ("lambda_logits.pt", "lambda_logits.safetensors")
ALL_VARIANTS = "all"  # --variant all: every variant in a folder of variants
_LAYER_KEY = re.compile(r"layers?[._](\d+)")


@dataclass
class GateVariant:
    """One variant: [L, I] float32 logits plus the card's side files."""

    name: str
    folder: Path
    gate_file: Path
    logits: np.ndarray  # [L, I] float32
    sha256: str
    scale_mode: str | None  # inferred from gate_stats.json or the folder name; None if unknown
    scale_mode_source: str
    selected_thresholds: list[float] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    knowledge_neurons: int | None = None  # count listed in neuron_indices.json

    @property
    def num_layers(self) -> int:
        return int(self.logits.shape[0])

    @property
    def intermediate_size(self) -> int:
        return int(self.logits.shape[1])


def list_variants(root: Path) -> list[str]:
    """Names of the variant subfolders of ``root`` (folders holding a gate file)."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _find_gate_file(p) is not None)


def find_variant_folder(gates: Path, variant: str | None = None) -> Path:
    """Resolve ``--gates`` (a variant folder, or a folder of variants) and ``--variant`` to one folder."""
    gates = require(gates, "folder", GATES_PATH, GateFileError, accept_files=GATE_FILE_SUFFIXES)
    if gates.is_file():
        if variant:
            raise GateFileError(f"--gates {gates} is a file; --variant only applies to a folder of variants")
        return gates.parent
    if _find_gate_file(gates) is not None:
        if variant and variant != gates.name:
            raise GateFileError(
                f"--gates {gates} is itself a variant folder ({gates.name}); drop --variant {variant} "
                "or point --gates at the folder holding the variants"
            )
        return gates
    names = list_variants(gates)
    if not names:
        raise GateFileError(
            f"no gate file in {gates}: expected one of {', '.join(GATE_FILENAMES)} in it or in its "
            "variant subfolders (e.g. chat_energy/lambda_logits.pt)"
        )
    if variant is None:
        if len(names) == 1:
            return gates / names[0]
        raise GateFileError(f"{gates} holds several variants; pick one with --variant: {', '.join(names)}")
    if variant not in names:
        raise GateFileError(f"unknown variant {variant!r} in {gates}; the variants there are: {', '.join(names)}")
    return gates / variant


def variant_folders(gates: Path, variant: str | None) -> list[Path]:
    """The variant folders ``--gates``/``--variant`` name; ``--variant all`` is every variant under ``gates``."""
    if variant != ALL_VARIANTS:
        return [find_variant_folder(gates, variant)]
    gates = Path(gates)
    names = list_variants(gates) if gates.is_dir() and _find_gate_file(gates) is None else []
    return [gates / name for name in names] or [find_variant_folder(gates)]


def load_variant(
    gates: Path,
    variant: str | None = None,
    *,
    num_layers: int | None = None,
    intermediate_size: int | None = None,
) -> GateVariant:
    """Load a variant's logits as [L, I] float32 and its side files.

    With ``num_layers``/``intermediate_size`` given (from the base config), flat or mis-sized gate
    tensors are checked against them and a mismatch is a clear error.
    """
    folder = find_variant_folder(Path(gates), variant)
    gate_file = Path(gates) if Path(gates).is_file() else _find_gate_file(folder)
    if gate_file is None:
        raise GateFileError(f"no gate file in {folder}: expected one of {', '.join(GATE_FILENAMES)}")
    raw = _read_container(gate_file)
    logits = gate_logits_to_matrix(raw, num_layers, intermediate_size, source=str(gate_file))
    stats = _read_stats(folder / "gate_stats.json")
    scale_mode, source = infer_scale_mode(folder.name, stats)
    return GateVariant(
        name=folder.name,
        folder=folder,
        gate_file=gate_file,
        logits=logits,
        sha256=sha256_file(gate_file),
        scale_mode=scale_mode,
        scale_mode_source=source,
        selected_thresholds=_read_thresholds(folder, stats),
        stats=stats,
        knowledge_neurons=_count_neuron_indices(folder / "neuron_indices.json"),
    )


def gate_logits_to_matrix(
    raw: Any, num_layers: int | None, intermediate_size: int | None, *, source: str = "gate file"
) -> np.ndarray:
    """Normalise any accepted container (of numpy arrays) to a [L, I] float32 array (layer-major)."""
    found = _unwrap(raw, source)
    if isinstance(found, np.ndarray):
        t = found
        if t.ndim == 1:
            if num_layers is None:
                raise GateFileError(f"{source}: a flat tensor of {t.size:,} gate logits does not say how many layers "
                                    "it covers; give --base (the base model folder), or --num-layers")
            if intermediate_size is None:  # the layer count alone, from --num-layers
                if num_layers < 1 or t.size % num_layers:
                    raise GateFileError(f"{source}: holds {t.size:,} gate logits, which is not a whole number of "
                                        f"neurons for each of --num-layers {num_layers} layers; check --num-layers, "
                                        "or give --base")
                width = t.size // num_layers
            else:
                width = intermediate_size
                if t.size != num_layers * width:
                    raise GateFileError(
                        f"{source}: holds {t.size:,} gate logits but the base model has "
                        f"{num_layers} layers x {width} neurons = {num_layers * width:,}; "
                        "these gates were trained for a different model size"
                    )
            t = t.reshape(num_layers, width)
        elif t.ndim != 2:
            raise GateFileError(f"{source}: expected a flat or [layers, neurons] tensor, found shape {list(t.shape)}")
    else:  # list of per-layer tensors, in layer order
        rows = [_as_1d(x, f"{source}[{i}]") for i, x in enumerate(found)]
        widths = {r.size for r in rows}
        if len(widths) != 1:
            raise GateFileError(f"{source}: per-layer gate tensors differ in size: {sorted(widths)}")
        t = np.stack(rows)
    if not np.issubdtype(t.dtype, np.floating):
        raise GateFileError(f"{source}: gate logits must be floating point, found {t.dtype}")
    t = np.ascontiguousarray(t, dtype=np.float32)
    if intermediate_size is not None and (t.shape[0] != num_layers or t.shape[1] != intermediate_size):
        raise GateFileError(
            f"{source}: gates have shape {list(t.shape)} ({t.size:,} neurons) but the base model has "
            f"{num_layers} layers x {intermediate_size} neurons = {(num_layers or 0) * intermediate_size:,}; "
            "these gates were trained for a different model size"
        )
    if intermediate_size is None and num_layers is not None and t.shape[0] != num_layers:
        raise GateFileError(f"{source}: gates for {t.shape[0]} layers, but --num-layers says {num_layers}; drop "
                            "--num-layers (the file says its shape) or give --base")
    bad = ~np.isfinite(t)
    if bad.any():
        idx = np.argwhere(bad)[0].tolist()
        raise GateFileError(
            f"{source}: {int(bad.sum())} gate logits are NaN or infinite (first at layer {idx[0]}, neuron "
            f"{idx[1]}); the file is damaged or was saved mid-training: download it again"
        )
    return t


def infer_scale_mode(folder_name: str, stats: dict[str, Any]) -> tuple[str | None, str]:
    """Scale mode from gate_stats.json (``scale_mode`` key) or the folder name; (None, ...) if unknown."""
    mode = stats.get("scale_mode") if isinstance(stats, dict) else None
    if isinstance(mode, str) and mode in ("mean", "energy", "none"):
        return mode, "gate_stats.json"
    lowered = folder_name.lower()
    hits = [m for m in ("energy", "mean") if m in lowered]
    if len(hits) == 1:
        return hits[0], "folder name"
    return None, "unknown"


def _find_gate_file(folder: Path) -> Path | None:
    for name in GATE_FILENAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def _read_container(path: Path) -> Any:
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        return load_pt(path)
    except UnsafePickle as e:
        raise GateFileError(
            f"{path}: refused to load: {e}. Only plain tensors and containers are read, because a pickle can run "
            "code. Re-save the logits as a plain tensor or as .safetensors"
        ) from e
    except LegacyFormat as e:
        return _read_legacy_pt(path, str(e))
    except (DamagedArchive, OSError) as e:
        raise GateFileError(f"{path}: cannot read the gate file ({e}); download it again") from e


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a numpy array (floats widened to float32)."""
    out = {}
    for info in read_header(path, GateFileError):
        raw = read_rows(info, error=GateFileError)
        out[info.name] = to_float32(raw, info.dtype) if info.dtype.name == "bfloat16" else raw
    return out


def _read_legacy_pt(path: Path, why: str) -> Any:
    """A pre-1.6 (non-zip) torch file: only ``torch.load(weights_only=True)`` reads it; tensors become numpy."""
    try:
        import torch
    except ImportError:
        raise GateFileError(f"{path}: cannot read the gate file ({why}); it may be truncated: download it "
                            "again, or re-save it as .safetensors") from None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for damaged or unsafe pickles
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise GateFileError(
                f"{path}: refused to load: the pickle holds objects other than plain tensors/containers "
                f"({text}). Only weights_only files are read, because a pickle can run code. Re-save the "
                "logits as a plain tensor or as .safetensors"
            ) from e
        raise GateFileError(f"{path}: cannot read the gate file ({text}); it may be truncated: download it again") from e
    return _torch_to_numpy(raw, torch)


def _torch_to_numpy(value: Any, torch: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float32 if value.dtype == torch.bfloat16 else value.dtype).numpy()
    if isinstance(value, dict):
        return {k: _torch_to_numpy(v, torch) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_torch_to_numpy(v, torch) for v in value)
    return value


def _unwrap(raw: Any, source: str) -> np.ndarray | list[Any]:
    """Accept a tensor, list/tuple of tensors, a dict keyed by layer, or one of those under one key."""
    if isinstance(raw, np.ndarray):
        return raw
    if isinstance(raw, (list, tuple)):
        if not raw:
            raise GateFileError(f"{source}: the gate list is empty")
        return list(raw)
    if isinstance(raw, dict):
        if not raw:
            raise GateFileError(f"{source}: the gate dict is empty")
        keyed = _layer_keyed(raw)
        if keyed is not None:
            return keyed
        if len(raw) == 1:
            (key, inner), = raw.items()
            if isinstance(inner, (np.ndarray, list, tuple, dict)):
                return _unwrap(inner, f"{source}[{key!r}]")
        keys = ", ".join(repr(k) for k in list(raw)[:6])
        raise GateFileError(
            f"{source}: a dict with keys {keys}{' ...' if len(raw) > 6 else ''} is not a gate container; expected "
            "a tensor, a list of per-layer tensors, or a dict keyed by layer (0, '0', 'model.layers.0.mlp')"
        )
    raise GateFileError(
        f"{source}: found a {type(raw).__name__}; expected a tensor, a list of per-layer tensors, or a dict "
        "keyed by layer"
    )


def _layer_keyed(raw: dict[Any, Any]) -> list[Any] | None:
    """A dict whose every key names a layer (int, digit string, or containing 'layers.<i>'), in order."""
    index: dict[int, Any] = {}
    for k, v in raw.items():
        if isinstance(k, int) and not isinstance(k, bool):
            i = k
        elif isinstance(k, str) and k.isdigit():
            i = int(k)
        elif isinstance(k, str) and (m := _LAYER_KEY.search(k)):
            i = int(m.group(1))
        else:
            return None
        if i in index:
            raise GateFileError(f"gate dict names layer {i} twice (key {k!r})")
        index[i] = v
    if sorted(index) != list(range(len(index))):
        missing = sorted(set(range(max(index) + 1)) - set(index))
        raise GateFileError(f"gate dict skips layers {missing[:8]}: expected keys for layers 0..{max(index)}")
    return [index[i] for i in range(len(index))]


def _as_1d(x: Any, source: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise GateFileError(f"{source}: expected a tensor of per-neuron logits, found {type(x).__name__}")
    return x.reshape(-1)


def _read_thresholds(folder: Path, stats: dict[str, Any]) -> list[float]:
    """The selected thresholds: ``selected_thresholds.txt`` (comma- or line-separated), else gate_stats.json's
    ``selected_thresholds`` (a list, or a dict of labels to values or to ``{"threshold": t}``). Each must be a
    number in (0, 1): it is compared with lambda = sigmoid(logit)."""
    path = folder / "selected_thresholds.txt"
    fix = "download it again or delete it"
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise GateFileError(f"{path} cannot be read as text ({e}); {fix}") from e
        if len(text) > 1 << 20:
            raise GateFileError(f"{path} holds {len(text):,} characters, not a short list of thresholds; {fix}")
        items, where = [x for x in text.replace("\n", ",").split(",") if x.strip()], path
    else:
        listed = stats.get("selected_thresholds")
        if isinstance(listed, dict):
            listed = list(listed.values())
        if not isinstance(listed, list):
            return []
        items = [x["threshold"] if isinstance(x, dict) and "threshold" in x else x for x in listed]
        where = folder / "gate_stats.json"
    try:
        values = [float(x) for x in items]
    except (TypeError, ValueError) as e:
        raise GateFileError(f"{where}: expected a list of numbers as the selected thresholds ({e}); {fix}") from e
    bad = [v for v in values if not 0.0 < v < 1.0]
    if bad:
        raise GateFileError(f"{where}: selected threshold {bad[0]!r} is not in (0, 1) (thresholds are compared with "
                            f"lambda = sigmoid(logit)); {fix}")
    return values


def _read_stats(path: Path) -> dict[str, Any]:
    """gate_stats.json (a JSON object), or ``{}`` when there is none."""
    if not path.exists():
        return {}
    stats = read_json(path, GateFileError, "download it again or delete it")
    if not isinstance(stats, dict):
        raise GateFileError(f"{path} holds a JSON {type(stats).__name__}, not the object of statistics the card "
                            "publishes; download it again or delete it")
    return stats


def _count_neuron_indices(path: Path) -> int | None:
    """Count the knowledge neurons listed in neuron_indices.json (dict by layer, or flat list)."""
    if not path.exists():
        return None
    data = read_json(path, GateFileError, "download it again or delete it")
    if isinstance(data, dict):
        data = data.get("neuron_indices", data)
    if isinstance(data, dict):
        return sum(len(v) for v in data.values() if isinstance(v, list))
    if isinstance(data, list):
        return len(data)
    return None
