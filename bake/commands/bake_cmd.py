"""``lambda-bake bake``: fold a gate variant into a base model and write a standard checkpoint."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bake.commands import COMMANDS
from bake.commands.common import (
    BASE_ARG,
    add_gate_args,
    add_hub_args,
    add_provenance_args,
    check_gguf_layout,
    export_layout,
    format_layer_counts,
    load_base_and_gates,
    settings_from_args,
)
from bake.commands.export_cmd import MLX_DEFAULTS, add_gguf_args, add_graph_args, add_mlx_args
from bake.commands.output import add_output_args, emit_json, say
from bake.commands.sweep_cmd import is_sweep, one_cut, run_sweep_command
from bake.commands.verify_cmd import add_budget_args, options_from_args
from bake.errors import BakeError, ExportError, PlotError
from bake.fold.plan import DEFAULT_PAD_MULTIPLE, LAYOUTS, BakeOptions
from bake.plots import figure as plots
from bake.write.manifest import read_manifest
from bake.write.pipeline import bake_checkpoint
from export.options import GRAPH_DEFAULTS
from export.options import LAYOUTS as LAYOUTS_EXPORT

DESCRIPTION = f"""\
Fold a lambda-gate variant into a Qwen3 base model and write a plain Hugging Face checkpoint
(safetensors, config, tokenizer, bake_manifest.json, model card) that loads with
AutoModelForCausalLM.from_pretrained and needs no hooks.

The cut is given by exactly one of --threshold, --off-fraction or --preset (not with
--gate-mode soft). The achieved off-fraction is always reported. The output folder is written
to a temporary sibling and moved into place only when complete.

A sweep bakes several cuts in one run, opening the base once: --preset all (every selected
threshold), several values (--threshold 0.45 0.5, --off-fraction 0.25 0.5, --preset 2 4) and/or
--variant all (every variant in the gate folder). --out is then a folder that receives one
checkpoint per cut: OUT/<variant>-p<K>, OUT/<variant>-t<T> or OUT/<variant>-f<F>, each written all
or nothing on its own (--verify and --onnx apply to each). A failed cut does not undo the others;
the exit code is non-zero if any failed (3 if only verification failed, else 2).
--plot FILE.png|FILE.svg draws the sweep's report as one figure: parameters and MLP FLOPs per
token of the dense, pruned and ragged layouts against the achieved off-fraction, and with --verify
each candidate's max relative logit difference and top-1 agreement; failed cuts are marked. It needs
matplotlib: {plots.INSTALL_HINT}.

examples:
  lambda-bake bake --base ./Qwen3-0.6B --gates ./lambda-gates-chat --variant chat_energy_optA \\
      --preset 3 --out ./qwen3-0.6b-chat_energy_optA-p3
  lambda-bake bake --base ./Qwen3-0.6B --gates ./lambda-gates-chat --variant all --preset all \\
      --out ./sweep --plot ./sweep.png
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bake", help=COMMANDS["bake"].help,
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, type=BASE_ARG, help="base Qwen3 model: a local folder or a Hub repo id")
    add_gate_args(p, sweep=True)
    add_hub_args(p)
    add_provenance_args(p)
    p.add_argument("--out", required=True, type=Path,
                   help="output folder: new, empty, or an earlier output to replace with --overwrite; for a sweep, "
                        "the folder that receives one output folder per cut")
    p.add_argument("--layout", choices=LAYOUTS, default="dense",
                   help="dense: same shapes, off columns zero; pruned: off neurons removed, every layer padded "
                        "to the widest layer's width (a stock Qwen3 config); ragged: off neurons removed, each layer "
                        "its own width (transformers' per_layer_config: lambda-bake's loader and vLLM with its "
                        "plugin run it; docs/LAYOUTS.md)")
    p.add_argument("--pad-multiple", type=int, default=DEFAULT_PAD_MULTIPLE,
                   help=f"pruned and ragged: round each width up to a multiple of N with zero neurons (default "
                        f"{DEFAULT_PAD_MULTIPLE}: GPU matmul tiles are 64 wide; 1: the exact cut)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="checkpoint dtype; auto keeps the base's. Math is float32, rounded once")
    p.add_argument("--max-shard-size", default="5GB", help="split weights into shards above this size (default 5GB)")
    p.add_argument("--allow-all-off", action="store_true",
                   help="allow a cut that switches off every neuron of every layer")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--verify", action="store_true",
                   help="run `lambda-bake verify` on the result before moving it into place; the report goes "
                        "into the manifest and the model card, and a failure writes nothing (exit 3)")
    add_budget_args(p)
    onnx = p.add_argument_group("ONNX export (into OUT/onnx)")
    onnx.add_argument("--onnx", action="store_true",
                      help="also export to ONNX with KV cache, in the same run (options as for export; see "
                           "lambda-bake export --help)")
    add_graph_args(onnx, prefix="onnx-")
    gguf = p.add_argument_group("GGUF export (into OUT/, for llama.cpp)")
    gguf.add_argument("--gguf", action="store_true",
                      help="also write OUT/model-<layout>-<TYPE>.gguf (see lambda-bake export --format gguf)")
    add_gguf_args(gguf)
    gguf.add_argument("--gguf-layout", choices=LAYOUTS_EXPORT, default="as-is",
                      help="as-is (arch qwen3, the checkpoint's widths) or ragged (arch openelm: each layer its own "
                           "width)")
    mlx = p.add_argument_group("MLX export (into OUT/mlx, for mlx-lm)")
    mlx.add_argument("--mlx", action="store_true",
                     help="also write OUT/mlx, an mlx-lm model folder (see lambda-bake export --format mlx)")
    add_mlx_args(mlx)
    mlx.add_argument("--mlx-layout", choices=LAYOUTS_EXPORT, default="as-is",
                     help="as-is (mlx-lm's qwen3, the checkpoint's widths) or ragged (mlx-lm's openelm: each layer its "
                          "own width)")
    evaluation = p.add_argument_group("evaluation (what the cut costs; lambda-bake eval --help)")
    evaluation.add_argument("--eval", action="append", default=[], metavar="NAME=FILE",
                            help="score this JSONL text set with the checkpoint and every export, against the base; "
                                 "the results go to OUT/eval.json and the model card (repeatable)")
    evaluation.add_argument("--eval-qa", action="append", default=[], metavar="NAME=FILE",
                            help="answer this JSONL QA set with the checkpoint and every export (repeatable)")
    evaluation.add_argument("--eval-dataset", action="append", default=[], metavar="NAME=ORG/DATASET[:CONFIG[:SPLIT]]",
                            help="the Hub dataset an --eval/--eval-qa set was made from, for the card's model-index "
                                 "(repeatable)")
    evaluation.add_argument("--eval-suite", choices=["seed"],
                            help="also score the seed suite, built from its Hub datasets (lambda-bake eval --suite)")
    evaluation.add_argument("--eval-data-dir", type=Path, metavar="DIR",
                            help="--eval-suite: the datasets' local copies (lambda-bake eval --data-dir)")
    evaluation.add_argument("--eval-limit", type=int, metavar="N", help="--eval-suite: N rows per set")
    evaluation.add_argument("--eval-max-length", type=int, default=1024, help="tokens per text row at most")
    push = p.add_argument_group("publish")
    push.add_argument("--push-to", metavar="USER/NAME",
                      help="upload the finished folder to this Hub repo (one bake only, not a sweep)")
    push.add_argument("--private", action="store_true", help="create the --push-to repo as private")
    push.add_argument("--push-revision", metavar="BRANCH", help="branch of the --push-to repo (default main)")
    figure = p.add_argument_group("figure (a sweep only)")
    plots.add_plot_args(figure, "the sweep's report", "1400 by 650, by 1150 with --verify")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    given = [f"--onnx-{n.replace('_', '-')}" for n, default in GRAPH_DEFAULTS.items()
             if getattr(args, f"onnx_{n}") != default]
    if given and not args.onnx:
        raise ExportError(f"{', '.join(given)} only apply to the ONNX export: add --onnx")
    if args.plot and not is_sweep(args):
        raise PlotError("--plot draws a sweep's cuts against their off-fractions, and this bake is one cut; give "
                        "several cuts (e.g. --preset all) or drop --plot (lambda-bake inspect --plot draws one "
                        "variant's cuts without baking)")
    if (args.gguf_type != "f16" or args.gguf_layout != "as-is" or args.gguf_pure) and not args.gguf:
        raise ExportError("--gguf-type, --gguf-pure and --gguf-layout only apply to the GGUF export: add --gguf")
    mlx_given = [f"--{n.replace('_', '-')}" for n, v in (MLX_DEFAULTS | {"mlx_layout": "as-is"}).items()
                 if getattr(args, n) != v]
    if mlx_given and not args.mlx:
        raise ExportError(f"{', '.join(mlx_given)} only apply to the MLX export: add --mlx")
    if is_sweep(args):
        return run_sweep_command(args, options_from(args), verify_check(args) if args.verify else None,
                                 extras_step(args))
    one_cut(args)
    check = verify_check(args) if args.verify else None
    extras = extras_step(args)  # every export's and the evaluation's arguments and packages, before the inputs load
    base, variant, sources = load_base_and_gates(args)
    check_gguf_layout(args, base)
    settings, scale_source = settings_from_args(args, variant)
    say(f"baking {variant.name} ({settings.cut.describe()}, {settings.gate_mode}/{settings.scale_mode}) "
        f"into {base.folder} -> {args.out}")
    manifest = bake_checkpoint(base.folder, variant, settings, args.out, options_from(args),
                               sources=sources | {"scale_mode_source": scale_source}, check=check, extras=extras)
    pushed = None
    if args.push_to:
        from bake.hub.push import push_folder

        pushed = push_folder(args.out, args.push_to, private=args.private, revision=args.push_revision)
    if args.json:
        emit_json({"ok": True, "out": str(args.out), "manifest": manifest, "pushed": pushed})
    elif not args.quiet:
        print_summary(manifest, str(args.out))
    return 0


def options_from(args: argparse.Namespace) -> BakeOptions:
    return BakeOptions(layout=args.layout, dtype=args.dtype, pad_multiple=args.pad_multiple,
                       max_shard_size=args.max_shard_size, allow_all_off=args.allow_all_off,
                       overwrite=args.overwrite, progress=not args.quiet)


def verify_check(args: argparse.Namespace) -> Callable[[Path], dict[str, Any]]:
    """The verifier run on the finished temporary folder, with the table shown to a person."""
    from bake.hub.sources import resolve_reference
    from bake.verify.candidates import gguf_candidate, mlx_candidate, onnx_candidate, torch_candidate
    from bake.verify.metrics import CandidateResult, format_table
    from bake.verify.verifier import spec_from_manifest, verify

    options = options_from_args(args)

    def check(folder: Path) -> dict[str, Any]:
        say("verifying the bake against the hooked reference ...")
        candidates = [torch_candidate(folder)]
        if (folder / "onnx").is_dir():
            candidates.append(onnx_candidate(folder / "onnx"))
        if (folder / "mlx").is_dir():
            candidates.append(mlx_candidate(folder / "mlx"))
        candidates += [gguf_candidate(f) for f in sorted(folder.glob("*.gguf"))]
        spec = resolve_reference(spec_from_manifest(read_manifest(folder)))
        report = verify(spec, candidates, options, bake=folder)
        say(format_table([CandidateResult.from_dict(c) for c in report["candidates"]]))
        return report

    return check


def extras_step(args: argparse.Namespace) -> Callable[[Path], list[str]] | None:
    """What is written into the finished checkpoint's temporary folder (ONNX, GGUF, then the evaluation of all of
    them), as one step."""
    steps = ([onnx_step(args)] if args.onnx else []) + ([gguf_step(args)] if args.gguf else []) + (
        [mlx_step(args)] if args.mlx else []) + ([eval_step(args)] if _evaluates(args) else [])
    if not steps:
        return None
    return lambda folder: [name for step in steps for name in step(folder)]


def _evaluates(args: argparse.Namespace) -> bool:
    """Any evaluation option given (a suite option alone is checked, and refused, there)."""
    return bool(args.eval or args.eval_qa or args.eval_suite or args.eval_data_dir or args.eval_limit is not None)


def eval_step(args: argparse.Namespace) -> Callable[[Path], list[str]]:
    """Evaluate the finished checkpoint and its exports against the base; write eval.json (the card shows it)."""
    from bake.eval.evaluate import EvalOptions, evaluate
    from bake.eval.models import ModelSpec, base_spec, resolve
    from bake.eval.report import format_table, write_eval_file
    from bake.eval.sets import named_file, read_set

    if args.eval_max_length < 2:
        raise BakeError(f"--eval-max-length {args.eval_max_length}: a row needs at least 2 tokens to predict one; "
                        "give 2 or more (default 1024)")
    from bake.commands.eval_cmd import unique_set_names, with_datasets, with_suite
    from bake.eval.suite import check_suite_args

    check_suite_args(args.eval_suite, args.eval_data_dir, args.eval_limit,
                     ("--eval-suite", "--eval-data-dir", "--eval-limit"))
    texts = [read_set(*named_file(s, "--eval"), "text") for s in args.eval]  # before the bake: a bad file stops it
    qas = [read_set(*named_file(s, "--eval-qa"), "qa") for s in args.eval_qa]
    unique_set_names(texts + qas, args.eval_suite)
    texts, qas = with_datasets(texts, qas, args.eval_dataset, "--eval-dataset")
    if args.gguf:  # each export is scored in its own runtime: llama.cpp for the GGUF
        from export.install import require_llama_cpp

        require_llama_cpp()
    if args.eval_suite:  # read now, before the bake: a dataset that cannot be read stops it
        texts, qas = with_suite(texts, qas, args.eval_suite, args.eval_data_dir, args.eval_limit)
    options = EvalOptions(max_length=args.eval_max_length, progress=not args.quiet)

    def run(folder: Path) -> list[str]:
        say("evaluating the checkpoint and its exports against the base ...")
        models = [ModelSpec("checkpoint", "checkpoint", folder, resolve(folder)[0].cut)]
        for sub in ("onnx", "mlx"):
            if (folder / sub).is_dir():
                models.append(ModelSpec(sub, sub, folder / sub, resolve(folder / sub)[0].cut))
        models += [resolve(f)[0] for f in sorted(folder.glob("*.gguf"))]
        base = Path(read_manifest(folder)["base"]["local_path"])
        report = evaluate(models, texts, qas, base_spec(base), options)
        say(format_table(report))
        write_eval_file(folder, report, [m for m in report["models"] if not m.get("is_reference")])
        return ["eval.json"]

    return run


def gguf_step(args: argparse.Namespace) -> Callable[[Path], list[str]]:
    """Write the finished checkpoint's GGUF into it; return the file name."""
    from export.install import require_gguf

    require_gguf()
    from export.gguf.writer import default_file_name, export_gguf, gguf_type, require_llama_quantizer

    kind = gguf_type(args.gguf_type, args.gguf_pure)
    if kind.by_llama:
        require_llama_quantizer(kind)  # before the bake, not after

    layout = export_layout(args, args.gguf_layout)  # a ragged bake exports ragged (llama.cpp's openelm arch)

    def export(folder: Path) -> list[str]:
        name = default_file_name(layout, args.gguf_type, args.gguf_pure)
        say(f"exporting to GGUF ({args.gguf_type}, layout {layout}) ...")
        report = export_gguf(folder, folder / name, gguf_type_name=args.gguf_type, layout=layout,
                             pure=args.gguf_pure, progress=not args.quiet)
        return [name, Path(report["modelfile"]).name]

    return export


def mlx_step(args: argparse.Namespace) -> Callable[[Path], list[str]]:
    """Write the finished checkpoint's MLX folder into its mlx/ subfolder; return the added file names."""
    from export.install import require_mlx
    from export.mlx.writer import check_mlx_options, export_mlx_into

    require_mlx()
    options = {"layout": export_layout(args, args.mlx_layout), "dtype": args.mlx_dtype,
               "bits": args.mlx_bits,
               "group_size": args.mlx_group_size}
    check_mlx_options(**options)  # before the bake, not after

    def export(folder: Path) -> list[str]:
        bits = f", {args.mlx_bits}-bit" if args.mlx_bits else ""
        say(f"exporting to MLX (layout {options['layout']}{bits}) ...")
        report = export_mlx_into(folder, **options, progress=not args.quiet)
        return [f"mlx/{name}" for name in report["files"]]

    return export


def onnx_step(args: argparse.Namespace) -> Callable[[Path], list[str]]:
    """Export the finished checkpoint into its onnx/ subfolder; return the added file names."""
    from export.install import require_onnxruntime

    require_onnxruntime()
    from export.onnx.exporter import check_export_options, export_into

    options = {n: getattr(args, f"onnx_{n}") for n in GRAPH_DEFAULTS}
    check_export_options(options["dtype"], options["layout"], "auto", options["quantize"],
                         options["target"], options["width_multiple"], options["embedding"],
                         options["quant_scheme"])  # before the bake

    def export(folder: Path) -> list[str]:
        quantized = "" if options["quantize"] == "none" else f", {options['quantize']} weights"
        say(f"exporting to ONNX (target {options['target']}, {options['dtype']}{quantized}, "
            f"layout {options['layout']}) ...")
        report = export_into(folder, **options, progress=not args.quiet)
        return [f"onnx/{name}" for name in report["files"]]

    return export


def print_summary(m: dict, out: str) -> None:
    s = m["sizes"]
    layout = m["layout"]
    chosen = s[layout]
    say(f"wrote {out}")
    say(f"  threshold {m['cut']['threshold']}  off-fraction {m['off_fraction']:.4f} "
        f"({sum(m['off_per_layer'])} of {m['gates']['num_neurons']} neurons)")
    say(f"  off per layer: {format_layer_counts(m['off_per_layer'], m['base']['intermediate_size'])}")
    width = (f"MLP widths {format_layer_counts(m['mlp_widths'], m['base']['intermediate_size'])}" if layout == "ragged"
             else f"intermediate_size {m['intermediate_size']}")
    say(f"  layout {layout}: {width}, {chosen['params']:,} params, {chosen['mlp_neurons']:,} MLP neurons "
        f"(dense {s['dense']['mlp_neurons']:,}, pruned {s['pruned']['mlp_neurons']:,}, "
        f"ragged {s['ragged']['mlp_neurons']:,}, the cut {s['exact']['mlp_neurons']:,})")
    if "weight_bytes" in chosen:
        say(f"  weights {chosen['weight_bytes']:,} bytes (dense {s['dense']['weight_bytes']:,}, "
            f"pruned {s['pruned']['weight_bytes']:,}, ragged {s['ragged']['weight_bytes']:,})")
    overhead = s.get(f"{layout}_padding_overhead")
    if layout != "dense" and overhead is not None:
        say(f"  {layout} padding: {overhead:.2%} zero neurons beyond the cut's (--pad-multiple {m['pad_multiple']})")
    if m.get("uniform_cut"):
        say("  " + uniform_line(m["uniform_cut"], m["base"]["intermediate_size"]))


def uniform_line(u: dict, width: int) -> str:
    """What the uniform cut did, and what it switched differently from the threshold cut, in one line."""
    return (f"uniform width: every layer switches off {u['switched_off_per_layer']} of {width} (its lowest lambdas); "
            f"against the threshold cut at the same off-fraction: {u['on_to_off']:,} neurons on -> off, "
            f"{u['off_to_on']:,} off -> on (per layer: {' '.join(map(str, u['on_to_off_per_layer']))})")
