"""``bake_manifest.json``: a complete, machine-readable record of how a checkpoint was baked.

Inputs are recorded by what can be published: a Hub id and commit where known (``--base-id``,
``--gates-id``, a Hub download), else the folder's name, with content hashes either way. The absolute path
of a local input is kept in ``local_path`` for ``verify`` on this machine; ``public_manifest`` (what
``push`` uploads) drops it and every other machine-local path.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bake import __version__
from bake.errors import ManifestMismatch
from bake.gates.report import uniform_cost
from bake.io.json_files import checked_field, read_json_object
from bake.io.provenance import download_metadata
from bake.write.model_card import base_license

if TYPE_CHECKING:
    from bake.fold.plan import BakePlan

MANIFEST_NAME = "bake_manifest.json"
# a GGUF file carries the public manifest and its layout as metadata strings under these keys
GGUF_MANIFEST_KEY = "lambda_bake.manifest"
GGUF_LAYOUT_KEY = "lambda_bake.layout"
MANIFEST_FORMAT = 2  # 2: base/gates record hub_id, local_path, hashes; cut records its rule
LOCAL_KEYS = ("local_path",)


def source_record(hub_id: str | None, revision: str | None, folder: Path, local: dict[str, Any]) -> dict[str, Any]:
    """Where an input came from: its public ``source`` (the Hub id, else the folder's name), the Hub id and
    commit when known (a declared id without a revision takes the commit of the folder's download records),
    content hashes, and the folder's absolute path for this machine only."""
    return {
        "source": hub_id or local["name"],
        "hub_id": hub_id,
        "revision": revision or (local["downloaded_revision"] if hub_id else None),
        "downloaded_revision": local["downloaded_revision"],
        "files_sha256": local["sha256"],
        "local_path": str(Path(folder).resolve()),
    }


def _downloaded(v: Any) -> str | None:
    """The Hub commit ``hf download --local-dir`` recorded for the gate file, if any."""
    record = download_metadata(v.folder.parent, f"{v.folder.name}/{v.gate_file.name}")
    return record["commit"] if record else None


def public_manifest(manifest: dict[str, Any], folder: Path | None = None) -> dict[str, Any]:
    """The manifest as it may be published: no ``local_path``, and every string that holds a recorded local path
    (or ``folder``, the baked folder itself) says the input's public name (or ``.``) instead."""
    replace = {}
    for key in ("base", "gates"):
        entry = manifest.get(key) or {}
        if entry.get("local_path"):
            replace[entry["local_path"]] = entry.get("source") or key
    if folder is not None:
        replace[str(Path(folder).resolve())] = "."
        replace[str(Path(folder).absolute())] = "."
    return _scrub(manifest, dict(sorted(replace.items(), key=lambda kv: -len(kv[0]))))


def _scrub(value: Any, replace: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v, replace) for k, v in value.items() if k not in LOCAL_KEYS}
    if isinstance(value, list):
        return [_scrub(v, replace) for v in value]
    if isinstance(value, str):
        for path, name in replace.items():
            value = value.replace(path, name)
    return value


def build_manifest(plan: BakePlan, sources: dict[str, Any], files: list[str], local: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """Tool, sources (with content hashes), cut, achieved off-fractions, modes, layout, sizes.

    ``local``: the base folder's ``describe_local()`` when it was computed already (beside the write).
    """
    g, v, st = plan.gates, plan.variant, plan.settings
    return {
        "format": MANIFEST_FORMAT,
        "tool": {"name": "lambda-bake", "version": __version__},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "base": source_record(sources.get("base"), sources.get("base_revision"), plan.base.folder,
                              plan.base.describe_local() if local is None else local) | {
            "license": base_license(plan.base.folder),
            "model_type": plan.base.config.get("model_type"),
            "num_layers": plan.base.num_layers,
            "intermediate_size": plan.base.intermediate_size,
            "hidden_size": plan.base.hidden_size,
        },
        "gates": source_record(sources.get("gates"), sources.get("gates_revision"), v.folder.parent,
                               {"name": v.folder.parent.resolve().name, "sha256": None,
                                "downloaded_revision": _downloaded(v)}) | {
            "variant": v.name,
            "file": v.gate_file.name,
            "sha256": v.sha256,
            "num_neurons": int(v.logits.size),
        },
        "cut": {"kind": st.cut.kind, "value": st.cut.value, "threshold": g.threshold, "rule": g.rule,
                "target_off_fraction": g.target_off_fraction},
        "uniform_cut": uniform_cost(v.logits, g) if g.rule == "uniform" else None,
        "gate_mode": st.gate_mode,
        "scale_mode": st.scale_mode,
        "scale_mode_source": sources.get("scale_mode_source", "user"),
        "scale_scope": st.scale_scope,
        "off_fraction": g.off_fraction,
        "off_per_layer": g.off_per_layer,
        "kept_per_layer": g.kept_per_layer,
        "layout": plan.options.layout,
        "pad_multiple": plan.options.pad_multiple if plan.options.layout != "dense" else None,
        "intermediate_size": plan.width,
        "mlp_widths": plan.widths,
        "dtype": plan.dtype_name,
        "sizes": plan.sizes,
        "files": files,
    }


def read_manifest(folder: Path) -> dict[str, Any]:
    """Read a baked folder's manifest, checked field by field (what verify, export and push read of it); a folder
    without one was not made by lambda-bake."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestMismatch(f"{folder} has no {MANIFEST_NAME}; it was not baked by lambda-bake")
    fix = "the file is damaged or was edited: bake the folder again"
    return check_manifest(read_json_object(path, ManifestMismatch, fix, "a bake manifest"), path, fix)


def check_manifest(m: dict[str, Any], path: Path | str, fix: str) -> dict[str, Any]:
    """``m`` checked field by field (``path`` names where it came from: a folder's manifest, a GGUF's embedded
    one); a field of the wrong type or value is a ``ManifestMismatch`` naming it and ``fix``."""
    number = (int, float)
    for key, kind in (("layout", str), ("dtype", str), ("gate_mode", str), ("scale_mode", str), ("scale_scope", str),
                      ("intermediate_size", int), ("off_fraction", number), ("files", list), ("sizes", dict),
                      ("tool", dict)):
        checked_field(m, key, kind, path, ManifestMismatch, fix)
    checked_field(m, "pad_multiple", int, path, ManifestMismatch, fix, optional=True, low=1)
    for key in ("base", "gates", "cut"):
        checked_field(m, key, dict, path, ManifestMismatch, fix)
    for key in ("source",):
        checked_field(m["base"], key, str, path, ManifestMismatch, fix)
        checked_field(m["gates"], key, str, path, ManifestMismatch, fix)
    for key in ("variant", "sha256"):
        checked_field(m["gates"], key, str, path, ManifestMismatch, fix)
    for entry in (m["base"], m["gates"]):
        for key in ("hub_id", "revision", "local_path"):
            checked_field(entry, key, str, path, ManifestMismatch, fix, optional=True)
    checked_field(m["cut"], "kind", str, path, ManifestMismatch, fix)
    checked_field(m["cut"], "threshold", number, path, ManifestMismatch, fix, optional=True, low=0.0, high=1.0)
    checked_field(m["cut"], "rule", str, path, ManifestMismatch, fix, optional=True)
    if m["cut"].get("rule") == "uniform":
        checked_field(m["cut"], "target_off_fraction", number, path, ManifestMismatch, fix, low=0.0, high=1.0)
    if not all(isinstance(f, str) for f in m["files"]):
        raise ManifestMismatch(f"{path}: 'files' must list file names; {fix}")
    widths = checked_field(m, "mlp_widths", list, path, ManifestMismatch, fix, optional=True)
    if widths is not None and not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
        raise ManifestMismatch(f"{path}: 'mlp_widths' must list each layer's MLP width (whole numbers >= 1); {fix}")
    for key, choices in (("dtype", ("float32", "bfloat16", "float16")), ("layout", ("dense", "pruned", "ragged"))):
        if m[key] not in choices:
            raise ManifestMismatch(f"{path}: {key} is {m[key]!r}, expected one of {', '.join(choices)}; {fix}")
    return m
