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
    assert len(report["rows"]) == 15 and {r["layout"] for r in report["rows"]} == {"dense", "pruned", "ragged"}
    assert all(r["max_rel_diff"] <= 1e-4 and r["top1_agreement"] == 1.0 for r in report["rows"])
    assert [r["preset"] for r in report["rows"]] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5]
    for dense, pruned, ragged in zip(*[iter(report["rows"])] * 3):  # the ragged checkpoint holds the fewest neurons
        assert dense["mlp_neurons"] >= pruned["mlp_neurons"] >= ragged["mlp_neurons"] < dense["mlp_neurons"]
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
    # what each cut costs, measured on a briefly trained copy: the loss on both text sets rises with the cut
    costs = report["costs"]
    assert list(costs["sets"]) == ["retain", "forget", "sums"] and costs["reference"] == "base (trained)"
    cuts = costs["models"][1:]
    assert [round(m["off_fraction"], 2) for m in cuts] == [0.05, 0.25, 0.5, 0.75, 0.95]
    for name in ("retain", "forget"):
        deltas = [m["sets"][name]["delta_nll"] for m in cuts]
        assert deltas == sorted(deltas) and deltas[0] < 0.1 < 1.0 < deltas[-1], (name, deltas)
        assert costs["models"][0]["sets"][name]["nll"] < 1.0  # trained: the base predicts its own kind of text
    assert all(m["sets"]["sums"]["rows"] == 16 for m in costs["models"])


def test_demo_names_the_exports_it_skips_without_their_runtimes(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import bake.demo.deploy as deploy
    from export.install import CPU_INSTALL, GGUF_INSTALL

    monkeypatch.setattr(deploy.importlib.util, "find_spec", lambda name: None if name in ("onnx", "gguf")
                        else object())
    assert main(["demo", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"skipped the ONNX export: its runtime is not installed ({CPU_INSTALL})" in out
    assert f"skipped the GGUF export: its runtime is not installed ({GGUF_INSTALL})" in out
    assert "checkpoint (ragged)" in out and "gguf (" not in out and "ran " not in out


def test_demo_without_llama_cpp_writes_and_proves_the_gguf_and_says_how_to_run_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo extra leaves llama-cpp-python out (it compiles llama.cpp for 13 minutes): the GGUF is still written
    and its weights proven, its logits and reply are not, and one line says how to add llama.cpp and what it costs."""
    import importlib.util

    from export.install import LLAMA_CPP_INSTALL

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    assert main(["demo", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    deployed = report["deployment"]
    checkpoint, onnx, gguf = deployed["verification"]["candidates"]
    assert gguf["passed"] and gguf["weights"]["passed"] and gguf["mean_kl"] is None
    assert "llama.cpp (llama-cpp-python) is not installed" in gguf["note"]
    assert [r["runtime"].split(" ")[0] for r in deployed["runs"]] == ["onnxruntime-genai"]
    assert deployed["not_run"] == {"gguf": LLAMA_CPP_INSTALL} and "13 minutes" in LLAMA_CPP_INSTALL
