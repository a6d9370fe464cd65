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
    # the most pruned cut takes every deployment path: ONNX and GGUF exports, verified and run in their runtimes
    deployed = report["deployment"]
    assert deployed["passed"] and deployed["skipped"] == {}
    candidates = deployed["verification"]["candidates"]
    assert [c["name"].split(" ")[0] for c in candidates] == ["checkpoint", "onnx", "gguf"]
    assert all(c["passed"] and c["max_rel_diff"] <= 1e-4 for c in candidates)
    assert all(c["weights"]["passed"] for c in candidates[1:])
    onnx, gguf = deployed["runs"]
    assert "onnxruntime-genai" in onnx["runtime"] and "llama.cpp" in gguf["runtime"]
    assert onnx["new_tokens"] == gguf["new_tokens"] > 0 and gguf["reply_ids"] == onnx["reply_ids"]


def test_demo_names_the_exports_it_skips_without_their_runtimes(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import bake.demo.deploy as deploy
    from export.install import CPU_INSTALL, GGUF_INSTALL

    monkeypatch.setattr(deploy.importlib.util, "find_spec", lambda name: None if name in ("onnx", "llama_cpp")
                        else object())
    assert main(["demo", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"skipped the ONNX export: its runtime is not installed ({CPU_INSTALL})" in out
    assert f"skipped the GGUF export: its runtime is not installed ({GGUF_INSTALL})" in out
    assert "checkpoint (pruned)" in out and "gguf (" not in out and "ran " not in out
