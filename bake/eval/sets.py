"""Evaluation sets, read from JSONL and checked line by line.

Text sets: one JSON object a line, ``{"text": "..."}`` (raw text) or ``{"messages": [{"role", "content"}, ...]}``
(a conversation, rendered with the model's chat template, thinking off, no generation prompt). QA sets:
``{"question": "...", "answers": ["alias", ...], "context": "..."}`` (``context`` optional: with it, the oracle
setting, the passage in the prompt). A malformed line, a row without its fields, or an empty file is an
``EvalDataError`` naming the file and the line. A set is named by ``NAME=FILE`` on the command line and published
by its file name and sha256, never by its path.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bake.errors import EvalDataError

Messages = list[dict[str, str]]
MAX_ROWS = 1_000_000


@dataclass(frozen=True)
class TextRow:
    text: str | None = None
    messages: Messages | None = None


@dataclass(frozen=True)
class QARow:
    question: str
    answers: tuple[str, ...]
    context: str | None = None


@dataclass(frozen=True)
class EvalSet:
    """A named set: its rows, and the file it came from (its name and sha256 are what a report publishes)."""

    name: str
    kind: str  # "text" or "qa"
    path: Path
    sha256: str
    rows: tuple[Any, ...]
    dataset: HubDataset | None = None  # the Hub dataset the rows were made from, where the user names it
    built: Built | None = None  # how a suite set was made from its dataset (``bake.eval.suite``); None for a file
    scoring: str = "aliases"  # QA: "aliases" (SQuAD-normalized answer against each alias) or "final_number"
    max_new_tokens: int | None = None  # QA: this set's answer length (None: the run's --qa-max-new-tokens)

    def describe(self) -> dict[str, Any]:
        # a suite set has no file: "file" names its dataset and split instead (what tables and figures show)
        source = f"{self.dataset.id} {self.dataset.split}" if self.built and self.dataset else self.path.name
        out: dict[str, Any] = {"kind": self.kind, "file": source, "sha256": self.sha256, "rows": len(self.rows)}
        if self.dataset:
            out["dataset"] = {k: v for k, v in asdict(self.dataset).items() if v is not None}
        if self.built:
            out["built"] = asdict(self.built)
        if self.kind == "qa":
            out["scoring"] = self.scoring
            if self.max_new_tokens is not None:
                out["max_new_tokens"] = self.max_new_tokens
        return out


@dataclass(frozen=True)
class HubDataset:
    """A Hub dataset id, with its config, split and commit (what a model card's model-index names a result's set
    by)."""

    id: str
    config: str | None = None
    split: str | None = None
    revision: str | None = None  # the commit the rows were read at, where known


@dataclass(frozen=True)
class Built:
    """How a suite set's rows were made: from which files of the dataset, which rows, rendered how."""

    suite: str
    files: tuple[str, ...]  # paths inside the dataset repo
    source_rows: int  # rows (or articles) in the split
    seed: int | None  # the row choice's seed; None when every row is used
    selection: str  # the rule, in words
    indices: tuple[int, ...] | None  # the chosen rows' positions in the split, when not all
    dropped: int  # chosen rows that could not make a row (e.g. no usable alias)
    render: str  # what a row becomes, in words


def dataset_arg(spec: str, flag: str) -> tuple[str, HubDataset]:
    """``NAME=ORG/DATASET[:CONFIG[:SPLIT]]`` -> (set name, dataset); the id checked as the Hub checks repo ids."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    name, sep, value = spec.partition("=")
    parts = value.split(":")
    if not sep or not name or not parts[0] or len(parts) > 3:
        raise EvalDataError(f"{flag} {spec!r}: give NAME=ORG/DATASET[:CONFIG[:SPLIT]], e.g. {flag} "
                            "forget=akariasai/PopQA::test")
    try:
        validate_repo_id(parts[0])
    except HFValidationError as e:
        raise EvalDataError(f"{flag} {spec!r}: {parts[0]!r} is not a Hub dataset id ({e})") from e
    return name, HubDataset(parts[0], *(p or None for p in parts[1:]))


def named_file(spec: str, flag: str) -> tuple[str, Path]:
    """``NAME=FILE`` -> (name, path); the name is a plain word (it keys the report)."""
    name, sep, file = spec.partition("=")
    if not sep or not name or not file or not all(c.isalnum() or c in "-_." for c in name):
        raise EvalDataError(f"{flag} {spec!r}: give NAME=FILE, NAME a plain word (letters, digits, - _ .), e.g. "
                            f"{flag} retain=numina.jsonl")
    return name, Path(file)


def read_set(name: str, path: Path, kind: str) -> EvalSet:
    """Read and check one set (``kind`` "text" or "qa") from ``path``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise EvalDataError(f"{path} cannot be read ({e.strerror or e}); give an existing JSONL file") from e
    parse = _text_row if kind == "text" else _qa_row
    rows = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            obj = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise EvalDataError(f"{where} is not a JSON object ({type(e).__name__}: {str(e)[:120]}); one JSON "
                                "object a line") from e
        if not isinstance(obj, dict):
            raise EvalDataError(f"{where} holds a JSON {type(obj).__name__}, not an object; one JSON object a line")
        _check_text(obj, where)
        rows.append(parse(obj, where))
        if len(rows) > MAX_ROWS:
            raise EvalDataError(f"{path} has more than {MAX_ROWS:,} rows; split it into several sets")
    if not rows:
        raise EvalDataError(f"{path} holds no rows; an evaluation set needs at least one JSON object")
    return EvalSet(name, kind, path, hashlib.sha256(data).hexdigest(), tuple(rows))


def _check_text(value: Any, where: str) -> None:
    """Every string in the row is text a tokenizer takes: JSON allows a lone surrogate (``"\\ud800"``), which is no
    Unicode character and which the tokenizers library refuses."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise EvalDataError(f"{where} holds {value[max(e.start - 10, 0):e.end + 10]!r}, whose character "
                                f"{e.object[e.start:e.end]!r} at {e.start} is a lone UTF-16 surrogate, not a Unicode "
                                "character; fix that escape in the file (a pair of surrogates writes one character)"
                                ) from e
    elif isinstance(value, dict):
        for v in value.values():
            _check_text(v, where)
    elif isinstance(value, list):
        for v in value:
            _check_text(v, where)


def _text_row(obj: dict[str, Any], where: str) -> TextRow:
    if "text" in obj:
        if not isinstance(obj["text"], str) or not obj["text"]:
            raise EvalDataError(f"{where}: \"text\" must be a non-empty string")
        return TextRow(text=obj["text"])
    if "messages" in obj:
        return TextRow(messages=_messages(obj["messages"], where))
    raise EvalDataError(f"{where} has neither \"text\" nor \"messages\"; a text set row is {{\"text\": \"...\"}} or "
                        "{\"messages\": [{\"role\": \"user\", \"content\": \"...\"}, ...]}")


def _messages(value: Any, where: str) -> Messages:
    ok = isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)
    if not ok:
        raise EvalDataError(f"{where}: \"messages\" must be a non-empty list of {{\"role\": str, \"content\": str}}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _qa_row(obj: dict[str, Any], where: str) -> QARow:
    question, answers, context = obj.get("question"), obj.get("answers"), obj.get("context")
    if not isinstance(question, str) or not question:
        raise EvalDataError(f"{where}: a QA row needs \"question\", a non-empty string")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise EvalDataError(f"{where}: \"answers\" must be a non-empty list of non-empty strings (the aliases)")
    if context is not None and not isinstance(context, str):
        raise EvalDataError(f"{where}: \"context\" must be a string when given")
    return QARow(question, tuple(answers), context or None)
