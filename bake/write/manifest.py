"""``bake_manifest.json``: a complete, machine-readable record of how a checkpoint was baked."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bake import __version__
from bake.errors import ManifestMismatch
from bake.gates.report import uniform_cost
from bake.io.json_files import read_json

if TYPE_CHECKING:
    from bake.fold.plan import BakePlan

MANIFEST_NAME = "bake_manifest.json"
MANIFEST_FORMAT = 1


def build_manifest(plan: BakePlan, sources: dict[str, Any], files: list[str]) -> dict[str, Any]:
    """Tool, sources (with the gate file's sha256), cut, achieved off-fractions, modes, layout, sizes."""
    g, v, st = plan.gates, plan.variant, plan.settings
    return {
        "format": MANIFEST_FORMAT,
        "tool": {"name": "lambda-bake", "version": __version__},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "base": {
            "source": sources.get("base", str(plan.base.folder.resolve())),
            "revision": sources.get("base_revision"),
            "model_type": plan.base.config.get("model_type"),
            "num_layers": plan.base.num_layers,
            "intermediate_size": plan.base.intermediate_size,
            "hidden_size": plan.base.hidden_size,
        },
        "gates": {
            "source": sources.get("gates", str(v.folder.parent.resolve())),
            "revision": sources.get("gates_revision"),
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
        "pad_multiple": plan.options.pad_multiple if plan.options.layout == "pruned" else None,
        "intermediate_size": plan.width,
        "dtype": plan.dtype_name,
        "sizes": plan.sizes,
        "files": files,
    }


def read_manifest(folder: Path) -> dict[str, Any]:
    """Read a baked folder's manifest; a folder without one was not made by lambda-bake."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestMismatch(f"{folder} has no {MANIFEST_NAME}; it was not baked by lambda-bake")
    return read_json(path, ManifestMismatch, "bake the folder again")
