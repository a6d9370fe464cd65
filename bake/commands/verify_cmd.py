"""``lambda-bake verify``: prove a baked checkpoint (and its ONNX export) equals the hooked model."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bake.commands import COMMANDS
from bake.commands.common import BASE_ARG, add_gate_args, cut_from_args
from bake.commands.output import add_output_args, say, show
from bake.errors import BakeError, VerificationFailed
from bake.gates.gate_math import GateSettings
from bake.io.dtypes import COMPUTE_DTYPES
from bake.io.paths import BAKED_FOLDER, EXPORT_FOLDER, GGUF_FILE, MLX_FOLDER, PROMPTS_FILE, path_arg
from bake.write.manifest import read_manifest

if TYPE_CHECKING:  # bake.verify.verifier imports torch: load it when a verification runs, not to parse arguments
    from bake.verify.metrics import CandidateResult
    from bake.verify.verifier import ReferenceSpec, VerifyOptions

DESCRIPTION = """\
Run the hooked reference (the unmodified base model with down_proj pre-hooks) on chat-templated prompts,
decoding greedily, then each candidate in turn (the baked checkpoint through transformers; with --onnx,
the ONNX export through ONNX Runtime; --gguf through llama.cpp; --mlx through mlx-lm) on the reference's
sequences, one model in memory at a time (the transformers models read one layer at a time), and
report per candidate: max and mean |logit diff|, mean and max KL(ref || candidate), top-1 agreement and
the first step where its greedy continuation would diverge.

Base, gates and cut default to what the bake manifest records; any of them can be given instead.
Each candidate is judged by the coarsest step of its precision chain (bake dtype -> export dtype ->
quantization): float32: max |diff| <= 1e-4 x max |logit|, mean KL <= 1e-6, top-1 >= 99 %, all greedy
tokens equal; bfloat16, float16, int8, int4: see docs/VERIFY.md. The options below tighten it.
An export is also proven against what it must equal: a float export against the bake (float32: to float
rounding), a quantized one against its own weights dequantized and run in float32 (the same graph with
float activations, to float rounding). Where the hooked logits are too flat for top-1/KL to tell a right
quantized export from a wrong one, those are reported, not judged, and the report says why.

What a deployment carries besides weights is proven against the base: tokenizer files, chat template,
special ids, generation_config.json and config.json (the fields the bake does not change; those it does
against the manifest); an ONNX folder's genai_config.json ids, lengths and search settings; a GGUF's
vocabulary, token types, merges, special ids and template, and llama.cpp's tokenization of the prompts.
A GGUF that llama.cpp would abort on is refused by name first (exit 2), and llama.cpp loads it once in a
child process before this one does. Weights are proven too: every checkpoint tensor bit for bit against
what the base and the gates define; every export tensor against the bake (--baked, else the bake the base
and gates define): float weights exactly, int4/int8 within half a quantization step, off neurons exactly 0. A --target cuda export on a
machine without CUDA gets the weight check only (its logits are not run, and the report says so).
Exit code 0 only when every candidate passes, 3 when one fails (the metric or the tensor is named).
"""


def add_budget_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", type=path_arg("file", PROMPTS_FILE),
                   help="JSONL prompt file (messages lists or plain strings); default: built-in chat prompts of "
                        "mixed lengths")
    p.add_argument("--greedy-tokens", type=int, default=16, help="greedy continuation length to compare")
    p.add_argument("--max-rel-diff", type=float, help="budget: max |logit diff| / max |logit|")
    p.add_argument("--max-mean-kl", type=float, help="budget: mean KL(ref || candidate) per position")
    p.add_argument("--min-top1", type=float, help="budget: share of positions with the same top-1 token")
    p.add_argument("--min-greedy-match", type=float, help="budget: share of greedy steps before divergence")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help=COMMANDS["verify"].help,
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baked", type=path_arg("folder", BAKED_FOLDER), help="baked checkpoint folder")
    p.add_argument("--onnx", type=path_arg("folder", EXPORT_FOLDER), help="ONNX export folder to check as well")
    p.add_argument("--gguf", type=path_arg("file", GGUF_FILE), nargs="+", metavar="FILE",
                   help="GGUF file(s) to check as well: weights against the bake, logits through llama.cpp")
    p.add_argument("--mlx", type=path_arg("folder", MLX_FOLDER), metavar="DIR",
                   help="MLX export folder to check as well: weights against the bake, logits through mlx-lm")
    p.add_argument("--base", type=BASE_ARG, help="base model (default: from the bake manifest)")
    add_gate_args(p, gates_required=False)
    p.set_defaults(gate_mode=None, scale_mode=None, scale_scope=None)  # None: take the manifest's
    p.add_argument("--ignore-manifest", action="store_true",
                   help="compare against the given gates even if the manifest records other ones")
    p.add_argument("--compute-dtype", choices=COMPUTE_DTYPES, default="float32",
                   help="arithmetic for the transformers candidate (default float32: judges the bake itself)")
    add_budget_args(p)
    add_output_args(p)
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> VerifyOptions:
    import torch

    from bake.verify.prompts import DEFAULT_PROMPTS, read_prompts_file
    from bake.verify.verifier import VerifyOptions

    return VerifyOptions(
        prompts=read_prompts_file(args.prompts) if args.prompts else DEFAULT_PROMPTS,
        greedy_tokens=args.greedy_tokens,
        budget_overrides={"max_rel_diff": args.max_rel_diff, "max_mean_kl": args.max_mean_kl,
                          "min_top1": args.min_top1, "min_greedy_match": args.min_greedy_match},
        compute_dtype=getattr(torch, getattr(args, "compute_dtype", "float32")),
    )


def reference_spec(args: argparse.Namespace, manifest: dict[str, Any] | None) -> ReferenceSpec:
    """The manifest's reference with every argument the user gave put in its place."""
    from bake.verify.verifier import ReferenceSpec, spec_from_manifest

    if manifest is None:
        missing = [f for f in ("base", "gates") if getattr(args, f) is None]
        gate_mode = args.gate_mode or "hard"
        if missing or cut_from_args(args).kind == "none" and gate_mode != "soft":
            raise BakeError("no bake manifest to take the reference from: give --base, --gates, the cut "
                            "(--threshold/--off-fraction/--preset) and --scale-mode")
        if args.scale_mode in (None, "auto"):
            raise BakeError("without a bake manifest, give --scale-mode mean, energy or none")
        return ReferenceSpec(Path(args.base), Path(args.gates), args.variant,
                             GateSettings(cut_from_args(args), gate_mode, args.scale_mode, args.scale_scope or "layer",
                                          "uniform" if args.uniform_width else "threshold"),
                             base_hub_id=None if Path(args.base).exists() else str(args.base),
                             gates_hub_id=None if Path(args.gates).exists() else str(args.gates))
    spec = spec_from_manifest(manifest)
    st = spec.settings
    cut = cut_from_args(args) if cut_from_args(args).kind != "none" else st.cut
    settings = GateSettings(
        cut, args.gate_mode or st.gate_mode,
        args.scale_mode if args.scale_mode not in (None, "auto") else st.scale_mode,
        args.scale_scope or st.scale_scope,
        "uniform" if args.uniform_width else st.rule,
    )
    given = {}
    for flag in ("base", "gates"):
        value = getattr(args, flag)
        if value is not None:  # a folder that exists, or a Hub id (path_arg passes ids on as strings)
            hub = None if Path(value).exists() else str(value)
            given |= {flag: Path(value), f"{flag}_hub_id": hub, f"{flag}_revision": getattr(args, f"{flag}_revision", None)}
    return replace(spec, variant=args.variant or spec.variant, settings=settings,
                   gate_sha256=None if args.ignore_manifest else spec.gate_sha256, **given)


def run(args: argparse.Namespace) -> int:
    if args.baked is None and args.onnx is None and args.mlx is None and not args.gguf:
        raise BakeError("give --baked DIR (a baked checkpoint), --onnx DIR (an ONNX export), --mlx DIR (an MLX "
                        "export) and/or --gguf FILE")
    manifest_dir = args.baked or args.onnx or args.mlx
    if manifest_dir is not None:
        manifest = read_manifest(manifest_dir) if (Path(manifest_dir) / "bake_manifest.json").exists() else None
    else:
        from bake.verify.candidates import gguf_candidate

        manifest = gguf_candidate(args.gguf[0]).manifest  # a lone GGUF carries its bake's manifest
    spec = reference_spec(args, manifest)
    options = options_from_args(args)
    from bake.hub.sources import resolve_reference
    from bake.verify.candidates import gguf_candidate, mlx_candidate, onnx_candidate, torch_candidate
    from bake.verify.verifier import verify

    candidates = []
    if args.baked is not None:
        candidates.append(torch_candidate(args.baked, options.compute_dtype))
    if args.onnx is not None:
        candidates.append(onnx_candidate(args.onnx))
    if args.mlx is not None:
        candidates.append(mlx_candidate(args.mlx))
    candidates += [gguf_candidate(f) for f in args.gguf or []]
    say(f"verifying {len(candidates)} candidate(s) against the hooked reference ({spec.variant}, "
        f"{spec.settings.cut.describe()})")
    report = verify(resolve_reference(spec), candidates, options, bake=args.baked)
    return finish(report, args.json)


def finish(report: dict[str, Any], as_json: bool) -> int:
    """Print the report (table or JSON); exit 0 only if every candidate passed."""
    from bake.commands.output import emit_json
    from bake.verify.metrics import CandidateResult, format_table

    results = [CandidateResult.from_dict(c) for c in report["candidates"]]
    for line in weight_lines(results):
        show(line)  # part of the verdict: shown with --quiet too
    if as_json:
        emit_json(report)
    else:
        print(format_table(results))
    if not report["passed"]:
        failed = "; ".join(f"{r.name}: {', '.join(r.failures)}" for r in results if not r.passed)
        raise VerificationFailed(failed)
    return 0


def weight_lines(results: list[CandidateResult]) -> list[str]:
    """One line per weight-checked candidate (what was compared with what), and why logits were not run."""
    lines = []
    for r in results:
        if r.weights is not None:
            w = r.weights
            verdict = "pass" if w["passed"] else f"FAIL in {len(w['failures'])} tensor(s)"
            lines.append(f"{r.name}: weights checked against {w['bake']}: {w['weights_checked']} tensors, "
                         f"{w['elements_checked']:,} elements in {w['seconds']:.2f} s: {verdict}")
        if r.carried is not None:
            c = r.carried
            verdict = "pass" if c["passed"] else f"FAIL in {len(c['failures'])}: {c['failures'][0]['message']}"
            lines.append(f"{r.name}: tokenizer, chat template, special ids and configs checked against the base "
                         f"({len(c['proven'])} files and fields): {verdict}")
        if r.note:
            lines.append(f"{r.name}: {r.note}")
        if r.float16_headroom is not None:
            lines.append(f"{r.name}: {float16_line(r.float16_headroom)}")
    return lines


def float16_line(h: dict[str, Any]) -> str:
    """How close the hooked model's activations come to float16's largest value, and what to do if too close."""
    advice = {"fits": "float16 fits these prompts",
              "tight": "float16 is tight: longer or other inputs may overflow; prefer --dtype bfloat16 (--target cuda)",
              "overflows": "float16 OVERFLOWS (inf/NaN): export with --dtype bfloat16 (--target cuda) or float32"}
    return (f"largest activation of the hooked model on verify's prompts: |hidden| {h['hidden_max_abs']:,.1f} "
            f"(layer {h['hidden_layer']}), |MLP inner| {h['mlp_max_abs']:,.1f} (layer {h['mlp_layer']}): "
            f"{h['share_of_float16_max']:.2%} of float16's {h['float16_max']:,.0f}; {advice[h['float16']]}")
