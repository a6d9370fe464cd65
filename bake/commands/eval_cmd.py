"""``lambda-bake eval``: what a cut costs, measured on text and QA sets, in every runtime, against the base."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from bake.commands import COMMANDS
from bake.commands.common import BASE_ARG, add_gate_args, cut_from_args, load_base_and_gates, settings_from_args
from bake.commands.output import add_output_args, emit_json, say, show
from bake.errors import BakeError
from bake.io.paths import path_arg

DESCRIPTION = """\
Score text sets and answer QA sets with each model given, one model in memory at a time, each in its own
runtime: baked checkpoints, the hooked model and the base in transformers, ONNX exports in ONNX Runtime
(answers through onnxruntime-genai), GGUF files in llama.cpp, MLX folders in mlx-lm. A sweep folder counts as every cut in it.

Text sets (JSONL: {"text": ...} or {"messages": [...]}, rendered with the chat template, thinking off): each
row scored on its own from its first token, truncated to --max-length; per set tokens (each row's length
minus one), nll (their summed negative log-likelihood / tokens, nats), perplexity = exp(nll), and against the
reference (the base) delta_nll and the mean per-token KL(reference || model). QA sets (JSONL: {"question",
"answers": [aliases], "context"?}): a greedy answer to the question (with the context: the oracle setting),
exact match and contains-any-alias after SQuAD v1.1's answer normalization. With sets named forget and retain, the
selectivity is their delta_nll difference. docs/EVAL.md defines every number and how to build the sets.
"""

EPILOG = """\
examples:
  lambda-bake eval --model baked-p3 --model baked-p3/onnx --model baked-p3/model-ragged-Q8_0.gguf \\
      --texts forget=popqa_masked.jsonl --texts retain=numina.jsonl --qa popqa=popqa_qa.jsonl
  lambda-bake eval --model sweep/ --texts retain=numina.jsonl --plot tradeoff.png --json > eval.json
  lambda-bake eval --base Qwen3-0.6B --gates gates --variant chat_energy_optA --preset 3 --texts forget=f.jsonl
  lambda-bake eval --model sweep/ --suite seed --limit 200 --save   (the card's sets from the Hub; the [eval] extra)
  lambda-bake eval --model baked-p3 --lm-eval my_task --lm-eval-include tasks/   (the [eval] extra)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help=COMMANDS["eval"].help, description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[], type=Path, metavar="M",
                   help="a baked folder, an ONNX export folder, an MLX folder, a .gguf file or a sweep folder "
                        "(repeatable)")
    p.add_argument("--base", type=BASE_ARG,
                   help="the base model: the reference (and a model of the report); with --gates and a cut, the hooked "
                        "model is evaluated too (default: the base the first model's manifest records)")
    add_gate_args(p, gates_required=False)
    data = p.add_argument_group("data")
    data.add_argument("--texts", action="append", default=[], metavar="NAME=FILE", help="a text set (repeatable)")
    data.add_argument("--qa", action="append", default=[], metavar="NAME=FILE", help="a QA set (repeatable)")
    data.add_argument("--dataset", action="append", default=[], metavar="NAME=ORG/DATASET[:CONFIG[:SPLIT]]",
                      help="the Hub dataset set NAME was made from: the card's model-index names the result by it "
                           "(a set without one is named as a local file, with no Hub link) (repeatable)")
    data.add_argument("--suite", choices=["seed"],
                      help="build the sets the gates' card names from their Hub datasets (the datasets library): "
                           "forget (PopQA facts as text), popqa (its QA), retain (NuminaMath-CoT chats), gsm8k (final "
                           "number) and wikitext (WikiText-2 articles); docs/EVAL.md")
    data.add_argument("--data-dir", type=Path, metavar="DIR",
                      help="--suite: read the datasets from DIR/ORG/NAME, copies made by `hf download ORG/NAME "
                           "--repo-type dataset --local-dir DIR/ORG/NAME` (default: the Hub cache, then the Hub)")
    data.add_argument("--limit", type=int, metavar="N",
                      help="--suite: N rows per set, the same N on every run (chosen by a stated seed; default all)")
    data.add_argument("--max-length", type=int, default=1024, help="tokens per text row at most (default 1024)")
    data.add_argument("--qa-max-new-tokens", type=int, default=32, help="answer length at most (default 32)")
    data.add_argument("--forget", default="forget", help="the text set whose loss should rise (default: forget)")
    data.add_argument("--retain", default="retain", help="the text set whose loss should hold (default: retain)")
    p.add_argument("--reference", choices=("base", "none"), default="base",
                   help="base (default): delta_nll and KL against the base; none: absolute figures only")
    p.add_argument("--no-kl", action="store_true", help="no KL (the reference's logits are not kept on disk)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="ONNX Runtime's device")
    p.add_argument("--save", action="store_true",
                   help="write each baked or ONNX folder's results to its eval.json (push puts them on the card)")
    p.add_argument("--plot", type=Path, metavar="F.png", help="draw each set's change against the off-fraction")
    harness = p.add_argument_group("lm-evaluation-harness (the [eval] extra)")
    harness.add_argument("--lm-eval", metavar="TASKS", help="comma-separated lm-eval tasks run on every model")
    harness.add_argument("--lm-eval-include", type=path_arg("folder", "a folder of lm-eval task YAMLs"),
                         help="a folder of task YAMLs (local data: offline)")
    harness.add_argument("--lm-eval-limit", type=float, help="examples per task (lm-eval's --limit)")
    harness.add_argument("--lm-eval-backend", choices=("auto", "vllm"), default="auto",
                         help="auto: HFLM / onnxruntime-genai; vllm: checkpoints through lm-eval's vLLM backend")
    harness.add_argument("--data-parallel", type=int, default=1, help="vllm: GPUs per model through Ray")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check every argument, set, model, output and optional package first; then score; then write."""
    from bake.eval.evaluate import EvalOptions, evaluate
    from bake.eval.harness import check_lm_eval
    from bake.eval.models import base_spec, hooked_spec, resolve, with_unique_labels
    from bake.eval.report import folder_of, format_table, write_eval_file
    from bake.eval.runtimes import require_runtime
    from bake.eval.sets import named_file, read_set
    from bake.eval.suite import check_suite_args

    if args.max_length < 2 or args.qa_max_new_tokens < 1:
        raise BakeError("--max-length must be at least 2 and --qa-max-new-tokens at least 1")
    check_suite_args(args.suite, args.data_dir, args.limit, ("--suite", "--data-dir", "--limit"))
    texts = [read_set(*named_file(s, "--texts"), "text") for s in args.texts]
    qas = [read_set(*named_file(s, "--qa"), "qa") for s in args.qa]
    unique_set_names(texts + qas, args.suite)
    texts, qas = with_datasets(texts, qas, args.dataset, "--dataset")
    if not texts and not qas and not args.suite and not args.lm_eval:
        raise BakeError("nothing to evaluate on: give --texts NAME=FILE, --qa NAME=FILE, --suite seed and/or "
                        "--lm-eval TASKS")
    models = [spec for m in args.model for spec in resolve(m)]
    base = _base(args, models)
    cut_given = cut_from_args(args).kind != "none"
    if args.gates is None and cut_given:
        raise BakeError("a cut (--threshold, --off-fraction or --preset) is applied to the base through the gates: "
                        "give --gates too, or drop the cut")
    if args.gates is not None:
        if base is None or not cut_given:
            raise BakeError("the hooked model needs --base, --gates and a cut (--threshold, --off-fraction or --preset)")
        _, variant, _ = load_base_and_gates(args)
        settings, _ = settings_from_args(args, variant)
        models.insert(0, hooked_spec(base, Path(args.gates), variant.name, settings))
    reference = base_spec(base) if base is not None and args.reference == "base" else None
    if not models and reference is None:
        raise BakeError("no model to evaluate: give --model (repeatable) and/or --base")
    specs = with_unique_labels(([reference] if reference else []) + models)
    for spec in specs:
        require_runtime(spec)
    tasks = check_lm_eval(specs, args.lm_eval, args.lm_eval_include, args.lm_eval_limit, args.lm_eval_backend,
                          args.data_parallel) if args.lm_eval is not None else []
    if args.plot:
        from bake.plots.figure import plot_format, require_matplotlib

        require_matplotlib()
        plot_format(args.plot)
    saved = [folder_of(spec.describe(), spec.path) for spec in models] if args.save else []
    for folder in {f for f in saved if f is not None}:
        if not os.access(folder, os.W_OK):
            raise BakeError(f"--save writes {folder}/eval.json, but {folder} is not writable; drop --save or make it "
                            "writable")
    if args.suite:
        texts, qas = with_suite(texts, qas, args.suite, args.data_dir, args.limit)
    say(f"evaluating {len(specs)} model(s) on {len(texts)} text and {len(qas)} QA set(s)")
    options = EvalOptions(max_length=args.max_length, qa_max_new_tokens=args.qa_max_new_tokens, device=args.device,
                          kl=not args.no_kl, forget=args.forget, retain=args.retain, progress=not args.quiet)
    report = evaluate(models, texts, qas, reference, options)
    entries = report["models"]  # the reference first, then the models, in order: entry i is specs[i]'s
    if tasks:
        _harness(args, tasks, list(zip(specs, entries)))
    if args.save:
        for entry, folder in zip(entries[len(specs) - len(models):], saved):
            if folder is not None:
                say(f"  wrote {write_eval_file(folder, report, [entry])}")
    if args.plot:
        from bake.plots.eval_plot import draw_eval

        draw_eval(report, args.plot)
        say(f"  figure: {args.plot}")
    if args.json:
        emit_json(report)
    else:
        show(format_table(report))
    return 0


def _base(args: argparse.Namespace, models: list[Any]) -> Path | None:
    """--base, else the base the first model's manifest records (a folder's, or a GGUF's embedded one), where that
    folder exists here."""
    if args.base is not None:
        if not Path(args.base).is_dir():
            raise BakeError(f"--base {args.base}: eval takes a local base folder (hf download it first)")
        return Path(args.base)
    found = next((spec.base for spec in models if spec.base is not None), None)
    if found is None:  # a GGUF on its own names its base by Hub id: take it from the local cache, never the network
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        for hub_id, revision in (spec.base_hub for spec in models if spec.base_hub is not None):
            try:
                return Path(snapshot_download(hub_id, revision=revision, local_files_only=True))
            except (LocalEntryNotFoundError, ValueError, OSError):
                continue
    return found


def _harness(args: argparse.Namespace, tasks: list[str], pairs: list[tuple[Any, dict[str, Any]]]) -> None:
    from bake.eval.harness import run_lm_eval

    for spec, entry in pairs:
        say(f"  lm-eval {', '.join(tasks)} on {entry['model']} ...")
        entry["lm_eval"] = run_lm_eval(spec, tasks, args.lm_eval_include, args.lm_eval_limit, args.lm_eval_backend,
                                       args.data_parallel, "cuda" if args.device == "cuda" else "cpu", args.max_length)


def with_datasets(texts: list[Any], qas: list[Any], specs: list[str], flag: str) -> tuple[list[Any], list[Any]]:
    """The sets with the Hub datasets ``specs`` name attached (a name that is no set is refused)."""
    from dataclasses import replace

    from bake.eval.sets import dataset_arg

    given = dict(dataset_arg(spec, flag) for spec in specs)
    unknown = sorted(set(given) - {s.name for s in texts + qas})
    if unknown:
        raise BakeError(f"{flag} names the set(s) {', '.join(unknown)}, which no --texts/--qa gives")
    return ([replace(s, dataset=given.get(s.name)) for s in texts], [replace(s, dataset=given.get(s.name)) for s in qas])


def unique_set_names(sets: list[Any], suite: str | None) -> None:
    """Set names key the report: the given sets' and the suite's must all differ."""
    from bake.eval.suite import SEED_SUITE

    names = [s.name for s in sets] + ([s.name for s in SEED_SUITE] if suite else [])
    if len(set(names)) != len(names):
        raise BakeError(f"set names must differ; got {', '.join(names)}" + (
            f" (--suite {suite} brings {', '.join(s.name for s in SEED_SUITE)})" if suite else ""))


def with_suite(texts: list[Any], qas: list[Any], suite: str, data_dir: Path | None, limit: int | None
               ) -> tuple[list[Any], list[Any]]:
    """The given sets, then the suite's (read from the Hub cache or ``data_dir``; an unreadable dataset stops
    here, before any model is opened)."""
    from bake.eval.suite import build_suite

    suite_texts, suite_qas = build_suite(suite, data_dir, limit, say)
    return texts + suite_texts, qas + suite_qas
