"""Comparison figures and pass/fail budgets: a candidate's logits and greedy tokens against a yardstick's.

The first yardstick is always the hooked reference (the *unmodified base* with ``down_proj``
pre-hooks, ``bake.verify.reference``), never the bake's folded weights. Exports are also compared with
the bake itself (float exports) or with their own dequantized weights (quantized exports); see
``bake.verify.verifier``. Figures are accumulated prompt by prompt (``Tally``), so no candidate's
logits are kept once they are counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch

from bake.errors import BakeError


@dataclass(frozen=True)
class Budget:
    """Pass/fail limits; ``max_rel_diff`` is relative to max |yardstick logit|. None: that figure is not judged."""

    max_rel_diff: float | None
    max_mean_kl: float | None
    min_top1: float | None
    min_greedy_match: float | None  # share of the N greedy steps before the first divergence

    def with_overrides(self, overrides: dict[str, float | None]) -> Budget:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def logit_budget_only(self) -> Budget:
        """Only the max-diff bound (the comparison is exact up to kernel rounding; top-1 and KL add nothing)."""
        return Budget(self.max_rel_diff, None, None, None)


DEFAULT_BUDGETS: dict[str, Budget] = {
    "float32": Budget(max_rel_diff=1e-4, max_mean_kl=1e-6, min_top1=0.99, min_greedy_match=1.0),
    "bfloat16": Budget(max_rel_diff=None, max_mean_kl=5e-3, min_top1=0.95, min_greedy_match=None),
    # float16 / int8 / int4 exports: set by scripts/calibrate_budgets.py (docs/bench/calibration.json) on a
    # tiny Qwen3 trained to peaked logits (mean top-1 probability 0.78 on the built-in prompts), over correct
    # exports of 2 variants x the 5 % and 50 % cuts x 2 graphs/layouts: mean KL <= 2x the worst (rounded up),
    # top-1 >= the worst minus 3 points. Worst seen: float16 KL 4.0e-6, top-1 0.998; int8 KL 1.0e-3, top-1 0.968;
    # int4 KL 0.098, top-1 0.772.
    "float16": Budget(max_rel_diff=None, max_mean_kl=9e-6, min_top1=0.96, min_greedy_match=None),
    "int8": Budget(max_rel_diff=None, max_mean_kl=3e-3, min_top1=0.93, min_greedy_match=None),
    "int4": Budget(max_rel_diff=None, max_mean_kl=0.2, min_top1=0.74, min_greedy_match=None),
}
# A CPU-target quantized export (MatMulNBits accuracy level 4: int8 activations inside the kernel) against its
# own dequantized weights run in float32: the int8 activations alone move the logits by up to 3.6 % of the
# largest on the 4-layer test model and 15.6 % on the 28-layer one (correct int4 exports). The bound catches
# gross kernel errors only; the exact check runs the same graph with float activations (bake.verify.verifier).
INT8_ACTIVATIONS_BOUND = 0.5
INT8_ACTIVATIONS_MEASURED = 0.156


ROWS_PER_CHUNK = 16  # positions per step of the float64 KL: 16 x 151,936 x 8 B = 19 MB at Qwen3's vocabulary


@dataclass
class Figures:
    """How far a candidate is from one yardstick, over every prompt position and greedy step."""

    max_abs_diff: float
    mean_abs_diff: float
    max_rel_diff: float
    mean_kl: float
    max_kl: float
    top1_agreement: float
    greedy_first_divergence: int | None  # first step where tokens differ; None = all N match
    greedy_steps: int
    positions: int  # the positions compared (a last-token ONNX graph: each prompt's last and the continuation's)


class Tally:
    """Accumulates ``Figures`` prompt by prompt."""

    def __init__(self, greedy_steps: int):
        self.greedy_steps = greedy_steps
        self.max_abs = self.max_rel = self.max_kl = self.sum_abs = self.sum_kl = 0.0
        self.agree = self.positions = 0
        self.first_div: int | None = None

    def add(self, ref: torch.Tensor, cand: torch.Tensor, ref_tokens: list[int], cand_tokens: list[int],
            name: str = "candidate") -> None:
        """Count one sequence: [S, V] logits of the yardstick and the candidate, and their continuations."""
        if cand.shape != ref.shape:
            raise BakeError(f"{name}: logits shape {list(cand.shape)} != reference {list(ref.shape)}")
        largest = float(ref.abs().max().clamp_min(1e-30))
        for start in range(0, ref.shape[0], ROWS_PER_CHUNK):  # float64 KL of a few rows at a time: bounded memory
            r, c = ref[start:start + ROWS_PER_CHUNK], cand[start:start + ROWS_PER_CHUNK]
            diff = (c - r).abs()
            self.max_abs = max(self.max_abs, float(diff.max()))
            self.max_rel = max(self.max_rel, float(diff.max()) / largest)
            self.sum_abs += float(diff.mean()) * r.shape[0]
            kl = kl_divergence(r, c)
            self.max_kl = max(self.max_kl, float(kl.max()))
            self.sum_kl += float(kl.sum())
            self.agree += int((r.argmax(-1) == c.argmax(-1)).sum())
        self.positions += ref.shape[0]
        if self.greedy_steps:
            div = first_divergence(ref_tokens, cand_tokens)
            if div is not None:
                self.first_div = div if self.first_div is None else min(self.first_div, div)

    def figures(self) -> Figures:
        n = max(self.positions, 1)
        return Figures(self.max_abs, self.sum_abs / n, self.max_rel, self.sum_kl / n, self.max_kl, self.agree / n,
                       self.first_div, self.greedy_steps, self.positions)


@dataclass
class Comparison:
    """A candidate against one yardstick: the figures, the budget that judged them and why, the verdict."""

    against: str
    figures: Figures
    budget: Budget
    budget_dtype: str
    why: str
    not_judged: str | None = None  # why top-1/KL/greedy were only reported, when they were
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        budget = self.budget.logit_budget_only() if self.not_judged else self.budget
        self.failures = judge(self.figures, budget)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"against": self.against, **asdict(self.figures), "greedy_summary": greedy_summary(self.figures),
                "budget": {"dtype": self.budget_dtype, "why": self.why, **asdict(self.budget),
                           "not_judged": self.not_judged},
                "passed": self.passed, "failures": self.failures}


@dataclass
class CandidateResult:
    """One candidate's figures against the hooked reference (None: its logits were not run), its further
    comparisons (``checks``: against the bake, or its own dequantized weights) and its verdict."""

    name: str
    dtype: str
    max_abs_diff: float | None
    mean_abs_diff: float | None
    max_rel_diff: float | None
    mean_kl: float | None
    max_kl: float | None
    top1_agreement: float | None
    greedy_first_divergence: int | None
    greedy_steps: int
    positions: int = 0  # the positions compared with the hooked reference
    passed: bool = False
    failures: list[str] = field(default_factory=list)
    weights: dict[str, Any] | None = None  # an export's weight check (bake.verify.weights.weight_check.WeightReport)
    note: str | None = None  # why the logits were not run, when they were not
    chain: list[str] = field(default_factory=list)  # the precision chain, e.g. ["bake bfloat16", "export float32"]
    budget: dict[str, Any] | None = None  # the budget against the hooked reference: dtype, why, limits
    checks: list[dict[str, Any]] = field(default_factory=list)  # Comparison.to_dict() of the other yardsticks
    float16_headroom: dict[str, Any] | None = None  # float16 candidates: the reference's activation peaks vs 65,504
    carried: dict[str, Any] | None = None  # bake.verify.carried.CarriedReport: tokenizer, template, ids, configs

    @property
    def logits_run(self) -> bool:
        return self.mean_kl is not None

    @classmethod
    def from_comparisons(cls, name: str, dtype: str, chain: list[str], main: Comparison,
                         checks: list[Comparison]) -> CandidateResult:
        """The result of a run candidate: ``main`` against the hooked reference, ``checks`` against the others."""
        failures = main.failures + [f"vs {c.against}: {f}" for c in checks for f in c.failures]
        main_dict = main.to_dict()
        return cls(name, dtype, **asdict(main.figures), passed=not failures, failures=failures, chain=chain,
                   budget=main_dict["budget"], checks=[c.to_dict() for c in checks])

    @classmethod
    def not_run(cls, name: str, dtype: str, note: str, chain: list[str]) -> CandidateResult:
        """A candidate whose logits cannot be computed here (judged by its weight check alone)."""
        return cls(name, dtype, None, None, None, None, None, None, None, 0, passed=True, note=note, chain=chain)

    def add_weight_check(self, report: dict[str, Any], failure_lines: list[str]) -> None:
        """Attach an export's weight check; its failures fail the candidate."""
        self.weights = report
        self.failures += [f"weights: {line}" for line in failure_lines]
        self.passed = self.passed and report["passed"]

    def add_carried_check(self, report: dict[str, Any], failure_lines: list[str]) -> None:
        """Attach the check of what the deployment carries besides weights; its failures fail the candidate."""
        self.carried = report
        self.failures += [f"carried: {line}" for line in failure_lines]
        self.passed = self.passed and report["passed"]

    @property
    def weights_summary(self) -> str:
        if self.weights is None:
            return "-"
        if not self.weights["passed"]:
            return f"FAIL ({len(self.weights['failures'])})"
        steps = self.weights["max_quant_error_steps"]
        return "exact" if steps is None else f"<= {steps:.3f} step"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d | {"greedy_summary": greedy_summary(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CandidateResult:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def judge(r: Figures, b: Budget) -> list[str]:
    """The budget lines a result breaks, each naming the metric, its value and the limit."""
    fails: list[str] = []
    if b.max_rel_diff is not None and r.max_rel_diff > b.max_rel_diff:
        fails.append(f"max |logit diff| / max |logit| = {r.max_rel_diff:.3g} > {b.max_rel_diff:g}")
    if b.max_mean_kl is not None and r.mean_kl > b.max_mean_kl:
        fails.append(f"mean KL(ref||cand) = {r.mean_kl:.3g} > {b.max_mean_kl:g}")
    if b.min_top1 is not None and r.top1_agreement < b.min_top1:
        fails.append(f"top-1 agreement = {r.top1_agreement:.4f} < {b.min_top1:g}")
    if r.greedy_steps and b.min_greedy_match:
        matched = r.greedy_steps if r.greedy_first_divergence is None else r.greedy_first_divergence
        if matched / r.greedy_steps < b.min_greedy_match:
            fails.append(f"greedy continuation diverges at step {r.greedy_first_divergence} of {r.greedy_steps}")
    return fails


def greedy_summary(r: Figures | CandidateResult) -> str:
    if r.greedy_steps == 0:
        return "n/a"
    if r.greedy_first_divergence is None:
        return f"{r.greedy_steps}/{r.greedy_steps}"
    return f"diverges at {r.greedy_first_divergence}"


def kl_divergence(ref_logits: torch.Tensor, cand_logits: torch.Tensor) -> torch.Tensor:
    """Per-position KL(ref || cand) in float64."""
    p = torch.log_softmax(ref_logits.to(torch.float64), -1)
    q = torch.log_softmax(cand_logits.to(torch.float64), -1)
    return (p.exp() * (p - q)).sum(-1).clamp_min(0.0)


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def format_table(results: list[CandidateResult]) -> str:
    """One row per candidate against the hooked reference, an indented row per further comparison, and the
    budget each was judged by. The name column is as wide as the longest name."""
    rows_in = [(r.name, r.dtype, _figures(r) if r.logits_run else None, r.weights_summary, r) for r in results]
    names = [len(name) for name, *_ in rows_in] + [len(f"  vs {c['against']}") for r in results for c in r.checks]
    width = max([len("candidate"), *names])
    dw = max([len("dtype"), *(len(r.dtype) for r in results), *(len(c["budget"]["dtype"]) for r in results
                                                                  for c in r.checks)])
    head = f"{'candidate':<{width}} {'dtype':<{dw}} {'pos':>5} {'max|diff|':>10} {'rel':>9} {'mean KL':>9} {'max KL':>9} " \
           f"{'top-1':>7} {'greedy':>16} {'weights':>14}  verdict"
    rows = [head, "-" * len(head)]
    for name, dtype, figures, weights, r in rows_in:
        verdict = "pass" if r.passed else "FAIL: " + "; ".join(r.failures)
        rows.append(f"{name:<{width}} {dtype:<{dw}} {figures or f'{NOT_RUN:>71}'} {weights:>14}  "
                    + verdict + (f" ({r.note})" if r.note else ""))
        for c in r.checks:
            rows.append(f"{'  vs ' + c['against']:<{width}} {c['budget']['dtype']:<{dw}} {_figures(c)} {'':>14}  "
                        + ("pass" if c["passed"] else "FAIL: " + "; ".join(c["failures"])))
    lines = [f"{r.name}: {r.budget['dtype']} budget, as {r.budget['why']}"
             + (f"; {r.budget['not_judged']}" if r.budget.get("not_judged") else "")
             for r in results if r.budget]
    lines += [f"{r.name} vs {c['against']}: {c['budget']['dtype']} budget, as {c['budget']['why']}"
              for r in results for c in r.checks]
    return "\n".join(rows + ([""] + lines if lines else []))


NOT_RUN = "logits not run"


def _figures(r: Any) -> str:
    get = r.get if isinstance(r, dict) else lambda k: getattr(r, k)
    summary = get("greedy_summary") if isinstance(r, dict) else greedy_summary(r)
    return (f"{get('positions'):5d} {get('max_abs_diff'):10.3g} {get('max_rel_diff'):9.2g} {get('mean_kl'):9.2g} {get('max_kl'):9.2g} "
            f"{get('top1_agreement'):7.2%} {summary:>16}")
