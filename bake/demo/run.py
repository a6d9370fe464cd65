"""The embedded default job: bake a built-in tiny Qwen3 with the card's variants, offline, and check it.

Builds a small random-weight Qwen3 (real chat template, small tokenizer) and the four seed variant
folders, bakes the chosen variant at each of its selected thresholds in the dense, pruned and ragged
layouts, loads each result (dense and pruned with plain ``AutoModelForCausalLM``, ragged with
``bake.io.pretrained.load_pretrained``) and compares it with the hooked model on chat prompts. What each cut costs is measured on a briefly trained copy of the demo shape
(``bake.demo.costs``). Then the most pruned cut goes through every deployment path
(``bake.demo.deploy``): its ragged checkpoint with ONNX and GGUF exports, verified and run in their runtimes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bake.demo.assets import SEED_VARIANTS, TinyQwen3Spec, build_seed_variants, build_tiny_qwen3
from bake.demo.costs import cut_costs
from bake.demo.deploy import deploy
from bake.gates.gate_math import Cut, GateSettings, compute_gates
from bake.gates.variant import load_variant
from bake.io.pretrained import load_pretrained
from bake.verify import precision
from bake.verify.candidates import TorchRunner
from bake.verify.metrics import DEFAULT_BUDGETS, Comparison, Tally
from bake.verify.precision import checkpoint_chain
from bake.verify.prompts import DEFAULT_PROMPTS, render_prompts
from bake.verify.reference import load_hooked_model
from bake.write.pipeline import BakeOptions, bake_checkpoint

DEMO_SPEC = TinyQwen3Spec(num_layers=4, hidden_size=64, intermediate_size=256, num_heads=4, num_kv_heads=2,
                          head_dim=16)
DEMO_VARIANT = "chat_energy_optA"
DEMO_PAD_MULTIPLE = 16
WORKDIR_ENTRIES = ("base", "gates", "baked", "trained", "sets")  # all that the demo writes into its workdir


def build_demo_inputs(workdir: Path) -> tuple[Path, Path]:
    """The built-in base model and seed gate folders under ``workdir``."""
    base = build_tiny_qwen3(Path(workdir) / "base", DEMO_SPEC)
    gates = build_seed_variants(Path(workdir) / "gates", DEMO_SPEC.num_layers, DEMO_SPEC.intermediate_size)
    return base, gates


def run_demo(
    workdir: Path | None = None, variant: str = DEMO_VARIANT, layouts: tuple[str, ...] = ("dense", "pruned", "ragged"),
    greedy_tokens: int = 8, log: Callable[[str], None] | None = None, deployment: bool = True,
    costs: bool = True,
) -> dict[str, Any]:
    """Bake ``variant`` at every selected threshold and layout (``rows``: one of metrics per bake); with ``costs``,
    evaluate what each cut costs on a briefly trained model (``costs``: the eval report); then, with
    ``deployment``, export the most pruned cut for each runtime, verify and run it (``deployment``)."""
    if variant not in {v.name for v in SEED_VARIANTS}:
        from bake.errors import GateFileError

        raise GateFileError(f"unknown demo variant {variant!r}; choose one of {', '.join(v.name for v in SEED_VARIANTS)}")
    own = tempfile.TemporaryDirectory(prefix="lambda-bake-demo-") if workdir is None else None
    root = Path(own.name if own else workdir)
    try:
        base, gates = build_demo_inputs(root)
        gv = load_variant(gates, variant, num_layers=DEMO_SPEC.num_layers, intermediate_size=DEMO_SPEC.intermediate_size)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        prompts = render_prompts(AutoTokenizer.from_pretrained(str(base)), DEFAULT_PROMPTS)
        rows, settings = [], None
        for k in range(1, len(gv.selected_thresholds) + 1):
            settings = GateSettings(Cut("preset", k), "hard", gv.scale_mode or "mean")
            scale = compute_gates(gv.logits, settings, gv.selected_thresholds).scale
            sequences, reference = TorchRunner(load_hooked_model(base, scale)).generate(prompts, greedy_tokens)
            for layout in layouts:
                if log:
                    log(f"  preset {k} ({gv.selected_thresholds[k - 1]:.4f}): bake {layout}, load, compare")
                out = root / "baked" / f"{variant}-p{k}-{layout}"
                manifest = bake_checkpoint(base, gv, settings, out, BakeOptions(
                    layout=layout, pad_multiple=DEMO_PAD_MULTIPLE, progress=False, overwrite=True))
                loaded = load_pretrained(out, dtype=torch.float32) if layout == "ragged" else \
                    AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
                baked = TorchRunner(loaded)
                tally = Tally(greedy_tokens)
                for i, logits in enumerate(baked.score(sequences.inputs)):
                    tally.add(reference.logits[i], logits, reference.continuation[i], sequences.continuation(i, logits))
                r = Comparison("the hooked reference", tally.figures(), DEFAULT_BUDGETS["float32"], "float32",
                               precision.why(checkpoint_chain("float32")))
                rows.append({
                    "preset": k, "threshold": manifest["cut"]["threshold"], "off_fraction": manifest["off_fraction"],
                    "layout": layout, "intermediate_size": manifest["intermediate_size"],
                    "mlp_neurons": manifest["sizes"][layout]["mlp_neurons"],
                    "params": manifest["sizes"][layout]["params"], **r.to_dict(),
                })
        evaluation = cut_costs(root, DEMO_SPEC, gv, gv.scale_mode or "mean", DEMO_PAD_MULTIPLE, log) if costs else None
        if not deployment or settings is None:
            return {"rows": rows, "costs": evaluation, "deployment": None}
        if log:
            log(f"  preset {len(gv.selected_thresholds)}: bake ragged with ONNX and GGUF exports, verify, run")
        out = root / "baked" / f"{variant}-p{len(gv.selected_thresholds)}-deploy"
        report = deploy(base, gv, settings, out, DEMO_PAD_MULTIPLE, greedy_tokens, log)
        return {"rows": rows, "costs": evaluation, "deployment": report}
    finally:
        if own:
            own.cleanup()


def format_demo_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'preset':>6} {'threshold':>10} {'off':>7} {'layout':<7} {'I':>5} {'neurons':>7} {'params':>9} "
            f"{'max|logit diff|':>16} {'top-1':>7} {'greedy':>8}  verdict")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['preset']:>6} {r['threshold']:>10.6f} {r['off_fraction']:>7.2%} {r['layout']:<7} "
            f"{r['intermediate_size']:>5} {r['mlp_neurons']:>7,} {r['params']:>9,} {r['max_abs_diff']:>16.3g} "
            f"{r['top1_agreement']:>7.2%} "
            f"{r['greedy_summary']:>8}  {'pass' if r['passed'] else 'FAIL: ' + '; '.join(r['failures'])}"
        )
    return "\n".join(lines)
