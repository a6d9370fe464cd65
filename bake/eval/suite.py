"""The seed suite: the evaluation sets the gates' card names, built from their Hub datasets.

- ``forget`` (text): PopQA test, each fact as a sentence, ``"{subj}'s {prop} is {obj}."``;
- ``popqa`` (QA): the same PopQA rows, ``question`` asked, ``possible_answers`` (a JSON list) as the aliases;
- ``retain`` (text): NuminaMath-CoT test, ``problem`` / ``solution`` as a user / assistant chat (thinking off);
- ``gsm8k`` (QA): GSM8K main test, ``question`` asked, the number after ``####`` in ``answer`` the reference, scored
  on the last number of the reply (as lm-eval's gsm8k "flexible-extract");
- ``wikitext`` (text): WikiText-2 raw test, one article a row, split on its ``= Title =`` headings.

The files come from the Hub through huggingface_hub's ``snapshot_download`` (the cache first; ``HF_HUB_OFFLINE``
honoured; its snapshot folder names the commit), or from ``--data-dir DIR`` holding copies as ``hf download ORG/NAME
--repo-type dataset --local-dir DIR/ORG/NAME`` lays them out (the commit read from the metadata that command
keeps). The ``datasets`` library reads them. With a limit N, a set takes rows (articles for WikiText) in the order
of ``sha256("<seed>:<index>")`` until N make a row (a unit that makes none, e.g. a PopQA row without a usable
alias, is skipped and counted), kept in split order: the same rows on every machine and Python version, and a
larger N keeps the rows of a smaller one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bake.errors import EvalDataError
from bake.eval.sets import Built, EvalSet, HubDataset, QARow, TextRow

SUITES = ("seed",)
SEED = 0
DATASETS_INSTALL = 'pip install "lambda-bake[eval]"'
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class Source:
    """One split of a Hub dataset: which files hold it, how they are read, the columns the sets use."""

    id: str
    config: str | None
    split: str
    patterns: tuple[str, ...]  # files inside the repo (globs)
    reader: str  # "parquet" or "tsv"
    columns: tuple[str, ...]


POPQA = Source("akariasai/PopQA", None, "test", ("test.tsv",), "tsv",
               ("subj", "prop", "obj", "question", "possible_answers"))
NUMINA = Source("AI-MO/NuminaMath-CoT", None, "test", ("data/test-*.parquet",), "parquet", ("problem", "solution"))
GSM8K = Source("openai/gsm8k", "main", "test", ("main/test-*.parquet",), "parquet", ("question", "answer"))
WIKITEXT = Source("Salesforce/wikitext", "wikitext-2-raw-v1", "test", ("wikitext-2-raw-v1/test-*.parquet",),
                  "parquet", ("text",))


@dataclass(frozen=True)
class SuiteSet:
    """A set of the suite: its source, how the split becomes units (rows, or articles), and a unit a row."""

    name: str
    kind: str  # "text" or "qa"
    source: Source
    render: str  # in words, for eval.json
    make: Callable[[dict[str, Any]], TextRow | QARow | None]  # None: the unit makes no row (counted as dropped)
    units: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] = lambda records: records
    scoring: str = "aliases"
    max_new_tokens: int | None = None


def _fact(r: dict[str, Any]) -> TextRow | None:
    parts = [str(r[k]).strip() if r[k] is not None else "" for k in ("subj", "prop", "obj")]
    return TextRow(text=f"{parts[0]}'s {parts[1]} is {parts[2]}.") if all(parts) else None


def _popqa(r: dict[str, Any]) -> QARow | None:
    try:
        aliases = json.loads(r["possible_answers"]) if isinstance(r["possible_answers"], str) else None
    except json.JSONDecodeError:
        return None
    aliases = tuple(a for a in aliases or () if isinstance(a, str) and a.strip())
    return QARow(r["question"], aliases) if isinstance(r["question"], str) and r["question"] and aliases else None


def _numina(r: dict[str, Any]) -> TextRow | None:
    if not (isinstance(r["problem"], str) and r["problem"] and isinstance(r["solution"], str) and r["solution"]):
        return None
    return TextRow(messages=[{"role": "user", "content": r["problem"]},
                             {"role": "assistant", "content": r["solution"]}])


def _gsm8k(r: dict[str, Any]) -> QARow | None:
    answer = r["answer"] if isinstance(r["answer"], str) else ""
    final = answer.rpartition("####")[2].strip().replace(",", "") if "####" in answer else ""
    return QARow(r["question"], (final,)) if final and isinstance(r["question"], str) and r["question"] else None


_HEADING = re.compile(r"^ = [^=].* = \n?$")  # a top-level "= Title =" line (sections are "= = Title = =")


def _articles(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """WikiText's lines grouped into articles, each from its title line to the next, as the raw file reads."""
    articles: list[list[str]] = []
    for r in records:
        line = r["text"] or "\n"  # the datasets' copy gives a blank line of the raw file as ""
        if _HEADING.match(line):
            articles.append([])
        if articles:
            articles[-1].append(line)
    return [{"text": "".join(a).strip()} for a in articles]


def _article(r: dict[str, Any]) -> TextRow | None:
    return TextRow(text=r["text"]) if r["text"] else None


SEED_SUITE = (
    SuiteSet("forget", "text", POPQA, "{subj}'s {prop} is {obj}. (raw text)", _fact),
    SuiteSet("popqa", "qa", POPQA, "question asked in the user turn; possible_answers as aliases", _popqa),
    SuiteSet("retain", "text", NUMINA, "user: problem, assistant: solution (chat template, thinking off)", _numina),
    SuiteSet("gsm8k", "qa", GSM8K, "question asked in the user turn; the number after #### as the answer, scored "
             "on the reply's last number", _gsm8k, scoring="final_number", max_new_tokens=256),
    SuiteSet("wikitext", "text", WIKITEXT, "one article a row (split on its = Title = headings), raw text", _article,
             units=_articles),
)


def require_datasets() -> None:
    if importlib.util.find_spec("datasets") is None:
        raise EvalDataError(f"--suite reads its sets with Hugging Face's datasets library; {DATASETS_INSTALL}")


def check_suite_args(suite: str | None, data_dir: Path | None, limit: int | None, flags: tuple[str, str, str]
                     ) -> None:
    """The suite's arguments, before any work (``flags``: the names of the suite, data-dir and limit options)."""
    if suite is None:
        if data_dir is not None or limit is not None:
            raise EvalDataError(f"{flags[1]} and {flags[2]} apply to {flags[0]}; add {flags[0]} seed or drop them")
        return
    if suite not in SUITES:
        raise EvalDataError(f"{flags[0]} {suite!r}: the suites are {', '.join(SUITES)}")
    if limit is not None and limit < 1:
        raise EvalDataError(f"{flags[2]} {limit}: give a number of rows per set (>= 1)")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise EvalDataError(f"{flags[1]} {data_dir} is not a folder; give the folder that holds the datasets as "
                            "`hf download ORG/NAME --repo-type dataset --local-dir DIR/ORG/NAME` lays them out")
    require_datasets()


def ranked(count: int, seed: int = SEED) -> list[int]:
    """Positions 0 .. count-1 in the order a limit takes them: by sha256("<seed>:<index>")."""
    return sorted(range(count), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())


def build_suite(suite: str, data_dir: Path | None, limit: int | None, say: Callable[[str], None] = lambda _: None
                ) -> tuple[list[EvalSet], list[EvalSet]]:
    """The suite's text sets and QA sets, each read from its dataset, chosen and rendered; every failure an
    ``EvalDataError`` that names the dataset, the file and the fix."""
    assert suite == "seed", suite
    read: dict[Source, tuple[list[dict[str, Any]], HubDataset, tuple[str, ...]]] = {}
    texts: list[EvalSet] = []
    qas: list[EvalSet] = []
    for spec in SEED_SUITE:
        if spec.source not in read:
            say(f"reading {spec.source.id} ({spec.source.split}) ...")
            read[spec.source] = _read(spec.source, data_dir)
        records, dataset, files = read[spec.source]
        units = spec.units(records)
        limited = limit is not None and limit < len(units)
        made: dict[int, TextRow | QARow] = {}
        dropped = 0
        for i in ranked(len(units)) if limited else range(len(units)):
            row = spec.make(units[i])
            if row is None:
                dropped += 1
            else:
                made[i] = row
            if limited and len(made) == limit:
                break
        if not made:
            raise EvalDataError(f"{spec.source.id} ({', '.join(files)}) gives no usable row for the set "
                                f"{spec.name!r}; check that the copy is the dataset's {spec.source.split} split")
        picked = sorted(made)
        rows = tuple(made[i] for i in picked)
        built = Built(suite=suite, files=files, source_rows=len(units), seed=SEED if limited else None,
                      selection=(f"the first {limit} usable units by sha256('{SEED}:<index>'), in split order"
                                 if limited else "every usable unit of the split"),
                      indices=tuple(picked) if limited else None, dropped=dropped, render=spec.render)
        built_set = EvalSet(spec.name, spec.kind, Path(f"{spec.name}.jsonl"), _rows_sha256(rows), rows,
                            dataset=dataset, built=built, scoring=spec.scoring, max_new_tokens=spec.max_new_tokens)
        (texts if spec.kind == "text" else qas).append(built_set)
    return texts, qas


def _rows_sha256(rows: tuple[TextRow | QARow, ...]) -> str:
    """sha256 of the rows as the JSONL a user would give eval (one object a line, UTF-8, keys sorted)."""
    h = hashlib.sha256()
    for r in rows:
        if isinstance(r, QARow):
            obj: dict[str, Any] = {"question": r.question, "answers": list(r.answers)}
            if r.context is not None:
                obj["context"] = r.context
        else:
            obj = {"text": r.text} if r.text is not None else {"messages": r.messages}
        h.update(json.dumps(obj, ensure_ascii=False, sort_keys=True).encode() + b"\n")
    return h.hexdigest()


def _read(source: Source, data_dir: Path | None) -> tuple[list[dict[str, Any]], HubDataset, tuple[str, ...]]:
    folder, revision = _local(source, data_dir) if data_dir is not None else _hub(source)
    files = tuple(sorted({p.relative_to(folder).as_posix() for pattern in source.patterns
                          for p in folder.glob(pattern) if p.is_file()}))
    if not files:
        raise EvalDataError(f"{folder} holds no {' or '.join(source.patterns)} ({source.id}'s {source.split} split); "
                            f"fetch it with `hf download {source.id} --repo-type dataset --local-dir {folder}`")
    if data_dir is not None:
        revision = _local_revision(folder, files)
    records = _load(folder, files, source)
    return records, HubDataset(source.id, source.config, source.split, revision), files


def _hub(source: Source) -> tuple[Path, str | None]:
    """The dataset's files from the Hub cache (or the Hub): the snapshot folder, named by its commit."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(source.id, repo_type="dataset", allow_patterns=list(source.patterns)))
    except Exception as e:  # the Hub's and the cache's errors alike: no traceback, the fix instead
        raise EvalDataError(
            f"{source.id} (dataset) cannot be read from the Hub or its cache ({type(e).__name__}: {str(e)[:200]}); "
            f"where the Hub is reachable run `hf download {source.id} --repo-type dataset --local-dir "
            f"DIR/{source.id}` and give --data-dir DIR (or fill the cache with HF_HUB_OFFLINE unset)") from e
    return folder, folder.name if _COMMIT.fullmatch(folder.name) else None


def _local(source: Source, data_dir: Path) -> tuple[Path, str | None]:
    folder = Path(data_dir) / source.id
    if not folder.is_dir():
        raise EvalDataError(f"{folder} does not exist: the seed suite reads {source.id} there; make it with `hf "
                            f"download {source.id} --repo-type dataset --local-dir {folder}`")
    return folder, None


def _local_revision(folder: Path, files: tuple[str, ...]) -> str | None:
    """The commit ``hf download --local-dir`` recorded for the files (its ``.cache/huggingface/download/<file>
    .metadata``, first line); None when it kept none or the files come from different commits. Read here rather
    than with huggingface_hub's reader, which takes a lock file in the folder and deletes metadata it cannot parse."""
    commits = set()
    for name in files:
        meta = folder / ".cache" / "huggingface" / "download" / f"{name}.metadata"
        try:
            first = meta.read_text().splitlines()[0].strip()
        except (OSError, IndexError, UnicodeDecodeError):
            return None
        commits.add(first)
    commit = commits.pop() if len(commits) == 1 else None
    return commit if commit and _COMMIT.fullmatch(commit) else None


def _load(folder: Path, files: tuple[str, ...], source: Source) -> list[dict[str, Any]]:
    """The split's records (the used columns) as ``datasets`` reads the files, in file order."""
    import datasets

    paths = [str(folder / f) for f in files]
    options: dict[str, Any] = {"sep": "\t"} if source.reader == "tsv" else {}
    builder = "csv" if source.reader == "tsv" else "parquet"
    was_enabled = datasets.utils.logging.is_progress_bar_enabled()
    verbosity = datasets.utils.logging.get_verbosity()
    datasets.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity(logging.CRITICAL)  # a file it cannot parse is logged with a traceback:
    try:  # the error below names the file instead
        with tempfile.TemporaryDirectory(prefix="lambda-bake-suite-") as cache:  # leave no arrow copy behind
            try:
                table = datasets.load_dataset(builder, data_files=paths, split="train", cache_dir=cache, **options)
            except Exception as e:  # pyarrow's and pandas' parse errors alike
                raise EvalDataError(f"{', '.join(paths)} cannot be read as {source.id}'s {source.reader} files "
                                    f"({type(e).__name__}: {str(e)[:200]}); fetch them again with `hf download "
                                    f"{source.id} --repo-type dataset --local-dir {folder}`") from e
            missing = [c for c in source.columns if c not in table.column_names]
            if missing:
                raise EvalDataError(f"{', '.join(paths)} lack the column(s) {', '.join(missing)} that {source.id} has "
                                    f"(found: {', '.join(table.column_names)}); give a copy of {source.id} itself")
            return table.select_columns(list(source.columns)).to_list()
    finally:
        datasets.utils.logging.set_verbosity(verbosity)
        if was_enabled:
            datasets.utils.logging.enable_progress_bar()

