"""Run an evaluation: the reference first (when there is one), then every model in turn, one in memory at a time.

Text rows are tokenized by each model's own tokenizer (``bake.eval.runtimes``), truncated to ``max_length``
(counted), scored, and tallied (``bake.eval.metrics``). The reference's log-probs are kept in an unnamed temporary
file (``bake.verify.candidates.LogitStore``: one row read back at a time), so a model's KL from it costs disk,
not memory; its size is checked against the free space before the reference runs.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from bake import __version__
from bake.errors import EvalDataError
from bake.eval.metrics import QATally, TextTally, row_kl, row_nll
from bake.eval.models import ModelSpec
from bake.eval.runtimes import EvalLM, open_model
from bake.eval.sets import EvalSet, QARow, TextRow


@dataclass
class EvalOptions:
    max_length: int = 1024
    qa_max_new_tokens: int = 32
    device: str = "auto"
    kl: bool = True  # keep the reference's logits for KL (disk: predicted tokens x vocab x 4 bytes)
    forget: str = "forget"  # the text sets whose change is the selectivity figure, by name
    retain: str = "retain"
    progress: bool = True


@dataclass
class _Kept:
    """What the reference leaves for the models after it: its figures, its token ids and its log-probs per row."""

    figures: dict[str, Any]
    ids: dict[str, list[list[int]]]
    logp: dict[str, Any]  # set name -> LogitStore of log-softmaxed logits (row order of ``order``)
    order: dict[str, dict[int, int]]  # set name -> row index -> position in the store


def qa_messages(row: QARow) -> list[dict[str, str]]:
    """The chat a QA row is asked in: the question, or the context then the question (the oracle setting)."""
    content = row.question if row.context is None else f"Context: {row.context}\n\nQuestion: {row.question}"
    return [{"role": "user", "content": content}]


def evaluate(models: list[ModelSpec], texts: list[EvalSet], qas: list[EvalSet], reference: ModelSpec | None,
             options: EvalOptions) -> dict[str, Any]:
    """The report: settings, the sets (file name, sha256, rows), and per model its figures on every set."""
    started = time.monotonic()
    report: dict[str, Any] = {
        "created_by": f"lambda-bake {__version__}",
        "settings": {"max_length": options.max_length, "qa_max_new_tokens": options.qa_max_new_tokens,
                     "kl": options.kl and reference is not None, "chat_template": "enable_thinking=False",
                     "qa_prompt": "user turn: question, or 'Context: {context}\\n\\nQuestion: {question}'"},
        "sets": {s.name: s.describe() for s in (*texts, *qas)},
        "reference": reference.label if reference is not None else None,
        "models": [],
    }
    kept = None
    if reference is not None:  # its figures and token ids always; its log-probs (disk) only for KL
        entry, kept = _run(reference, texts, qas, options, None, keep=True)
        report["models"].append(entry | {"is_reference": True})
    for spec in models:
        entry, _ = _run(spec, texts, qas, options, kept)
        report["models"].append(entry)
    for entry in report["models"]:
        entry["selectivity"] = selectivity(entry, options)
    report["seconds"] = round(time.monotonic() - started, 2)
    return report


def selectivity(entry: dict[str, Any], options: EvalOptions) -> dict[str, Any] | None:
    """The forget set's loss change against the retain set's: their difference (nats per token) and ratio."""
    sets = entry["sets"]
    f, r = sets.get(options.forget, {}), sets.get(options.retain, {})
    if f.get("delta_nll") is None or r.get("delta_nll") is None:
        return None
    df, dr = f["delta_nll"], r["delta_nll"]
    return {"forget": options.forget, "retain": options.retain, "delta_nll_forget": df, "delta_nll_retain": dr,
            "forget_minus_retain": df - dr, "ratio": df / dr if dr > 0 else None}


def _rows(lm: EvalLM, s: EvalSet, max_length: int) -> tuple[list[list[int]], int]:
    ids, truncated = [], 0
    for row in s.rows:
        assert isinstance(row, TextRow)
        seq = lm.text_ids(row.text) if row.text is not None else lm.chat_ids(row.messages, add_generation_prompt=False)
        if len(seq) > max_length:
            seq, truncated = seq[:max_length], truncated + 1
        ids.append(seq)
    return ids, truncated


def _run(spec: ModelSpec, texts: list[EvalSet], qas: list[EvalSet], options: EvalOptions, ref: _Kept | None,
         keep: bool = False) -> tuple[dict[str, Any], _Kept | None]:
    """One model: open, every text set, every QA set, free. With ``keep``, also what the models after it need."""
    from bake.verify.candidates import LogitStore

    entry: dict[str, Any] = spec.describe() | {"sets": {}}
    started = time.monotonic()
    lm = open_model(spec, options.max_length, options.device)
    kept = _Kept({}, {}, {}, {}) if keep else None
    try:
        for s in texts:
            rows, truncated = _rows(lm, s, options.max_length)
            if kept is not None:
                kept.ids[s.name] = rows
                if options.kl:
                    _check_disk(s, rows, spec)
                    kept.logp[s.name], kept.order[s.name] = LogitStore(), {}
            same_ids = ref is not None and ref.ids.get(s.name) == rows
            tally = TextTally(truncated=truncated)
            bar = tqdm(total=len(rows), desc=f"{spec.label}: {s.name}", unit="row", disable=not options.progress,
                       file=sys.stderr, leave=False)
            for i, logits in lm.score(rows):
                bar.update()
                if len(rows[i]) < 2:
                    tally.add(0.0, 0, 0.0 if same_ids else None)
                    continue
                nll, logp = row_nll(logits, rows[i])
                kl = None
                if same_ids and s.name in ref.logp:
                    kl = row_kl(ref.logp[s.name][ref.order[s.name][i]], logp)
                tally.add(nll, len(rows[i]) - 1, kl)
                if kept is not None and s.name in kept.logp:
                    kept.order[s.name][i] = len(kept.logp[s.name])
                    kept.logp[s.name].append(logp)  # computed once here, not again for every model after it
            bar.close()
            figures = tally.figures(ref.figures.get(s.name) if ref is not None else None, comparable=same_ids)
            if ref is not None and not same_ids:
                figures["kl_note"] = ("token ids differ from the reference's (another tokenizer): no KL, and delta_nll "
                                      "counts other tokens, so it is not given")
            elif ref is not None and not options.kl:
                figures["kl_note"] = "--no-kl: KL not computed"
            entry["sets"][s.name] = figures
            if kept is not None:
                kept.figures[s.name] = figures
        for s in qas:
            tally_qa = QATally(scoring=s.scoring)
            for row in tqdm(s.rows, desc=f"{spec.label}: {s.name}", unit="q", disable=not options.progress,
                            file=sys.stderr, leave=False):
                prompt = lm.chat_ids(qa_messages(row), add_generation_prompt=True)
                tally_qa.add(lm.answer(prompt, s.max_new_tokens or options.qa_max_new_tokens), row.answers)
            entry["sets"][s.name] = tally_qa.figures() | {"answers": tally_qa.answers}
    finally:
        lm.close()
    entry["seconds"] = round(time.monotonic() - started, 2)
    return entry, kept


def _check_disk(s: EvalSet, rows: list[list[int]], spec: ModelSpec) -> None:
    """Refuse, before scoring, a reference whose kept logits would not fit the temporary folder."""
    from bake.io.base_model import read_config

    config_dir = spec.path if spec.path.is_dir() else None
    vocab = int(read_config(config_dir)["vocab_size"]) if config_dir is not None else 0
    need = sum(max(len(r) - 1, 0) for r in rows) * vocab * 4
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if need > 0.9 * free:
        raise EvalDataError(f"keeping the reference's logits for KL on {s.name} needs {need / 1e9:.1f} GB in "
                            f"{tempfile.gettempdir()}, which has {free / 1e9:.1f} GB free; pass --no-kl, shorten the "
                            "set or --max-length, or point TMPDIR at a larger disk")
