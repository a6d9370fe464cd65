"""Which ONNX Runtime is installed, which devices it serves, and what to do when it is missing or the wrong mix.

The CPU and CUDA builds (onnxruntime + onnxruntime-genai, onnxruntime-gpu + onnxruntime-genai-cuda)
install the same Python packages: with both present, whichever pip wrote last wins, and a GPU
machine typically ends up with the CPU build's files and no CUDA provider. So lambda-bake ships them
as two extras, ``[cpu]`` and ``[gpu]``, and names the fix when it finds the mix.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

from bake.errors import ExportError

CPU_INSTALL = 'pip install "lambda-bake[cpu]"'
GGUF_INSTALL = 'pip install "lambda-bake[gguf]"'
GPU_INSTALL = 'pip install "lambda-bake[gpu]"'
MLX_INSTALL = 'pip install "lambda-bake[mlx]" (mlx and mlx-lm; mlx[cpu] on Linux)'
# llama-cpp-python ships as a source distribution: pip compiles llama.cpp (measured: docs/BENCHMARKS.md)
LLAMA_CPP_INSTALL = ('CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install "llama-cpp-python>=0.3.36" (compiles llama.cpp from '
                     'source: about 13 minutes on 2 cores, once; pip caches the wheel)')
GPU_REPAIR = ('pip uninstall -y onnxruntime onnxruntime-genai onnxruntime-gpu onnxruntime-genai-cuda && '
              + GPU_INSTALL)


def cpu_threads() -> int:
    """The CPUs this process may run on (the thread count every runtime is given by default)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def require_onnxruntime() -> None:
    """Refuse, naming the extra to install, when no ONNX Runtime is importable."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise ExportError(f"ONNX Runtime is not installed; {CPU_INSTALL} (CPU) or {GPU_INSTALL} (NVIDIA GPU)")


def require_gguf() -> None:
    """Refuse, naming the extra, when gguf-py (llama.cpp's Python writer and reader) is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise ExportError(f"writing or reading GGUF needs the gguf package (llama.cpp's gguf-py); {GGUF_INSTALL}")


def require_llama_cpp() -> None:
    """Refuse, naming the extra, when llama-cpp-python (which runs GGUF files) is missing."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise ExportError(f"running a GGUF needs llama.cpp's Python binding, llama-cpp-python: {LLAMA_CPP_INSTALL}, or "
                          f"{GGUF_INSTALL}; docs/GGUF.md says how on CPUs without AVX-512")


def require_mlx() -> None:
    """Refuse, naming the extra, when mlx or mlx-lm (which write and run the MLX export) is missing."""
    missing = [m for m in ("mlx", "mlx_lm") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"the MLX export needs {' and '.join(missing)}: {MLX_INSTALL}")


def mixed_install_hint() -> str:
    """A sentence naming the repair when both the CPU and the GPU build are installed, else ''."""
    pairs = (("onnxruntime", "onnxruntime-gpu"), ("onnxruntime-genai", "onnxruntime-genai-cuda"))
    clashes = [f"{cpu} and {gpu}" for cpu, gpu in pairs if _installed(cpu) and _installed(gpu)]
    if not clashes:
        return ""
    return (f" Both {' and '.join(clashes)} are installed: they share one Python package and the CPU build's "
            f"files won; repair with: {GPU_REPAIR}")


def pick_device(device: str) -> str:
    """'auto' -> 'cuda' when onnxruntime has the CUDA provider, else 'cpu'; 'cuda' must be available."""
    import onnxruntime

    has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    if device == "cuda" and not has_cuda:
        raise ExportError(f"--device cuda: this onnxruntime has no CUDAExecutionProvider; {GPU_INSTALL} or use "
                          f"--device cpu.{mixed_install_hint()}")
    if device not in ("cpu", "cuda"):
        raise ExportError(f"unknown device {device!r}; choose auto, cpu or cuda")
    return device


def providers_for(device: str) -> list[str]:
    """ONNX Runtime execution providers for 'cpu' or 'cuda' (CPU as the fallback)."""
    return (["CUDAExecutionProvider"] if device == "cuda" else []) + ["CPUExecutionProvider"]
