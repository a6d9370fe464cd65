"""Bake several cuts (and variants) of one base in one run: ``OUT/<variant>-p<K>`` and friends.

The base is opened once. Every cut is planned and every destination checked before the first byte is
written, so a typo fails at once with nothing written. Each output is then written all or nothing on
its own (``bake.write.pipeline.write_bake``: its own temporary folder, fsync and rename, its own ``--verify``
and ``--onnx``); a cut that fails (verification, bad input found late, a full disk) is reported and
the sweep goes on, and finished outputs are never touched again.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bake.errors import EXIT_USER, BakeError, CutError, VerificationFailed
from bake.fold.plan import BakeOptions, BakePlan, plan_bake
from bake.gates.gate_math import Cut, GateSettings
from bake.gates.variant import GateVariant
from bake.io.atomic import check_destination
from bake.io.base_model import BaseModel
from bake.write.checkpoint import check_carried_files
from bake.write.pipeline import Check, Extras, write_bake


@dataclass(frozen=True)
class SweepCut:
    """One output of a sweep: a variant, its gate settings, and where its scale mode came from."""

    variant: GateVariant
    settings: GateSettings
    scale_mode_source: str
    sources: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return cut_folder_name(self.variant.name, self.settings.cut) + ("-uniform" if self.settings.rule == "uniform"
                                                                        else "")


@dataclass
class CutOutcome:
    """What happened to one cut: what its plan decided (``planned``), and the manifest if it was written,
    else the error and its exit code; ``verification`` is the verifier's report whenever it ran."""

    name: str
    variant: str
    cut: Cut
    out: Path
    seconds: float
    planned: dict[str, Any]
    manifest: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    error: str | None = None
    exit_code: int = 0

    @property
    def ok(self) -> bool:
        return self.manifest is not None

    def to_dict(self) -> dict[str, Any]:
        """The cut's entry in the sweep report; a failed cut keeps its planned figures (and failed verification)."""
        p = self.planned
        return {
            "name": self.name, "out": str(self.out), "ok": self.ok, "seconds": round(self.seconds, 3),
            "error": self.error, "exit_code": self.exit_code, "variant": self.variant,
            "cut": {"kind": self.cut.kind, "value": self.cut.value}, "threshold": p["threshold"],
            "off_fraction": p["off_fraction"], "layout": p["layout"], "intermediate_size": p["intermediate_size"],
            "params": p["sizes"][p["layout"]]["params"], "sizes": p["sizes"],
            "verified": None if self.verification is None else self.verification["passed"],
            "verification": self.verification, "manifest": self.manifest,
        }


def planned_figures(plan: BakePlan) -> dict[str, Any]:
    """What a plan decided, as its manifest records it: threshold, off-fraction, layout, width and sizes."""
    return {"threshold": plan.gates.threshold, "off_fraction": plan.gates.off_fraction, "layout": plan.options.layout,
            "intermediate_size": plan.width, "sizes": plan.sizes}


def cut_folder_name(variant: str, cut: Cut) -> str:
    """``<variant>-p3`` for a preset, ``-t0.45`` for a threshold, ``-f0.25`` for an off-fraction, ``-soft``."""
    if cut.kind == "preset":
        return f"{variant}-p{int(cut.value)}"
    if cut.kind == "threshold":
        return f"{variant}-t{cut.value:g}"
    if cut.kind == "off_fraction":
        return f"{variant}-f{cut.value:g}"
    return f"{variant}-soft"


def plan_sweep(base: BaseModel, cuts: list[SweepCut], out_root: Path, options: BakeOptions
               ) -> list[tuple[SweepCut, BakePlan, Path]]:
    """Plan every cut and check every destination; the first problem is raised before anything is written."""
    check_carried_files(base.folder)  # once, before any cut is written
    names = [c.name for c in cuts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CutError(f"the sweep asks for {', '.join(twice)} more than once; give each cut once")
    planned = []
    for c in cuts:
        out = Path(out_root) / c.name
        try:
            plan = plan_bake(base, c.variant, c.settings, options)
            check_destination(out, options.overwrite, inputs=(base.folder, c.variant.folder))
        except BakeError as e:
            raise type(e)(f"{c.name}: {e}") from e
        planned.append((c, plan, out))
    return planned


def run_sweep(
    planned: list[tuple[SweepCut, BakePlan, Path]],
    check: Check | None = None,
    extras: Extras | None = None,
    log: Callable[[str], None] | None = None,
) -> list[CutOutcome]:
    """Write every planned cut in turn; a failed cut is recorded and the next one goes on."""
    outcomes = []
    for i, (cut, plan, out) in enumerate(planned, 1):
        if log:
            log(f"[{i}/{len(planned)}] {cut.name}: {cut.settings.cut.describe()}, threshold {plan.gates.threshold}, "
                f"{plan.gates.off_fraction:.2%} off -> {out}")
        outcomes.append(_write_cut(cut, plan, out, check, extras))
        if log and not outcomes[-1].ok:
            log(f"[{i}/{len(planned)}] {cut.name} FAILED (exit {outcomes[-1].exit_code}): {outcomes[-1].error}")
    return outcomes


def _write_cut(cut: SweepCut, plan: BakePlan, out: Path, check: Check | None, extras: Extras | None) -> CutOutcome:
    """Write one cut; its failure (not a bug, not an interrupt) becomes the outcome instead of an exception."""
    start = time.perf_counter()
    result: dict[str, Any] = {}
    try:
        result["manifest"] = write_bake(plan, out, cut.sources | {"scale_mode_source": cut.scale_mode_source},
                                        check, extras)
        result["verification"] = result["manifest"].get("verification")
    except VerificationFailed as e:
        result = {"error": str(e), "exit_code": e.exit_code, "verification": e.report}
    except BakeError as e:
        result = {"error": str(e), "exit_code": e.exit_code}
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        result = {"error": f"disk full while writing ({e}); nothing of this cut was left behind",
                  "exit_code": EXIT_USER}
    return CutOutcome(cut.name, cut.variant.name, cut.settings.cut, out, time.perf_counter() - start,
                      planned_figures(plan), **result)


def sweep_exit_code(outcomes: list[CutOutcome]) -> int:
    """0 when every cut was written; 3 when only verification failed; else 2 (a user error)."""
    codes = {o.exit_code for o in outcomes if not o.ok}
    if not codes:
        return 0
    return codes.pop() if len(codes) == 1 else EXIT_USER
