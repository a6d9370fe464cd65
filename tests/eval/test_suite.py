"""eval --suite seed: the card's sets built from their Hub datasets with the datasets library. The datasets are built
here with the real ones' file layout and column names (PopQA's test.tsv, NuminaMath-CoT's, GSM8K's and WikiText-2's
parquet files), as a --data-dir copy (hf download --local-dir, with its metadata) and as a Hub cache read with
HF_HUB_OFFLINE=1; every expected row, hash and choice is written out or recomputed here, not taken from the builder."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from bake.cli import main
from bake.eval.metrics import QATally

COMMIT = {"akariasai/PopQA": "098765c79ea10a2cb19c828324e33281b8336ec0",
          "AI-MO/NuminaMath-CoT": "9d8d210c9f6a36c8f3cd84045668c9b7800ef517",
          "openai/gsm8k": "e53f048856ff4f594e959d75785d2c2d37b678ee",
          "Salesforce/wikitext": "b08601e04326c79dfdd32d625aee71d232d685c3"}
FILES = {"akariasai/PopQA": "test.tsv", "AI-MO/NuminaMath-CoT": "data/test-00000-of-00001.parquet",
         "openai/gsm8k": "main/test-00000-of-00001.parquet",
         "Salesforce/wikitext": "wikitext-2-raw-v1/test-00000-of-00001.parquet"}

POPQA = [  # PopQA's columns; possible_answers is a JSON list in a string, as in test.tsv
    {"id": 4222362, "subj": "George Rankin", "prop": "occupation", "obj": "politician", "subj_id": 1850297,
     "prop_id": 22, "obj_id": 2834605, "s_aliases": "[\"George James Rankin\"]", "o_aliases": "[\"political leader\"]",
     "s_uri": "http://www.wikidata.org/entity/Q5543720", "o_uri": "http://www.wikidata.org/entity/Q82955",
     "s_wiki_title": "George Rankin", "o_wiki_title": "Politician", "s_pop": 142, "o_pop": 25692,
     "question": "What is George Rankin's occupation?",
     "possible_answers": "[\"politician\", \"political leader\", \"political figure\"]"},
    {"id": 1, "subj": "Cardiff", "prop": "capital of", "obj": "Wales", "subj_id": 2, "prop_id": 3, "obj_id": 4,
     "s_aliases": "[]", "o_aliases": "[\"Cymru\"]", "s_uri": "u", "o_uri": "v", "s_wiki_title": "Cardiff",
     "o_wiki_title": "Wales", "s_pop": 9000, "o_pop": 90000, "question": "What is Cardiff the capital of?",
     "possible_answers": "[\"Wales\", \"Cymru\"]"},
    {"id": 2, "subj": "Nobody", "prop": "genre", "obj": "jazz", "subj_id": 5, "prop_id": 6, "obj_id": 7,
     "s_aliases": "[]", "o_aliases": "[]", "s_uri": "u", "o_uri": "v", "s_wiki_title": "Nobody", "o_wiki_title": "Jazz",
     "s_pop": 3, "o_pop": 4, "question": "What genre is Nobody?", "possible_answers": "[\" \"]"},  # no usable alias
]
NUMINA = [{"source": "synthetic_math", "problem": "Find x if x + 2 = 5.", "solution": "x = 5 - 2 = \\boxed{3}.",
           "messages": [{"role": "user", "content": "Find x if x + 2 = 5."},
                        {"role": "assistant", "content": "x = 5 - 2 = \\boxed{3}."}]}]
GSM8K = [{"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
         {"question": "A farm sells 1,000 eggs a day for 2 days. How many eggs?",
          "answer": "1,000 * 2 = <<1000*2=2000>>2000\n#### 2,000"}]
WIKI_LINES = ["", " = Robert Boulter = \n", "", " Robert Boulter is an English actor . \n", "",
              " = = Career = = \n", "", " He appeared in a play . \n", "", " = Du Fu = \n", "",
              " Du Fu was a Chinese poet . \n"]
WIKI_ARTICLES = [" = Robert Boulter = \n\n Robert Boulter is an English actor . \n\n = = Career = = \n\n He appeared in a "
                 "play . \n".strip(), " = Du Fu = \n\n Du Fu was a Chinese poet . \n".strip()]


def write_copy(root: Path, repo: str, commit: str | None, rows: Any) -> None:
    """One dataset as `hf download REPO --repo-type dataset --local-dir ROOT/REPO` lays it out."""
    import pandas as pd

    path = root / repo / FILES[repo]
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    if path.suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    else:
        frame.to_parquet(path, index=False)
    if commit:
        meta = root / repo / ".cache" / "huggingface" / "download" / f"{FILES[repo]}.metadata"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(f"{commit}\n\"etag\"\n1765000000.0\n")


def write_all(root: Path, popqa: list[dict[str, Any]] = POPQA) -> Path:
    write_copy(root, "akariasai/PopQA", COMMIT["akariasai/PopQA"], popqa)
    write_copy(root, "AI-MO/NuminaMath-CoT", COMMIT["AI-MO/NuminaMath-CoT"], NUMINA)
    write_copy(root, "openai/gsm8k", COMMIT["openai/gsm8k"], GSM8K)
    write_copy(root, "Salesforce/wikitext", COMMIT["Salesforce/wikitext"], [{"text": t} for t in WIKI_LINES])
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_all(tmp_path_factory.mktemp("datasets"))


def jsonl_sha256(objs: list[dict[str, Any]]) -> str:
    return hashlib.sha256(b"".join(json.dumps(o, ensure_ascii=False, sort_keys=True).encode() + b"\n"
                                   for o in objs)).hexdigest()


EXPECTED = {  # the rows each set must hold, as the JSONL a user would write
    "forget": [{"text": "George Rankin's occupation is politician."}, {"text": "Cardiff's capital of is Wales."},
               {"text": "Nobody's genre is jazz."}],
    "popqa": [{"question": "What is George Rankin's occupation?",
               "answers": ["politician", "political leader", "political figure"]},
              {"question": "What is Cardiff the capital of?", "answers": ["Wales", "Cymru"]}],
    "retain": [{"messages": [{"role": "user", "content": "Find x if x + 2 = 5."},
                             {"role": "assistant", "content": "x = 5 - 2 = \\boxed{3}."}]}],
    "gsm8k": [{"question": GSM8K[0]["question"], "answers": ["7"]}, {"question": GSM8K[1]["question"], "answers": ["2000"]}],
    "wikitext": [{"text": a} for a in WIKI_ARTICLES],
}
SOURCE = {"forget": ("akariasai/PopQA", None), "popqa": ("akariasai/PopQA", None),
          "retain": ("AI-MO/NuminaMath-CoT", None), "gsm8k": ("openai/gsm8k", "main"),
          "wikitext": ("Salesforce/wikitext", "wikitext-2-raw-v1")}


def test_a_local_copy_gives_the_sets_the_card_names(data_dir: Path) -> None:
    from bake.eval.suite import build_suite

    texts, qas = build_suite("seed", data_dir, None)
    sets = {s.name: s for s in (*texts, *qas)}
    assert [s.name for s in texts] == ["forget", "retain", "wikitext"] and [s.name for s in qas] == ["popqa", "gsm8k"]
    for name, rows in EXPECTED.items():
        d = sets[name].describe()
        repo, config = SOURCE[name]
        assert d["sha256"] == jsonl_sha256(rows) and d["rows"] == len(rows), name
        assert d["dataset"] == {"id": repo, "split": "test", "revision": COMMIT[repo]} | (
            {"config": config} if config else {}), name
        assert list(d["built"]["files"]) == [FILES[repo]] and d["built"]["indices"] is None and d["built"]["seed"] is None
    assert sets["popqa"].describe()["built"]["dropped"] == 1  # the row whose only alias is blank
    assert sets["gsm8k"].describe()["scoring"] == "final_number" and sets["gsm8k"].describe()["max_new_tokens"] == 256
    assert sets["popqa"].describe()["scoring"] == "aliases"
    assert sets["wikitext"].describe()["built"]["source_rows"] == 2  # articles, not lines


def test_a_limit_takes_the_rows_of_a_stated_seed(tmp_path: Path) -> None:
    """--limit N keeps the N rows whose sha256("0:<index>") is smallest (recomputed here), in split order, skipping
    rows that make none; a larger N keeps the smaller one's rows."""
    from bake.eval.suite import build_suite

    people = [dict(POPQA[0], subj=f"Person {i}", question=f"What is Person {i}'s occupation?") for i in range(40)]
    people[7]["possible_answers"] = "[]"
    root = write_all(tmp_path / "d", popqa=people)
    chosen = {}
    for limit in (5, 12):
        texts, qas = build_suite("seed", root, limit)
        popqa = next(s for s in qas if s.name == "popqa")
        order = sorted(range(40), key=lambda i: hashlib.sha256(f"0:{i}".encode()).hexdigest())
        want = sorted([i for i in order if i != 7][:limit])  # row 7 has no usable alias: skipped, the next taken
        built = popqa.describe()["built"]
        assert list(built["indices"]) == want and built["seed"] == 0 and built["source_rows"] == 40
        assert built["dropped"] == int(order.index(7) < limit)  # reached only when 7 comes before the N-th
        assert [r.question for r in popqa.rows] == [f"What is Person {i}'s occupation?" for i in want]
        forget = next(s for s in texts if s.name == "forget")  # every fact makes a sentence: row 7 may be taken
        assert [r.text for r in forget.rows] == [f"Person {i}'s occupation is politician." for i in sorted(order[:limit])]
        assert next(s for s in texts if s.name == "retain").describe()["built"]["indices"] is None  # 1 row < limit
        chosen[limit] = set(want)
    assert chosen[5] < chosen[12]


def test_the_hub_cache_is_read_offline_and_names_its_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --data-dir the files come from huggingface_hub's cache (HF_HUB_OFFLINE=1: no request); the snapshot's
    folder is the revision recorded."""
    import shutil

    import huggingface_hub.constants as hub_constants

    copies = write_all(tmp_path / "copies")
    cache = tmp_path / "hub"
    for repo, commit in COMMIT.items():
        folder = cache / f"datasets--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text(commit)
        target = folder / "snapshots" / commit / FILES[repo]
        target.parent.mkdir(parents=True)
        shutil.copy(copies / repo / FILES[repo], target)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    from bake.eval.suite import build_suite

    texts, qas = build_suite("seed", None, None)
    for s in (*texts, *qas):
        repo = SOURCE[s.name][0]
        assert s.describe()["dataset"]["revision"] == COMMIT[repo] and s.describe()["sha256"] == jsonl_sha256(
            EXPECTED[s.name])
    shutil.rmtree(cache / "datasets--openai--gsm8k")
    with pytest.raises(Exception) as e:
        build_suite("seed", None, None)
    assert "openai/gsm8k (dataset) cannot be read from the Hub or its cache" in str(e.value)
    assert "hf download openai/gsm8k --repo-type dataset --local-dir DIR/openai/gsm8k" in str(e.value)


def test_final_number_scoring_reads_the_last_number() -> None:
    cases = [("1,000 * 2 = 2,000. The answer is 2000.", "2000", (1, 1)),  # the last number, commas dropped
             ("She had 2000 eggs, then sold 5.", "2000", (0, 1)),  # 2000 is in it, but the last number is 5
             ("The answer is 7.0", "7", (1, 1)),  # the same value
             ("-3 degrees, so 12", "-3", (0, 1)),
             ("no number at all", "7", (0, 0))]
    for answer, reference, want in cases:
        tally = QATally(scoring="final_number")
        tally.add(answer, (reference,))
        assert (tally.exact, tally.contains) == want, answer
    aliases = QATally()
    aliases.add("2,000", ("2000",))  # SQuAD normalization drops the comma too: the alias scoring still matches
    assert aliases.exact == 1


def test_eval_and_bake_score_the_suite_and_the_card_names_the_datasets(
        tiny_base: Path, tiny_gates: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """bake --eval-suite scores every suite set on the checkpoint against the base; eval.json keeps each set's dataset,
    commit, choice and hash; the card's model-index names each result by its Hub id, config, split and commit (as
    huggingface_hub parses it)."""
    from huggingface_hub import ModelCard

    out = tmp_path / "b"
    assert main(["bake", "--base", str(tiny_base), "--gates", str(tiny_gates), "--variant", "chat_energy_optA",
                 "--preset", "3", "--out", str(out), "--eval-suite", "seed", "--eval-data-dir", str(data_dir),
                 "--eval-limit", "1", "--quiet"]) == 0
    saved = json.loads((out / "eval.json").read_text())
    assert list(saved["sets"]) == ["forget", "retain", "wikitext", "popqa", "gsm8k"]
    assert all(s["rows"] == 1 for s in saved["sets"].values())
    assert [n for n, s in saved["sets"].items() if s["built"]["seed"] == 0] == ["forget", "wikitext", "popqa", "gsm8k"]
    figures = saved["results"][0]["sets"]
    assert {"nll", "delta_nll", "mean_kl"} <= set(figures["forget"]) and "exact_match" in figures["gsm8k"]
    assert saved["reference"]["sets"]["wikitext"]["truncated"] == 0
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(["push", str(out), "--repo-id", "me/b", "--dry-run", "--json", "--quiet"]) == 0
    card = ModelCard(json.loads(capsys.readouterr().out)["card"])
    results = {(r.dataset_name, r.metric_type): r for r in card.data.eval_results}
    gsm = results[("gsm8k", "exact_match")]
    assert (gsm.dataset_type, gsm.dataset_config, gsm.dataset_split, gsm.dataset_revision) == (
        "openai/gsm8k", "main", "test", COMMIT["openai/gsm8k"])
    forget = results[("forget", "nll")]
    assert (forget.dataset_type, forget.dataset_revision) == ("akariasai/PopQA", COMMIT["akariasai/PopQA"])
    assert forget.metric_value == pytest.approx(figures["forget"]["nll"])


@pytest.mark.parametrize("args,message", [
    (["--suite", "seed", "--limit", "0"], "--limit 0: give a number of rows per set"),
    (["--data-dir", "."], "--data-dir and --limit apply to --suite"),
    (["--suite", "seed", "--texts", "forget=@RETAIN"], "set names must differ"),
    (["--suite", "seed", "--data-dir", "@EMPTY"], "@EMPTY/akariasai/PopQA does not exist"),
    (["--suite", "seed", "--data-dir", "@NOCOL"], "lack the column(s) question"),
])
def test_bad_suite_input_stops_before_any_model(tiny_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch, args: list[str], message: str) -> None:
    from helpers import write_jsonl

    from bake.eval import evaluate

    retain = write_jsonl(tmp_path / "r.jsonl", [{"text": "one two"}])
    (tmp_path / "empty").mkdir()
    nocol = write_all(tmp_path / "nocol", popqa=[{k: v for k, v in POPQA[0].items() if k != "question"}])
    places = {"@RETAIN": str(retain), "@EMPTY": str(tmp_path / "empty"), "@NOCOL": str(nocol)}
    args = [a.replace(k, v) for a in args for k, v in [next(((k, v) for k, v in places.items() if k in a), ("", ""))]]
    monkeypatch.setattr(evaluate, "open_model", lambda *a, **k: pytest.fail("a model was opened"))
    assert main(["eval", "--base", str(tiny_base), *args]) == 2
    err = capsys.readouterr().err
    assert message.replace("@EMPTY", str(tmp_path / "empty")) in err and "Traceback" not in err


@pytest.mark.parametrize("damage", ["truncated parquet", "bit-flipped parquet", "invalid UTF-8 in the TSV"])
def test_a_damaged_local_copy_is_named_before_any_model(tiny_base: Path, data_dir: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    import shutil

    from bake.eval import evaluate

    copy = tmp_path / "datasets"
    shutil.copytree(data_dir, copy)
    repo = "akariasai/PopQA" if "TSV" in damage else "openai/gsm8k"
    path = copy / repo / FILES[repo]
    raw = bytearray(path.read_bytes())
    if damage == "truncated parquet":
        raw = raw[: len(raw) // 2]
    elif damage == "bit-flipped parquet":
        raw[-12:-8] = b"\xff\xff\xff\x7f"  # the footer's length: past the start of the file
    else:
        raw += b"1\tx\t\xed\xa0\x80\xff\n"  # a lone surrogate's bytes and a stray byte
    path.write_bytes(bytes(raw))
    monkeypatch.setattr(evaluate, "open_model", lambda *a, **k: pytest.fail("a model was opened"))
    assert main(["eval", "--base", str(tiny_base), "--suite", "seed", "--data-dir", str(copy)]) == 2
    err = capsys.readouterr().err
    assert f"{path} cannot be read as {repo}'s" in err and "hf download" in err and "Traceback" not in err
