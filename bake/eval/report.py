"""An evaluation report as a person reads it (one row per model, one column group per set) and as a bake keeps
it (``eval.json`` beside its manifest, which ``push`` turns into the card's model-index and table)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bake.io.json_files import finite
from bake.write.model_card import EVAL_NAME


def format_table(report: dict[str, Any]) -> str:
    """Text table: model, off-fraction, then per text set nll / ppl / delta / KL and per QA set EM / contains."""
    names = list(report["sets"])
    head = [f"{'model':<40}", f"{'off':>6}"]
    for n in names:
        kind = report["sets"][n]["kind"]
        head.append(f"{n + (' nll / ppl / dNLL / KL' if kind == 'text' else ' EM / contains'):>40}")
    lines = [" ".join(head), "-" * (48 + 41 * len(names))]
    for m in report["models"]:
        off = m.get("off_fraction")
        cells = [f"{m['model'][:40]:<40}", f"{off:>6.1%}" if off is not None else f"{'-':>6}"]
        for n in names:
            f = m["sets"][n]
            if report["sets"][n]["kind"] == "text":
                text = f"{_num(f['nll'])} / {_num(f['perplexity'], 2)} / {_num(f.get('delta_nll'), signed=True)} / " \
                       f"{_num(f.get('mean_kl'))}"
            else:
                text = f"{_pct(f['exact_match'])} / {_pct(f['contains'])}"
            cells.append(f"{text:>40}")
        lines.append(" ".join(cells) + ("   (reference)" if m.get("is_reference") else ""))
    notes = [f"  {m['model']}: {n}: {m['sets'][n]['kl_note']}" for m in report["models"] for n in names
             if m["sets"][n].get("kl_note")]
    trunc = [f"  {m['model']}: {n}: {m['sets'][n]['truncated']} rows truncated to {report['settings']['max_length']} "
             "tokens" for m in report["models"] for n in names if m["sets"][n].get("truncated")]
    sel = [f"  {m['model']}: selectivity {m['selectivity']['forget']} - {m['selectivity']['retain']} = "
           f"{m['selectivity']['forget_minus_retain']:+.4f} nats/token" for m in report["models"] if m.get("selectivity")]
    return "\n".join(lines + notes + trunc + sel)


def _num(x: float | None, digits: int = 4, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def folder_of(entry: dict[str, Any], path: Path) -> Path | None:
    """Where a model's ``eval.json`` goes: its folder (a checkpoint, an ONNX export); None for a GGUF file or the
    hooked model and the base (nothing of ours to write into)."""
    return path if entry["kind"] in ("checkpoint", "onnx") else None


def write_eval_file(folder: Path, report: dict[str, Any], entries: list[dict[str, Any]]) -> Path:
    """``folder/eval.json``: the sets (by file name and sha256), the settings, the reference and the figures of the
    models in ``folder`` (a bake: its checkpoint and exports); written to a temporary name and renamed, so it is
    whole or absent."""
    data = {"created_by": report["created_by"], "settings": report["settings"], "sets": report["sets"],
            "reference": next((m for m in report["models"] if m.get("is_reference")), None),
            "results": entries}
    path = Path(folder) / EVAL_NAME
    tmp = path.with_name(f".{EVAL_NAME}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(finite(data), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path
