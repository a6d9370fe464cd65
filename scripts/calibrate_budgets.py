#!/usr/bin/env python3
"""Calibrate verify's default budgets for lossy ONNX exports (float16, int8, int4) on a peaked model.

Random-weight models have flat logits (mean top-1 probability about 1/vocab), where top-1 agreement
is noise and KL is tiny whatever the export does. This script trains the tiny test Qwen3 on a
synthetic chat corpus (``bake.demo.trained``: seeded, offline, one CPU thread) until its logits on
verify's built-in prompts are peaked like a trained model's, then, for each of the card's four
variants (``--variants``) at each of its selected thresholds (``--presets``), bakes it (float32, dense) and exports it
float16 (portable as-is, cpu ragged), int8 and int4 (cpu as-is, portable ragged). Every export is
compared with the hooked model by ``bake.verify.verifier`` (6 built-in prompts, 16 greedy tokens). The
budget for a dtype is then: mean KL <= 2x the worst correct export, rounded up to one significant
digit; top-1 >= the worst correct export minus 3 points, rounded down to a whole percent. The same
figures for int4/int8 exports of a bake with the wrong scale mode are recorded beside them.

    python scripts/calibrate_budgets.py --workdir /tmp/calib --variants chat_energy_optA chat_mean --presets 1 3 5 \
        --json docs/bench/calibration.json
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bake.demo.assets import SEED_VARIANTS, TinyQwen3Spec, build_seed_variants  # noqa: E402
from bake.demo.trained import build_trained_qwen3  # noqa: E402
from bake.fold.plan import BakeOptions  # noqa: E402
from bake.gates.gate_math import Cut, GateSettings, compute_gates  # noqa: E402
from bake.gates.variant import load_variant  # noqa: E402
from bake.verify.candidates import onnx_candidate  # noqa: E402
from bake.verify.prompts import DEFAULT_PROMPTS, render_prompts  # noqa: E402
from bake.verify.verifier import VerifyOptions, spec_from_manifest, verify  # noqa: E402
from bake.write.pipeline import bake_checkpoint  # noqa: E402
from export.onnx.exporter import export_onnx  # noqa: E402

SPEC = TinyQwen3Spec()  # 4 layers x 128 neurons, hidden 64, vocabulary 384
TRAIN = {"steps": 300, "batch": 16, "seq_len": 96, "lr": 3e-3, "seed": 0}
EXPORTS = {  # name -> export options; judged as dtype
    "float16 portable as-is": {"dtype": "float16", "target": "portable"},
    "float16 cpu ragged": {"dtype": "float16", "target": "cpu", "layout": "ragged"},
    "int8 cpu as-is": {"quantize": "int8", "target": "cpu"},
    "int8 portable ragged": {"quantize": "int8", "layout": "ragged", "target": "portable"},
    "int4 cpu as-is": {"quantize": "int4", "target": "cpu"},
    "int4 portable ragged": {"quantize": "int4", "layout": "ragged", "target": "portable"},
}
NO_BUDGET = {"max_rel_diff": 1e9, "max_mean_kl": 1e9, "min_top1": 0.0, "min_greedy_match": 0.0}  # figures only


def peakedness(model_dir: Path, scale: np.ndarray | None = None) -> dict[str, float]:
    """Mean top-1 probability and entropy (nats) of a model's next-token distributions on verify's prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bake.verify.reference import attach_gate_hooks

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    if scale is not None:
        attach_gate_hooks(model, scale)
    top, ent, n = 0.0, 0.0, 0
    for ids in render_prompts(AutoTokenizer.from_pretrained(str(model_dir)), DEFAULT_PROMPTS):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
        top += float(logp.exp().max(-1).values.sum())
        ent += float(-(logp.exp() * logp).sum())
        n += len(ids)
    return {"mean_top1_prob": top / n, "mean_entropy_nats": ent / n}


def figures(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: c[k] for k in ("name", "dtype", "mean_kl", "max_kl", "top1_agreement", "greedy_first_divergence")}
            | {"weights_passed": c["weights"]["passed"]} for c in report["candidates"]]


def budget(kls: list[float], top1s: list[float]) -> dict[str, float]:
    kl = 2 * max(kls)
    digits = 10 ** math.floor(math.log10(kl))
    return {"max_mean_kl": math.ceil(kl / digits) * digits, "min_top1": math.floor((min(top1s) - 0.03) * 100) / 100}


def summarize(report: dict[str, Any], min_ref_top1: float) -> None:
    """Budgets from the cases whose hooked reference is still peaked (mean top-1 probability >= min_ref_top1)."""
    peaked = [c for c in report["cases"] if c["reference_peakedness"]["mean_top1_prob"] >= min_ref_top1]
    report["budget_rule"] = {"min_reference_top1_prob": min_ref_top1, "kl": "2x the worst, rounded up to one digit",
                             "top1": "the worst minus 3 points, rounded down to a whole percent",
                             "cases_used": [f"{c['variant']} p{c['preset']}" for c in peaked],
                             "cases_left_out": [f"{c['variant']} p{c['preset']}" for c in report["cases"]
                                                if c not in peaked]}
    report["budgets"] = {}
    for dtype in ("float16", "int8", "int4"):
        rows = [e for c in peaked for e in c["exports"] if e["dtype"] == dtype]
        wrong_rows = [e for c in peaked for e in c["wrong_scale_mode"] if e["dtype"] == dtype]
        kls, top1s = [e["mean_kl"] for e in rows], [e["top1_agreement"] for e in rows]
        report["budgets"][dtype] = budget(kls, top1s) | {
            "correct_exports": len(rows), "worst_mean_kl": max(kls), "worst_top1": min(top1s),
            "wrong_scale_mode_best_mean_kl": min((e["mean_kl"] for e in wrong_rows), default=None),
            "wrong_scale_mode_best_top1": max((e["top1_agreement"] for e in wrong_rows), default=None)}
        print(dtype, report["budgets"][dtype])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lambda-bake-calibration"))
    ap.add_argument("--variants", nargs="+", default=[v.name for v in SEED_VARIANTS])
    ap.add_argument("--presets", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--min-ref-top1", type=float, default=0.3,
                    help="budgets from the cuts whose hooked model keeps a mean top-1 probability of at least this")
    ap.add_argument("--summarize", type=Path, help="recompute the budgets of an earlier --json report, and exit")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.summarize:
        report = json.loads(args.summarize.read_text())
        summarize(report, args.min_ref_top1)
        args.summarize.write_text(json.dumps(report, indent=2) + "\n")
        return
    root = args.workdir
    base, gates = root / "trained", root / "gates"
    if not base.exists():
        losses = build_trained_qwen3(base, SPEC, **TRAIN)
        (root / "train.json").write_text(json.dumps(losses))
        build_seed_variants(gates, SPEC.num_layers, SPEC.intermediate_size)
    report: dict[str, Any] = {"model": SPEC.__dict__, "training": TRAIN | json.loads((root / "train.json").read_text()),
                              "base_peakedness": peakedness(base), "cases": []}
    options = VerifyOptions(budget_overrides=NO_BUDGET)
    for sv in (v for v in SEED_VARIANTS if v.name in args.variants):
        v = load_variant(gates, sv.name, num_layers=SPEC.num_layers, intermediate_size=SPEC.intermediate_size)
        for preset in args.presets:
            bake = root / "work" / f"{sv.name}-p{preset}"
            shutil.rmtree(bake.parent, ignore_errors=True)
            manifest = bake_checkpoint(base, v, GateSettings(Cut("preset", preset), "hard", sv.scale_mode), bake,
                                       BakeOptions(progress=False))
            wrong_mode = "mean" if sv.scale_mode == "energy" else "energy"
            wrong = root / "work" / "wrong"
            bake_checkpoint(base, v, GateSettings(Cut("preset", preset), "hard", wrong_mode), wrong,
                            BakeOptions(progress=False))
            candidates = []
            for name, opts in EXPORTS.items():
                export_onnx(bake, root / "work" / name.replace(" ", "-"), progress=False, **opts)
                candidates.append(onnx_candidate(root / "work" / name.replace(" ", "-"), device="cpu"))
            right = figures(verify(spec_from_manifest(manifest), candidates, options, bake=bake))
            wrong_figs = []
            for bits in ("int8", "int4"):
                export_onnx(wrong, root / "work" / f"wrong-{bits}", quantize=bits, target="cpu", progress=False)
                result = verify(spec_from_manifest(manifest), [onnx_candidate(root / "work" / f"wrong-{bits}",
                                                                              device="cpu")], options)
                wrong_figs += figures(result)
            settings = GateSettings(Cut("preset", preset), "hard", sv.scale_mode)
            scale_ref = peakedness(base, compute_gates(v.logits, settings, v.selected_thresholds).scale)
            report["cases"].append({"variant": sv.name, "preset": preset, "off_fraction": manifest["off_fraction"],
                                    "reference_peakedness": scale_ref, "exports": right,
                                    "wrong_scale_mode": wrong_figs})
            print(f"{sv.name} p{preset} off {manifest['off_fraction']:.2f} ref top-1 p "
                  f"{scale_ref['mean_top1_prob']:.2f}: " + "  ".join(
                      f"{e['dtype']} KL {e['mean_kl']:.2g} top1 {e['top1_agreement']:.3f}" for e in right), flush=True)
    summarize(report, args.min_ref_top1)
    print("base model:", report["base_peakedness"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
