"""EleutherAI's lm-evaluation-harness on the same models, with task YAMLs of your own (``--lm-eval-include``),
offline wherever their data is local; an optional extra (``pip install "lambda-bake[eval]"``).

- checkpoints, the hooked model and the base: lm-eval's ``HFLM`` on the loaded transformers model (the hooked
  model keeps its gate hooks, so it is evaluated as published);
- ONNX exports: lm-eval's ``onnxruntime-genai`` backend on the export, its graph with logits at every position
  (``export.onnx.variants.all_logits_folder``: log-likelihood tasks read every position of one pass);
- a GGUF or an MLX folder is refused: lm-eval's ``gguf`` backend talks to a running llama.cpp server, and mlx-lm
  has its own ``mlx_lm.evaluate``;
- many checkpoints on many GPUs: ``vllm_model_args`` builds the arguments of lm-eval's vLLM backend
  (``data_parallel_size`` spreads a model over GPUs through Ray), rather than a scheduler of our own.
"""

from __future__ import annotations

import importlib.util
import math
import tempfile
from pathlib import Path
from typing import Any

from bake.errors import BakeError
from bake.eval.models import ModelSpec

EVAL_INSTALL = 'pip install "lambda-bake[eval]"'


def require_lm_eval() -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise BakeError(f"--lm-eval needs EleutherAI's lm-evaluation-harness; {EVAL_INSTALL}")


VLLM_KINDS = ("checkpoint", "base")  # Hugging Face folders vLLM loads as they are (a ragged bake: with the plugin)


def check_lm_eval(specs: list[ModelSpec], tasks_arg: str, include: Path | None, limit: float | None, backend: str,
                  data_parallel: int) -> list[str]:
    """Everything --lm-eval needs, before any model runs: the tasks (named, known to lm-eval with ``include``), the
    limit, the package, and a backend that takes every model (the reference row included); the task list."""
    tasks = [t.strip() for t in tasks_arg.split(",") if t.strip()]
    if not tasks:
        raise BakeError(f"--lm-eval {tasks_arg!r} names no task; give comma-separated lm-eval task names")
    if limit is not None and not limit > 0:
        raise BakeError(f"--lm-eval-limit {limit:g}: give a number of examples per task (>= 1) or a fraction of them "
                        "(between 0 and 1)")
    if data_parallel < 1:
        raise BakeError(f"--data-parallel {data_parallel}: give at least 1")
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    known = set(TaskManager(include_path=str(include) if include else None).all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        import difflib

        near = {t: difflib.get_close_matches(t, sorted(known), n=3) for t in unknown}
        hints = "; ".join(f"{t!r}" + (f" (did you mean {', '.join(near[t])}?)" if near[t] else "") for t in unknown)
        raise BakeError(f"--lm-eval: lm-eval knows no task {hints}; list them with `lm-eval ls tasks`, or give the "
                        "folder of your task YAMLs with --lm-eval-include")
    for spec in specs:
        if backend == "vllm" and spec.kind not in VLLM_KINDS:
            raise BakeError(f"--lm-eval-backend vllm runs Hugging Face checkpoints; {spec.label} is a {spec.kind}: "
                            "evaluate it with --lm-eval-backend auto, or leave it out")
        if backend != "vllm" and spec.kind in ("gguf", "mlx"):
            raise BakeError(f"--lm-eval: {spec.label} is {'a GGUF' if spec.kind == 'gguf' else 'an MLX folder'}, which "
                            "lambda-bake does not run under lm-eval (lm-eval's gguf backend needs a running llama.cpp "
                            "server; mlx-lm has its own `mlx_lm.evaluate`): evaluate its checkpoint or ONNX export")
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise BakeError("--lm-eval-backend vllm needs vLLM (pip install \"lambda-bake[vllm]\" on a GPU machine); the "
                        f"arguments it would get: {vllm_model_args(specs[0].path, data_parallel) if specs else {}}")
    return tasks


def vllm_model_args(folder: Path, data_parallel: int = 1, tensor_parallel: int = 1, dtype: str = "auto",
                    max_length: int | None = None) -> dict[str, Any]:
    """lm-eval's vLLM ``model_args`` for a baked checkpoint folder (a plain Qwen3 checkpoint: vLLM loads it as is)."""
    if data_parallel < 1 or tensor_parallel < 1:
        raise BakeError("--data-parallel and --tensor-parallel must be at least 1")
    args: dict[str, Any] = {"pretrained": str(Path(folder).absolute()), "tensor_parallel_size": tensor_parallel,
                            "data_parallel_size": data_parallel, "dtype": dtype, "gpu_memory_utilization": 0.9,
                            "trust_remote_code": False}
    if max_length is not None:
        args["max_model_len"] = max_length
    return args


def run_lm_eval(spec: ModelSpec, tasks: list[str], include: Path | None = None, limit: float | None = None,
                backend: str = "auto", data_parallel: int = 1, device: str = "cpu",
                max_length: int = 1024) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` on one model; its per-task metrics (numbers only) and the lm-eval version."""
    require_lm_eval()
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include) if include else None)
    common = {"tasks": tasks, "task_manager": manager, "limit": limit, "log_samples": False}
    if backend == "vllm":
        if spec.kind not in VLLM_KINDS:
            raise BakeError(f"--lm-eval-backend vllm runs Hugging Face checkpoints; {spec.label} is a {spec.kind}")
        if importlib.util.find_spec("vllm") is None:
            raise BakeError("--lm-eval-backend vllm needs vLLM on a GPU machine (pip install vllm); the arguments it "
                            f"would get: {vllm_model_args(spec.path, data_parallel, max_length=max_length)}")
        results = lm_eval.simple_evaluate(model="vllm", model_args=vllm_model_args(spec.path, data_parallel,
                                                                                  max_length=max_length), **common)
    elif spec.kind in ("checkpoint", "hooked", "base"):
        from lm_eval.models.huggingface import HFLM
        from transformers import AutoTokenizer

        from bake.eval.runtimes import TorchEval

        model = TorchEval(spec).model
        lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(str(spec.path)), batch_size=1,
                  max_length=max_length, device=device)
        results = lm_eval.simple_evaluate(model=lm, **common)
    elif spec.kind == "onnx":
        from export.onnx.variants import all_logits_folder

        with tempfile.TemporaryDirectory(prefix="lambda-bake-lm-eval-") as tmp:
            folder = all_logits_folder(spec.path, Path(tmp) / "onnx")
            results = lm_eval.simple_evaluate(
                model="onnxruntime-genai", model_args={"pretrained": str(folder), "execution_provider": device,
                                                       "max_length": max_length}, **common)
    else:
        raise BakeError(f"--lm-eval: {spec.label} is a {spec.kind}, which lambda-bake does not run under lm-eval "
                        "(lm-eval's gguf backend needs a running llama.cpp server; mlx-lm has its own "
                        "`mlx_lm.evaluate`): evaluate its checkpoint or ONNX export instead")
    return {"lm_eval_version": getattr(lm_eval, "__version__", None),
            "tasks": {task: {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                             and math.isfinite(v)}
                      for task, metrics in (results or {}).get("results", {}).items()}}
