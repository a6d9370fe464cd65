#!/usr/bin/env python3
"""Bytes on disk, resident memory and decode speed of our int4 ONNX exports against onnxruntime-genai's builder.

On the random-weight Qwen3-0.6B shape (``bench_inputs.py``), a bf16 dense bake at --off (default 50 %) off, exported
with ``--target cpu --quantize int4`` dense and ragged, each with the token embedding looked up in the lm_head's
int codes (``--embedding auto``, GatherBlockQuantized on the shared table) and as a float table (``--embedding
float``), and the builder's ``-p int4 -e cpu`` graph of the same bake. Per export:

- the bytes of the model files (``model.onnx`` and ``model.onnx.data``) and of the whole folder (tokenizer, configs);
- resident memory in a fresh process: onnxruntime-genai loads the folder and decodes --steps greedy tokens after a
  16-token prompt (VmRSS then, and the peak VmHWM), --memory-runs times;
- decode tokens/s at batch 1 and 4 under onnxruntime-genai, every export loaded in one process and run in turn,
  the order rotating round by round (paired against the builder's graph in the same round).

    python scripts/bench_export_size.py --workdir /tmp/bench --json docs/bench/bench_export_size.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inputs import cpu_model, ensure_inputs, paired, write_report  # noqa: E402
from bench_onnx import builder_export, load_genai, prompt_ids, time_genai  # noqa: E402

from bake.gates.gate_math import Cut, GateSettings  # noqa: E402
from bake.gates.variant import load_variant  # noqa: E402
from bake.write.pipeline import BakeOptions, bake_checkpoint  # noqa: E402
from export.onnx.exporter import export_onnx  # noqa: E402

_MEMORY_CHILD = """
import json, sys
import numpy as np
from export.runtime.genai_loop import load_model
import onnxruntime_genai as og
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) // 1024
model = load_model(sys.argv[1], "cpu")
loaded = status("VmRSS:")
params = og.GeneratorParams(model)
steps = int(sys.argv[2])
params.set_search_options(max_length=16 + steps, min_length=16 + steps, do_sample=False, batch_size=1)
generator = og.Generator(model, params)
generator.append_tokens(np.arange(1000, 1016, dtype=np.int32)[None])
for _ in range(steps):
    generator.generate_next_token()
print(json.dumps({"rss_after_load_mib": loaded, "rss_after_decode_mib": status("VmRSS:"), "peak_mib": status("VmHWM:")}))
"""


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def memory(folder: Path, steps: int) -> dict[str, int]:
    done = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(folder), str(steps)], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode:
        raise SystemExit(f"memory run failed on {folder}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--shape", default="0.6b")
    p.add_argument("--off", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=8, help="decode steps before the resident memory is read")
    p.add_argument("--memory-runs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    base, gates = ensure_inputs(args.workdir, args.shape)
    config = json.loads((base / "config.json").read_text())
    v = load_variant(gates, num_layers=config["num_hidden_layers"], intermediate_size=config["intermediate_size"])
    bake = args.workdir / f"bake-dense-{args.off:g}"
    if not (bake / "bake_manifest.json").is_file():
        bake_checkpoint(base, v, GateSettings(Cut("off_fraction", args.off), "hard", v.scale_mode or "energy"), bake,
                        BakeOptions(overwrite=True, progress=False))
    folders = {"builder int4 dense": builder_export(bake, args.workdir / "builder-int4-cpu", "int4", "cpu")}
    reports = {}
    for layout in ("as-is", "ragged"):
        for embedding in ("auto", "float"):
            name = f"ours int4 {'dense' if layout == 'as-is' else 'ragged'}, {'shared' if embedding == 'auto' else 'float'} embedding"
            out = args.workdir / f"size-int4-{layout}-{embedding}"
            reports[name] = export_onnx(bake, out, target="cpu", quantize="int4", layout=layout, embedding=embedding,
                                        overwrite=True, progress=False)
            folders[name] = out
    report: dict[str, Any] = {"command": " ".join(sys.argv), "shape": args.shape, "off_fraction": args.off,
                              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "exports": {}}
    report["machine"]["cpu"] = cpu_model()
    import onnxruntime_genai as og

    report["onnxruntime_genai"] = og.__version__
    builder = folders["builder int4 dense"]
    for name, folder in folders.items():
        print(f"memory: {name}", file=sys.stderr)
        runs = [memory(folder, args.steps) for _ in range(args.memory_runs)]
        model = [p for p in folder.iterdir() if p.name.startswith("model.onnx")]  # the graph and its weights
        entry: dict[str, Any] = {"bytes": folder_bytes(folder), "model_bytes": sum(p.stat().st_size for p in model),
                                 "memory_runs": runs,
                                 "rss_after_decode_mib": statistics.median(r["rss_after_decode_mib"] for r in runs),
                                 "peak_mib": statistics.median(r["peak_mib"] for r in runs)}
        if name in reports:
            entry["embedding"] = reports[name]["embedding"]
        entry["bytes_vs_builder"] = round(entry["bytes"] / folder_bytes(builder), 4)
        entry["model_bytes_vs_builder"] = round(entry["model_bytes"] / sum(
            p.stat().st_size for p in builder.iterdir() if p.name.startswith("model.onnx")), 5)
        report["exports"][name] = entry
    models = {name: load_genai(folder, "cpu", False) for name, folder in folders.items()}
    vocab = int(config["vocab_size"])
    tok_s: dict[str, dict[int, list[float]]] = {name: {1: [], 4: []} for name in models}
    for model in models.values():
        time_genai(model, prompt_ids(1, 8, vocab), 2)  # warm-up
    for r in range(args.rounds):
        order = list(models)[r % len(models):] + list(models)[:r % len(models)]
        for batch in (1, 4):
            ids = prompt_ids(batch, args.prompt_len, vocab)
            for name in order:
                print(f"round {r + 1}/{args.rounds}, batch {batch}: {name}", file=sys.stderr)
                tok_s[name][batch].append(time_genai(models[name], ids, args.new_tokens)["decode_tok_s"])
    for name in models:
        for batch in (1, 4):
            report["exports"][name][f"b{batch}_decode_tok_s"] = [round(x, 2) for x in tok_s[name][batch]]
            report["exports"][name][f"b{batch}_vs_builder"] = paired(tok_s[name][batch],
                                                                     tok_s["builder int4 dense"][batch], 3)
    dense = report["exports"]["ours int4 dense, shared embedding"]["bytes"]
    report["ragged_vs_dense_bytes"] = round(dense / report["exports"]["ours int4 ragged, shared embedding"]["bytes"], 3)
    write_report(report, args.json)


if __name__ == "__main__":
    main()
