"""Each command loads only what it needs: run in a fresh interpreter, then read its sys.modules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from bake.demo.assets import write_gate_folder

REPO = Path(__file__).resolve().parents[2]
HUB = {"huggingface_hub", "httpx", "httpx2", "requests", "bake.hub.download", "bake.hub.push", "bake.hub.hub_errors"}
HEAVY = {"torch", "transformers", "onnx", "onnxruntime", "safetensors"}
RUN = """
import json, sys
from bake.cli import main
code = main(sys.argv[2:])
json.dump({"code": code, "modules": sorted(sys.modules)}, open(sys.argv[1], "w"))
"""


def modules_after(args: list[str], tmp_path: Path) -> set[str]:
    """The modules a fresh interpreter holds after running ``lambda-bake ARGS`` (which must succeed)."""
    report = tmp_path / "modules.json"
    proc = subprocess.run([sys.executable, "-c", RUN, str(report), *args], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(report.read_text())
    assert result["code"] == 0, proc.stderr
    return set(result["modules"])


def bake(base: Path, gates: Path, out: Path, *extra: str) -> list[str]:
    return ["bake", "--base", str(base), "--gates", str(gates), "--out", str(out), "--quiet", *extra]


def test_bake_imports_no_torch_transformers_onnx_or_hub(tiny_base: Path, tiny_gates: Path, tmp_path: Path) -> None:
    loaded = modules_after(bake(tiny_base, tiny_gates / "chat_mean", tmp_path / "o", "--preset", "2"), tmp_path)
    assert not loaded & (HEAVY | HUB)
    assert {"numpy", "bake.write.pipeline", "bake.gates.pt_reader"} <= loaded


def test_a_sweep_imports_no_more(tiny_base: Path, tiny_gates: Path, tmp_path: Path) -> None:
    loaded = modules_after(bake(tiny_base, tiny_gates, tmp_path / "o", "--variant", "all", "--preset", "all",
                                "--layout", "pruned", "--json"), tmp_path)
    assert not loaded & (HEAVY | HUB | {"matplotlib"})  # matplotlib only for --plot
    assert len(list((tmp_path / "o").iterdir())) == 20


def test_only_a_legacy_gate_file_needs_torch(tiny_base: Path, tiny_gates: Path, tmp_path: Path) -> None:
    logits = torch.load(tiny_gates / "chat_mean" / "lambda_logits.pt", weights_only=True).reshape(4, 128)
    folder = write_gate_folder(tmp_path / "chat_mean", logits, scale_mode="mean")
    torch.save(logits, folder / "lambda_logits.pt", _use_new_zipfile_serialization=False)
    loaded = modules_after(bake(tiny_base, folder, tmp_path / "o", "--threshold", "0.5"), tmp_path)
    assert "torch" in loaded and not loaded & ({"transformers", "onnx", "onnxruntime"} | HUB)


def test_inspect_imports_no_torch_or_hub(tiny_base: Path, tiny_gates: Path, tmp_path: Path) -> None:
    loaded = modules_after(["inspect", "--gates", str(tiny_gates), "--base", str(tiny_base), "--json"], tmp_path)
    assert not loaded & (HEAVY | HUB)


def test_generate_imports_no_hub_transformers_or_torch(tiny_base: Path, tiny_gates: Path, tmp_path: Path) -> None:
    from bake.cli import main

    assert main(bake(tiny_base, tiny_gates / "chat_mean", tmp_path / "b", "--preset", "3", "--onnx")) == 0
    loaded = modules_after(["generate", "--onnx", str(tmp_path / "b" / "onnx"), "--prompt", "What is 2+2?",
                            "--max-new-tokens", "4"], tmp_path)
    assert not loaded & ({"torch", "transformers", "onnx"} | HUB)
    assert {"onnxruntime", "tokenizers"} <= loaded


def test_verify_imports_the_hub_only_through_transformers(tiny_base: Path, tiny_gates: Path, tmp_path: Path) -> None:
    """transformers 5 imports huggingface_hub and its HTTP client on import, and verify needs transformers;
    lambda-bake's own Hub module (and so any Hub call of ours) stays unloaded for local folders."""
    from bake.cli import main

    assert main(bake(tiny_base, tiny_gates / "chat_mean", tmp_path / "b", "--preset", "3")) == 0
    loaded = modules_after(["verify", "--baked", str(tmp_path / "b"), "--greedy-tokens", "2", "--json"], tmp_path)
    assert not loaded & {"bake.hub.download", "bake.hub.push"} and "transformers" in loaded
