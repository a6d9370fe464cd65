"""Missing or mixed ONNX Runtime installs are named with their fix, not a traceback."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from bake.cli import main
from bake.errors import ExportError
from export import install


def test_missing_onnxruntime_names_both_extras(tiny_base: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ExportError, match=r'lambda-bake\[cpu\]".*lambda-bake\[gpu\]'):
        install.require_onnxruntime()
    assert main(["export", "--model", str(tiny_base), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "ONNX Runtime is not installed" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cpu_and_gpu_builds_together_are_named_with_the_repair(monkeypatch) -> None:
    assert install.mixed_install_hint() == ""  # this machine: the CPU build only
    monkeypatch.setattr(install, "_installed", lambda dist: True)
    hint = install.mixed_install_hint()
    assert "onnxruntime and onnxruntime-gpu and onnxruntime-genai and onnxruntime-genai-cuda" in hint
    assert hint.endswith(install.GPU_REPAIR)
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ExportError, match="no CUDAExecutionProvider.*repair with: pip uninstall -y onnxruntime"):
        install.pick_device("cuda")


def test_base_install_carries_no_onnxruntime_and_the_extras_never_mix() -> None:
    """pyproject: the CPU and GPU builds are two extras; the base and the other extras (GGUF: gguf-py and llama.cpp) pull
    in neither."""
    import tomllib

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    names = lambda reqs: {r.split(">")[0].split("=")[0].split("[")[0].strip() for r in reqs}  # noqa: E731
    extras = project["optional-dependencies"]
    runtimes = {"onnxruntime", "onnxruntime-genai", "onnxruntime-gpu", "onnxruntime-genai-cuda"}
    assert not names(project["dependencies"]) & runtimes
    assert names(extras["cpu"]) == {"onnxruntime", "onnxruntime-genai"}
    assert names(extras["gpu"]) == {"onnxruntime-gpu", "onnxruntime-genai-cuda"}
    assert names(extras["gguf"]) == {"gguf", "llama-cpp-python"}
    assert names(extras["eval"]) == {"lm-eval", "accelerate", "datasets"}  # lm-eval's onnxruntime-genai backend uses [cpu]'s
    assert {"mlx", "mlx-lm"} <= names(extras["mlx"]) and not names(extras["mlx"]) & runtimes
    assert "lambda-bake[cpu,plot,gguf,eval,mlx]" in extras["test"] and not names(extras["test"]) & runtimes
