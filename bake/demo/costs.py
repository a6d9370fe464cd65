"""The demo's evaluation: what each cut costs, on a model whose numbers move with the cut.

A random-weight model predicts nothing, so its losses barely move when neurons go. The demo therefore trains
the demo shape briefly (``bake.demo.trained``, seeded, on one thread) on chat-templated arithmetic, algebra,
primes, code and the built-in sentences, bakes the variant at each selected threshold, and evaluates the base
and every cut on three built-in sets (``demo_sets``): ``retain`` (held-out arithmetic and algebra chats: the
reasoning kept), ``forget`` (held-out chats about the built-in sentences: the knowledge the real gates target)
and a QA set of sums (greedy answers, exact match). The seed gates are random, not trained to tell the two
apart: the figures show the machinery, not the paper's result.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bake.demo.assets import _CORPUS
from bake.demo.trained import build_trained_qwen3, chat_corpus
from bake.eval.evaluate import EvalOptions, evaluate
from bake.eval.models import base_spec, resolve
from bake.eval.sets import read_set
from bake.gates.gate_math import Cut, GateSettings
from bake.gates.variant import GateVariant
from bake.write.pipeline import BakeOptions, bake_checkpoint

TRAIN_STEPS = 120  # about 10 s on 2 cores: enough for peaked logits on the training corpus (final loss ~0.5)


def demo_sets(root: Path, seed: int = 99) -> dict[str, Path]:
    """The three built-in sets as JSONL files under ``root`` (chats not in the training corpus's seed)."""
    root.mkdir(parents=True, exist_ok=True)
    chats = chat_corpus(400, seed)
    math = [c for c in chats if c[0]["content"].startswith(("What is", "Solve"))][:24]
    facts = [c for c in chats if c[0]["content"] in _CORPUS][:24]
    rng = random.Random(seed)
    sums = [(rng.randint(2, 60), rng.randint(2, 60)) for _ in range(16)]
    files = {"retain": [{"messages": c} for c in math], "forget": [{"messages": c} for c in facts],  # noqa: E501
             "sums": [{"question": f"What is {a} + {b}?", "answers": [f"{a} + {b} = {a + b}", str(a + b)]}
                      for a, b in sums]}
    out = {}
    for name, rows in files.items():
        out[name] = root / f"{name}.jsonl"
        out[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def cut_costs(root: Path, spec: Any, variant: GateVariant, scale_mode: str, pad_multiple: int,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train the demo model, bake ``variant`` at every selected threshold (dense), evaluate base and cuts."""
    if log:
        log(f"  what the cuts cost: training the demo shape for {TRAIN_STEPS} steps, then evaluating every cut")
    trained = root / "trained"
    if not (trained / "model.safetensors").is_file():
        build_trained_qwen3(trained, spec, steps=TRAIN_STEPS, as_replies=True)
    sets = demo_sets(root / "sets")
    models = []
    for k in range(1, len(variant.selected_thresholds) + 1):
        out = root / "baked" / f"trained-{variant.name}-p{k}"
        bake_checkpoint(trained, variant, GateSettings(Cut("preset", k), "hard", scale_mode), out,
                        BakeOptions(pad_multiple=pad_multiple, progress=False, overwrite=True))
        models += resolve(out)
    texts = [read_set(n, sets[n], "text") for n in ("retain", "forget")]
    return evaluate(models, texts, [read_set("sums", sets["sums"], "qa")], base_spec(trained),
                    EvalOptions(max_length=256, qa_max_new_tokens=12, progress=False))
