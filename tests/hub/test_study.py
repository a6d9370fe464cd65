"""A whole study on the Hub in one call: every cut of a sweep to its own repo (one commit each), a Collection in cut
order, cards that link each other with the study's table and figure; planned before anything is sent, resumable,
and nothing half-published without saying so. Against the recording Hub fake (no network)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import pytest
from helpers import write_jsonl
from hub_fakes import FakeHfApi

from bake.cli import main
from bake.hub import study

PREFIX = "me/qwen3-study"
CUTS = [f"chat_energy_optA-p{k}" for k in range(1, 6)]


@pytest.fixture(scope="module")
def sweep(tiny_base: Path, tiny_gates: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five ragged cuts with their ONNX and GGUF exports, each with its eval.json."""
    root = tmp_path_factory.mktemp("study")
    out = root / "sweep"
    assert main(["bake", "--base", str(tiny_base), "--gates", str(tiny_gates), "--variant", "chat_energy_optA",
                 "--preset", "all", "--layout", "ragged", "--pad-multiple", "8", "--onnx", "--gguf", "--gguf-type",
                 "q8_0", "--out", str(out), "--quiet"]) == 0
    texts = write_jsonl(root / "retain.jsonl", [{"text": "What is 2 + 3? It is 5."}, {"text": "One, two, three."}])
    with contextlib.redirect_stdout(io.StringIO()):  # the report is not this test's output
        assert main(["eval", "--model", str(out), "--texts", f"retain={texts}", "--save", "--quiet", "--json"]) == 0
    return out


def copy(sweep: Path, tmp_path: Path) -> Path:
    shutil.copytree(sweep, tmp_path / "sweep")
    return tmp_path / "sweep"


def push(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, api: FakeHfApi, *args: str
         ) -> tuple[int, dict]:
    monkeypatch.setattr(study, "HfApi", lambda: api)
    code = main(["push", *args, "--json", "--quiet"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def test_a_dry_run_plans_every_repo_and_reads_no_weights(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    opened: list[str] = []
    watching = {"on": True}

    def audit(event: str, args: tuple) -> None:
        # weights are never read; a GGUF is opened for its metadata alone (its type and arch, for the card)
        if watching["on"] and event == "open" and isinstance(args[0], str) and args[0].endswith(
                (".safetensors", ".onnx.data")):
            opened.append(args[0])

    sys.addaudithook(audit)
    code = main(["push", str(sweep), "--repo-prefix", PREFIX, "--collection", "Lambda gates study", "--dry-run",
                 "--json", "--quiet"])
    watching["on"] = False
    plan = json.loads(capsys.readouterr().out)
    assert code == 0 and opened == []  # its time: scripts/bench_study_plan.py
    assert [r["repo_id"] for r in plan["repos"]] == [f"{PREFIX}-{c}" for c in CUTS]  # cut order: off-fraction
    assert [r["off_fraction"] for r in plan["repos"]] == sorted(r["off_fraction"] for r in plan["repos"])
    assert plan["collection"] == {"title": "Lambda gates study", "items": [f"{PREFIX}-{c}" for c in CUTS]}
    for repo in plan["repos"]:
        names = {f["path"] for f in repo["files"]}
        assert {"README.md", "model.safetensors", "config.json", "onnx/model.onnx", "model-ragged-Q8_0.gguf",
                "eval.json", "study.png"} <= names
        assert repo["bytes"] == sum(f["bytes"] for f in repo["files"]) and repo["layout"] == "ragged"


def test_a_study_pushes_in_one_commit_per_repo_with_linked_cards_and_a_collection(
        sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import ModelCard

    api = FakeHfApi()
    code, report = push(capsys, monkeypatch, api, str(sweep), "--repo-prefix", PREFIX, "--collection",
                        "Lambda gates study")
    assert code == 0 and report["complete"] and report["skipped"] == [] and report["failed"] == {}
    repos = [f"{PREFIX}-{c}" for c in CUTS]
    assert list(report["pushed"]) == repos
    assert [p["repo_id"] for n, p in api.calls if n == "create_commit"] == repos  # one commit each
    assert api.collections[next(iter(api.collections))]["items"] == repos
    plan = study.plan_study(sweep, PREFIX, "Lambda gates study")
    for member in plan.members:
        held = api.repos[member.repo_id]
        assert sorted(held) == sorted(member.upload.files)  # every file the plan named, nothing else
        card = held["README.md"].decode()
        ModelCard(card)  # parses as the Hub parses it
        others = [r for r in repos if r != member.repo_id]
        assert all(f"(https://huggingface.co/{r})" in card for r in others)
        assert f"**{member.name}** (this repo)" in card and "![trade-off" in card and "retain change in NLL" in card
        for cut in CUTS:  # each cut's row: its own files' bytes and its own eval figure, read here from its folder
            row = next(line for line in card.splitlines() if line.startswith((f"| [{cut}](", f"| **{cut}**")))
            cells = [c.strip() for c in row.strip("|").split("|")]
            folder = sweep / cut
            mb = lambda files: f"{sum(f.stat().st_size for f in files) / 1e6:,.1f} MB"  # noqa: E731
            delta = json.loads((folder / "eval.json").read_text())
            delta = next(r for r in delta["results"] if r["kind"] == "checkpoint")["sets"]["retain"]["delta_nll"]
            assert cells[5:] == [mb(folder.glob("*.safetensors")), mb((folder / "onnx").glob("model.onnx*")),
                                 mb(folder.glob("*.gguf")), "-", f"{delta:+.4f}"], row
        for name, data in held.items():  # nothing machine-local in anything uploaded
            if name.endswith((".json", ".md", ".jinja", ".Modelfile")):
                text = data.decode()
                assert str(sweep) not in text and str(Path.home()) not in text, name


def test_a_rerun_skips_what_is_up_and_finishes_what_broke(sweep: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeHfApi()
    repos = [f"{PREFIX}-{c}" for c in CUTS]
    api.fail_commit_to = repos[2]
    code, report = push(capsys, monkeypatch, api, str(sweep), "--repo-prefix", PREFIX)
    assert code == 2 and not report["complete"]
    assert list(report["pushed"]) == repos[:2] and list(report["failed"]) == [repos[2]]
    assert report["not_attempted"] == repos[3:] and "500 Server Error" in report["failed"][repos[2]]
    api.fail_commit_to = None
    commits = len([c for c in api.calls if c[0] == "create_commit"])
    code, report = push(capsys, monkeypatch, api, str(sweep), "--repo-prefix", PREFIX)
    assert code == 0 and report["skipped"] == repos[:2] and list(report["pushed"]) == repos[2:]
    assert len([c for c in api.calls if c[0] == "create_commit"]) - commits == 3  # the broken one again, then 2
    code, report = push(capsys, monkeypatch, api, str(sweep), "--repo-prefix", PREFIX)
    assert code == 0 and report["skipped"] == repos and report["pushed"] == {}  # all up: nothing sent


@pytest.mark.parametrize("args,message", [
    (["--repo-prefix", "me/bad name"], "does not make Hub repo ids"),
    (["--repo-prefix", "nouser"], "give USER/NAME"),
    (["--repo-prefix", PREFIX, "--collection", "x" * 61], "a title of 1 to 60 characters (this one has 61)"),
    (["--repo-id", "me/one"], "is a sweep's folder"),
    ([], "give --repo-prefix USER/NAME"),
])
def test_bad_input_stops_before_any_upload(sweep: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch, args: list[str], message: str) -> None:
    api = FakeHfApi()
    code, _ = push(capsys, monkeypatch, api, str(sweep), *args)
    assert code == 2 and api.calls == []
    monkeypatch.setattr(study, "HfApi", lambda: api)
    assert main(["push", str(sweep), *args]) == 2 and message in capsys.readouterr().err


def test_a_damaged_member_is_named_before_anything_is_sent(sweep: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    folder = copy(sweep, tmp_path)
    (folder / CUTS[3] / "bake_manifest.json").write_text("{not json")
    api = FakeHfApi()
    monkeypatch.setattr(study, "HfApi", lambda: api)
    assert main(["push", str(folder), "--repo-prefix", PREFIX]) == 2
    err = capsys.readouterr().err
    assert f"{CUTS[3]} (a member of the sweep" in err and "bake_manifest.json" in err and api.calls == []


@pytest.mark.parametrize("suffix", ["README.md", ".safetensors"])
def test_a_same_size_change_on_the_hub_is_pushed_again(sweep: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    """Sizes alone do not prove a repo is up: a file with other bytes of the same length (a card edited on the
    Hub, git-blob id; weights, LFS sha256) makes that repo's commit again, and only that one."""
    api = FakeHfApi()
    assert push(capsys, monkeypatch, api, str(sweep), "--repo-prefix", PREFIX)[0] == 0
    repo = f"{PREFIX}-{CUTS[1]}"
    name = next(n for n in api.repos[repo] if n.endswith(suffix))
    data = bytearray(api.repos[repo][name])
    data[-1] ^= 1
    api.repos[repo][name] = bytes(data)
    code, report = push(capsys, monkeypatch, api, str(sweep), "--repo-prefix", PREFIX)
    assert code == 0 and list(report["pushed"]) == [repo]
    assert report["skipped"] == [f"{PREFIX}-{c}" for c in CUTS if c != CUTS[1]]
