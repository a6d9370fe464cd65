"""The embedded default job: `lambda-bake demo` bakes the built-in model offline and every bake matches."""

from __future__ import annotations

import json

import pytest

from bake.cli import main


def test_demo_runs_offline_and_every_bake_matches(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--json", "--quiet"])
    out = capsys.readouterr().out
    report = json.loads(out)
    assert code == 0 and report["ok"]
    assert len(report["rows"]) == 10 and {r["layout"] for r in report["rows"]} == {"dense", "pruned"}
    assert all(r["max_rel_diff"] <= 1e-4 and r["top1_agreement"] == 1.0 for r in report["rows"])
    assert [r["preset"] for r in report["rows"]] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
