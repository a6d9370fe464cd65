"""The demo's deployment leg: one bake exported for every runtime lambda-bake targets, verified, then run.

The most pruned preset is baked in the ragged layout with the steps ``bake --onnx --gguf --verify`` takes: an
ONNX export (CPU graph, float32, ragged widths) and a GGUF (f32, ragged widths: arch ``openelm``) are written
into the checkpoint's temporary folder, all three are verified against the hooked model (weights, then logits
and greedy tokens), and only then is the folder moved into place. Each export then generates a short chat
reply in its runtime (onnxruntime-genai, or lambda-bake's ONNX Runtime loop; llama.cpp). An export whose
packages are not installed is skipped and the install command named; without llama.cpp (llama-cpp-python, which
compiles llama.cpp from source: the ``demo`` extra leaves it out so that the first command is quick) the GGUF is
still written and its weights proven, and one line says how to add llama.cpp to run it.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bake.errors import VerificationFailed
from bake.fold.plan import BakeOptions
from bake.gates.gate_math import GateSettings
from bake.gates.variant import GateVariant
from bake.verify.verifier import VerifyOptions
from bake.write.pipeline import bake_checkpoint

DEPLOY_PROMPT = [{"role": "user", "content": "Explain in one sentence why the sky is blue."}]
DEPLOY_TOKENS = 16
ONNX_OPTIONS = {"target": "cpu", "dtype": "float32", "layout": "ragged", "quantize": "none", "cuda_graph": False}
GGUF_OPTIONS = {"gguf_type_name": "f32", "layout": "ragged"}


def missing_runtimes() -> dict[str, str]:
    """Per export the demo would make ("onnx", "gguf"), the install command when its packages are missing."""
    from export.install import CPU_INSTALL, GGUF_INSTALL

    need = {"onnx": (("onnxruntime", "onnx"), CPU_INSTALL), "gguf": (("gguf",), GGUF_INSTALL)}
    return {kind: hint for kind, (modules, hint) in need.items()
            if any(importlib.util.find_spec(m) is None for m in modules)}


def llama_cpp_missing() -> str | None:
    """Why the GGUF is not run here (llama-cpp-python missing), with how to add it and what it costs; else None."""
    from export.install import LLAMA_CPP_INSTALL

    return None if importlib.util.find_spec("llama_cpp") is not None else LLAMA_CPP_INSTALL


def deploy(base: Path, variant: GateVariant, settings: GateSettings, out: Path, pad_multiple: int,
           greedy_tokens: int, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Bake, export, verify and run one cut; the report says what each export did, or why it was skipped."""
    skipped = missing_runtimes()
    exports = [kind for kind in ("onnx", "gguf") if kind not in skipped]
    gguf_file = None
    if "gguf" in exports:
        from export.gguf.writer import default_file_name

        gguf_file = default_file_name(GGUF_OPTIONS["layout"], GGUF_OPTIONS["gguf_type_name"])

    def add_exports(folder: Path) -> list[str]:
        files = []
        if "onnx" in exports:
            from export.onnx.exporter import export_into

            _say(log, "  exporting ONNX (CPU graph, float32, ragged widths) ...")
            files += [f"onnx/{name}" for name in export_into(folder, **ONNX_OPTIONS, progress=False)["files"]]
        if gguf_file:
            from export.gguf.writer import export_gguf

            _say(log, "  exporting GGUF (f32, ragged widths: arch openelm) ...")
            report = export_gguf(folder, folder / gguf_file, **GGUF_OPTIONS, progress=False)
            files += [gguf_file, Path(report["modelfile"]).name]
        return files

    def check(folder: Path) -> dict[str, Any]:
        from bake.verify.candidates import gguf_candidate, onnx_candidate, torch_candidate
        from bake.verify.verifier import spec_from_manifest, verify
        from bake.write.manifest import read_manifest

        _say(log, "  verifying the checkpoint and its exports against the hooked model ...")
        candidates = [torch_candidate(folder)]
        candidates += [onnx_candidate(folder / "onnx", device="cpu")] if "onnx" in exports else []
        candidates += [gguf_candidate(folder / gguf_file)] if gguf_file else []
        return verify(spec_from_manifest(read_manifest(folder)), candidates,
                      VerifyOptions(greedy_tokens=greedy_tokens), bake=folder)

    options = BakeOptions(layout="ragged", pad_multiple=pad_multiple, progress=False, overwrite=True)
    try:
        manifest = bake_checkpoint(base, variant, settings, out, options, check=check, extras=add_exports)
    except VerificationFailed as e:
        return {"folder": None, "passed": False, "verification": e.report, "runs": [], "skipped": skipped,
                "not_run": {}}
    runs = [run_onnx(out / "onnx")] if "onnx" in exports else []
    not_run = {"gguf": llama_cpp_missing()} if gguf_file and llama_cpp_missing() else {}
    runs += [run_gguf(out / gguf_file)] if gguf_file and not not_run else []
    if len(runs) > 1:
        first = runs[0]["reply_ids"]
        for r in runs:
            r["same_reply_as"] = {runs[0]["runtime"]: r["reply_ids"] == first}
    return {"folder": str(out), "passed": manifest["verification"]["passed"], "verification": manifest["verification"],
            "runs": runs, "skipped": skipped, "not_run": not_run}


def run_onnx(folder: Path) -> dict[str, Any]:
    """A greedy reply from the ONNX export, in onnxruntime-genai's loop when it is installed, else ours."""
    from export.runtime.chat import ChatTokenizer
    from export.runtime.engines import describe, open_engine

    lm = open_engine(folder, "auto", "cpu", None, False)
    return _reply(describe(lm), str(folder), lm, ChatTokenizer(folder))


def run_gguf(path: Path) -> dict[str, Any]:
    """A greedy reply from the GGUF file, in llama.cpp."""
    from export.runtime.llama_loop import GgufChat, LlamaCppLM

    lm = LlamaCppLM(path, n_ctx=512)
    return _reply("llama.cpp (llama-cpp-python) on cpu", str(path), lm, GgufChat(lm))


def _reply(runtime: str, export: str, lm: Any, chat: Any) -> dict[str, Any]:
    from export.runtime.chat import pad_id

    eos = chat.eos_ids()
    prompt = chat.prompt_ids(DEPLOY_PROMPT)
    start = time.perf_counter()
    ids = [int(step[0]) for step in lm.stream([prompt], DEPLOY_TOKENS, eos, pad_id(eos))]
    seconds = time.perf_counter() - start
    text = "".join(chat.stream_text(iter(ids), stop=eos))
    return {"runtime": runtime, "export": export, "prompt_tokens": len(prompt), "new_tokens": len(ids),
            "seconds": round(seconds, 4), "tokens_per_s": round(len(ids) / seconds, 1) if seconds > 0 else None,
            "reply_ids": ids, "reply": text}


def format_deployment(report: dict[str, Any]) -> str:
    """The verify table of the checkpoint and its exports, each runtime's reply, and what was skipped."""
    from bake.verify.metrics import CandidateResult, format_table

    lines = [format_table([CandidateResult.from_dict(c) for c in report["verification"]["candidates"]])]
    for r in report["runs"]:
        same = "".join(f"; same tokens as {k}: {'yes' if v else 'NO'}" for k, v in r.get("same_reply_as", {}).items()
                       if k != r["runtime"])
        lines.append(f"ran {Path(r['export']).name} in {r['runtime']}: {r['new_tokens']} new tokens after a "
                     f"{r['prompt_tokens']}-token prompt, {r['tokens_per_s']} tok/s{same} (random weights: the reply "
                     "is noise; --json has it)")
    lines += [f"skipped the {kind.upper()} export: its runtime is not installed ({hint})"
              for kind, hint in report["skipped"].items()]
    lines += [f"the {kind.upper()} was written and its weights proven, but not run: llama.cpp is not installed; to run it "
              f"here: {hint}" for kind, hint in report.get("not_run", {}).items()]
    return "\n".join(lines)


def _say(log: Callable[[str], None] | None, text: str) -> None:
    if log:
        log(text)
