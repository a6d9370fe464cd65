"""GGUF benchmarks at the Qwen3-0.6B shape (random weights, bf16), 50 % off with the demo's chat_energy gates.

1. Export cost: ``lambda-bake export --format gguf --gguf-type f16`` against llama.cpp's own
   ``convert_hf_to_gguf.py --outtype f16`` on the same dense checkpoint, in paired runs (alternating which goes
   first, outputs removed and the disk synced before each): wall time and each process's own peak RSS
   (``os.wait4``). Target (issue 20): <= 1.5x the time and <= 1.2x the peak memory of the converter.
2. llama.cpp decode, batch 1, in this one process (llama-cpp-python): per type (f32, q8_0, q4_0 and the
   K-quants asked for), the dense bake as-is, the pruned bake as-is (padded to one width) and the ragged file
   (each layer its own width, arch openelm); each round evaluates a ``--context``-token prompt, then times
   ``--new-tokens`` greedy steps, in a rotating order; tok/s per round, ratios per round, medians and spread.
   Target: ragged/dense reaches >= 90 % of dense bytes / ragged bytes (decode reads every weight once per
   token), and ragged is faster than pruned.

    python scripts/bench_gguf.py --workdir /work/bench-gguf --llama-source "$LLAMA_CPP_SOURCE" \\
        --json docs/bench/bench_gguf.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_bake import measure
from bench_inputs import REPO, VARIANT, ensure_inputs, write_report

OFF = 0.5


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bake.cli", *args]


def bakes(workdir: Path, base: Path, gates: Path) -> dict[str, Path]:
    """The dense and pruned bf16 bakes at 50 % off (once)."""
    out = {}
    for layout in ("dense", "pruned"):
        folder = workdir / f"bake-{layout}"
        if not (folder / "bake_manifest.json").exists():
            subprocess.run(cli("bake", "--base", str(base), "--gates", str(gates.parent), "--variant", VARIANT,
                               "--off-fraction", str(OFF), "--layout", layout, "--out", str(folder), "--quiet",
                               "--overwrite"), cwd=REPO, check=True)
        out[layout] = folder
    return out


def converter_command(llama_source: Path, folder: Path, out: Path) -> list[str]:
    """``convert_hf_to_gguf.py FOLDER --outtype f16``, told the pre-tokenizer is qwen2: it recognises a tokenizer by
    a hash of its output, and the random-weight base carries a small test tokenizer, not Qwen's."""
    src = str(llama_source)
    script = (f"import sys; sys.path[:0] = [{src!r}, {src + '/gguf-py'!r}]\n"
              "import conversion.base as base\n"
              "base.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'qwen2'\n"
              f"sys.argv = ['convert', {str(folder)!r}, '--outfile', {str(out)!r}, '--outtype', 'f16']\n"
              f"import runpy; runpy.run_path({src + '/convert_hf_to_gguf.py'!r}, run_name='__main__')\n")
    return [sys.executable, "-c", script]


def export_cost(dense: Path, workdir: Path, converter: Path, pairs: int, log: Any) -> dict[str, Any]:
    ours_out, theirs_out = workdir / "cost-ours.gguf", workdir / "cost-converter.gguf"
    ours = (cli("export", "--model", str(dense), "--format", "gguf", "--gguf-type", "f16", "--out", str(ours_out),
                "--quiet"), [ours_out])
    theirs = (converter_command(converter, dense, theirs_out), [theirs_out])
    rows = []
    for i in range(pairs):
        jobs = [("converter", theirs), ("ours", ours)]
        got = {}
        for label, (cmd, outputs) in (jobs if i % 2 == 0 else jobs[::-1]):
            for path in outputs:
                path.unlink(missing_ok=True)
            got[label] = measure(cmd, [])
        row = {"converter_s": got["converter"]["wall_s"], "ours_s": got["ours"]["wall_s"],
               "converter_peak_mib": got["converter"]["peak_rss_mib"], "ours_peak_mib": got["ours"]["peak_rss_mib"]}
        row |= {"time_ratio": row["ours_s"] / row["converter_s"],
                "peak_ratio": row["ours_peak_mib"] / row["converter_peak_mib"]}
        rows.append(row)
        log(f"export f16 pair {i + 1}: converter {row['converter_s']:6.1f} s {row['converter_peak_mib']:6.0f} MiB, "
            f"ours {row['ours_s']:6.1f} s {row['ours_peak_mib']:6.0f} MiB: time x{row['time_ratio']:.2f}, "
            f"peak x{row['peak_ratio']:.2f}")
    for path in (ours_out, theirs_out):
        path.unlink(missing_ok=True)
    return {"pairs": rows, **{f"{k}_{stat}": fn(r[k] for r in rows) for k in ("time_ratio", "peak_ratio")
                              for stat, fn in (("median", statistics.median), ("min", min), ("max", max))}}


def decode(files: dict[str, Path], context: int, new_tokens: int, rounds: int, threads: int, log: Any
           ) -> dict[str, Any]:
    """Rounds of every file in a rotating order, each: evaluate the prompt (untimed), time ``new_tokens`` steps."""
    import numpy as np

    from export.runtime.llama_loop import LlamaCppLM

    models = {name: LlamaCppLM(path, n_ctx=context + new_tokens + 8, threads=threads) for name, path in files.items()}
    prompt = [int(x) for x in np.random.default_rng(0).integers(1000, 100000, size=context)]
    names = list(files)
    for lm in models.values():  # warm: page the weights in, let llama.cpp build its graphs
        list(lm.stream([prompt[:16]], 4, set(), 0))
    per_round = []
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        speeds = {}
        for name in order:
            lm = models[name]
            steps = lm.stream([prompt], new_tokens + 1, set(), 0)
            next(steps)  # the prompt's pass and the first token: prefill, not decode
            start = time.perf_counter()
            count = sum(1 for _ in steps)
            speeds[name] = count / (time.perf_counter() - start)
        per_round.append(speeds)
        log("  round " + str(r + 1) + ": " + ", ".join(f"{n} {speeds[n]:.1f}" for n in names) + " tok/s")
    return {"tok_s": {n: [round(s[n], 2) for s in per_round] for n in names},
            "median_tok_s": {n: round(statistics.median(s[n] for s in per_round), 2) for n in names}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--llama-source", type=Path, default=os.environ.get("LLAMA_CPP_SOURCE"),
                   help="llama.cpp's source tree (for convert_hf_to_gguf.py); default $LLAMA_CPP_SOURCE")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--types", nargs="+", default=["f32", "q8_0", "q4_0"])
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-export", action="store_true", help="decode only")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    base, gates = ensure_inputs(args.workdir)
    folders = bakes(args.workdir, base, gates)
    manifest = json.loads((folders["dense"] / "bake_manifest.json").read_text())
    import llama_cpp

    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "llama_cpp_python": llama_cpp.__version__},
        "model": "random-weight Qwen3-0.6B shape, bf16", "off_fraction": manifest["off_fraction"],
        "kept_per_layer": manifest["kept_per_layer"],
        "pruned_width": json.loads((folders["pruned"] / "bake_manifest.json").read_text())["intermediate_size"],
        "decode": {"context": args.context, "new_tokens": args.new_tokens, "threads": args.threads,
                   "rounds": args.rounds},
    }
    if not args.skip_export:
        if args.llama_source is None:
            raise SystemExit("--llama-source (or LLAMA_CPP_SOURCE) is needed for the converter comparison")
        report["export_f16"] = export_cost(folders["dense"], args.workdir, args.llama_source, args.pairs, log)
    from export.gguf.writer import export_gguf

    report["types"] = {}
    for kind in args.types:
        files = {"dense": args.workdir / f"dense-{kind}.gguf", "pruned": args.workdir / f"pruned-{kind}.gguf",
                 "ragged": args.workdir / f"ragged-{kind}.gguf"}
        info = {}
        for name, path in files.items():
            if not path.exists():
                log(f"writing {path.name} ...")
                export_gguf(folders["pruned" if name == "pruned" else "dense"], path, gguf_type_name=kind,
                            layout="ragged" if name == "ragged" else "as-is", progress=False)
            info[name] = {"bytes": path.stat().st_size}
        log(f"{kind}: decode")
        speeds = decode(files, args.context, args.new_tokens, args.rounds, args.threads, log)
        ratios = [a / b for a, b in zip(speeds["tok_s"]["ragged"], speeds["tok_s"]["dense"])]
        vs_pruned = [a / b for a, b in zip(speeds["tok_s"]["ragged"], speeds["tok_s"]["pruned"])]
        predicted = info["dense"]["bytes"] / info["ragged"]["bytes"]
        entry = {"files": info, **speeds, "ragged_over_dense": [round(x, 3) for x in ratios],
                 "ragged_over_pruned": [round(x, 3) for x in vs_pruned], "size_predicted_speedup": round(predicted, 3),
                 "share_of_prediction": round(statistics.median(ratios) / predicted, 3)}
        report["types"][kind] = entry
        log(f"{kind}: ragged/dense x{statistics.median(ratios):.3f} (rounds {min(ratios):.3f}-{max(ratios):.3f}) of "
            f"x{predicted:.3f} predicted = {entry['share_of_prediction']:.0%}; ragged/pruned "
            f"x{statistics.median(vs_pruned):.3f}")
        for path in files.values():
            if kind == "f32":
                path.unlink()  # 2.4 GB each
    write_report(report, args.json)


if __name__ == "__main__":
    main()
