"""The bake job: plan the output (``bake.fold.plan``), then stream it into a checkpoint folder atomically.

Writing streams one tensor at a time: untouched tensors are copied as raw bytes, MLP tensors are
folded (``bake.fold.weights``) in float32 and rounded once, block by block. ``bake_checkpoint`` opens the
base and bakes one cut; a sweep (``bake.write.sweep``) opens the base once and calls ``write_bake`` per cut.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bake.errors import VerificationFailed
from bake.fold.plan import BakeOptions, BakePlan, plan_bake
from bake.gates.gate_math import GateSettings
from bake.gates.variant import GateVariant
from bake.io.atomic import atomic_output_dir
from bake.io.base_model import open_base_model
from bake.io.tensor_io import parse_size
from bake.write.checkpoint import carry_base_files, check_carried_files, write_config, write_weights
from bake.write.manifest import MANIFEST_NAME, build_manifest
from bake.write.model_card import write_model_card

Check = Callable[[Path], dict[str, Any]]
Extras = Callable[[Path], list[str]]


def bake_checkpoint(
    base_dir: Path,
    variant: GateVariant,
    settings: GateSettings,
    out_dir: Path,
    options: BakeOptions | None = None,
    sources: dict[str, Any] | None = None,
    check: Check | None = None,
    extras: Extras | None = None,
) -> dict[str, Any]:
    """Bake ``variant`` into ``base_dir`` and write a complete checkpoint to ``out_dir`` atomically.

    Returns the manifest (also written as ``bake_manifest.json``). ``sources`` records where base
    and gates came from (Hub ids, revisions) for the manifest; local paths are used otherwise.
    ``extras`` (e.g. the ONNX export) adds files to the temporary folder and returns their relative
    names. ``check`` (e.g. the verifier) runs on the finished temporary folder before it is moved into
    place; its report is stored in the manifest and the card, and a failed check
    (``report["passed"]`` false) raises ``VerificationFailed`` with nothing written.
    """
    plan = plan_bake(open_base_model(base_dir), variant, settings, options or BakeOptions())
    return write_bake(plan, Path(out_dir), sources, check, extras)


def write_bake(plan: BakePlan, out_dir: Path, sources: dict[str, Any] | None = None, check: Check | None = None,
               extras: Extras | None = None) -> dict[str, Any]:
    """Write a planned bake to ``out_dir`` all or nothing (see ``bake_checkpoint``); return the manifest."""
    base, options = plan.base, plan.options
    check_carried_files(base.folder)  # a broken tokenizer or template stops the bake before anything is written
    with ThreadPoolExecutor(max_workers=1) as pool, \
            atomic_output_dir(out_dir, options.overwrite, inputs=(base.folder, plan.variant.folder)) as tmp:
        local = pool.submit(base.describe_local)  # hashing the base's weights runs beside the write
        files = write_weights(tmp, plan.tensors(), parse_size(options.max_shard_size), options.progress)
        write_config(tmp, base.config, widths=plan.widths, dtype_name=plan.dtype_name)
        files += ["config.json"] + carry_base_files(base.folder, tmp)
        manifest = build_manifest(plan, sources or {}, sorted(files + [MANIFEST_NAME, "README.md"]), local.result())
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        if extras is not None:
            manifest["files"] = sorted(manifest["files"] + extras(tmp))
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        if check is not None:  # its report names the temporary folder, which is renamed: say "." instead
            manifest["verification"] = json.loads(json.dumps(check(tmp)).replace(json.dumps(str(tmp))[1:-1], "."))
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        write_model_card(tmp, manifest)
        if check is not None and not manifest["verification"]["passed"]:
            raise VerificationFailed(
                "the bake does not match the hooked model; nothing was written. Failures: "
                + "; ".join(f"{c['name']}: {', '.join(c['failures'])}"
                            for c in manifest["verification"]["candidates"] if not c["passed"]),
                manifest["verification"],
            )
    return manifest
