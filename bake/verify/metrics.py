"""Comparison metrics and pass/fail budgets: the hooked reference against one candidate.

The reference is always the *unmodified base* with ``down_proj`` pre-hooks (``bake.verify.reference``),
never the bake's folded weights. A candidate is anything that maps token ids to logits and can
decode greedily: a baked checkpoint through transformers, or an ONNX export through onnxruntime.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch

from bake.errors import BakeError


@dataclass(frozen=True)
class Budget:
    """Pass/fail limits for one candidate dtype. ``max_rel_diff`` is relative to max |reference logit|."""

    max_rel_diff: float | None
    max_mean_kl: float
    min_top1: float
    min_greedy_match: float  # share of the N greedy steps before the first divergence


DEFAULT_BUDGETS: dict[str, Budget] = {
    "float32": Budget(max_rel_diff=1e-4, max_mean_kl=1e-6, min_top1=0.99, min_greedy_match=1.0),
    "bfloat16": Budget(max_rel_diff=None, max_mean_kl=5e-3, min_top1=0.95, min_greedy_match=0.0),
    # float16 / int8 / int4 exports: set by scripts/calibrate_budgets.py (docs/bench/calibration.json) on a
    # tiny Qwen3 trained to peaked logits (mean top-1 probability 0.78 on the built-in prompts), over correct
    # exports of 2 variants x the 5 % and 50 % cuts x 2 graphs/layouts: mean KL <= 2x the worst (rounded up),
    # top-1 >= the worst minus 3 points. Worst seen: float16 KL 4.0e-6, top-1 0.998; int8 KL 1.0e-3, top-1 0.968;
    # int4 KL 0.098, top-1 0.772. On random-weight models top-1 is noise: the weight check is the verdict there.
    "float16": Budget(max_rel_diff=None, max_mean_kl=9e-6, min_top1=0.96, min_greedy_match=0.0),
    "int8": Budget(max_rel_diff=None, max_mean_kl=3e-3, min_top1=0.93, min_greedy_match=0.0),
    "int4": Budget(max_rel_diff=None, max_mean_kl=0.2, min_top1=0.74, min_greedy_match=0.0),
}


class Candidate(Protocol):
    """What verify needs of a model under test."""

    name: str
    dtype: str

    def logits(self, ids: list[int]) -> torch.Tensor:
        """[T, V] float32 logits for one prompt."""

    def greedy(self, ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation (new token ids only)."""


@dataclass
class CandidateResult:
    """One candidate's figures against the reference (None: its logits were not run) and its verdict."""

    name: str
    dtype: str
    max_abs_diff: float | None
    mean_abs_diff: float | None
    max_rel_diff: float | None
    mean_kl: float | None
    max_kl: float | None
    top1_agreement: float | None
    greedy_first_divergence: int | None  # first step where tokens differ; None = all N match
    greedy_steps: int
    passed: bool = False
    failures: list[str] = field(default_factory=list)
    weights: dict[str, Any] | None = None  # an ONNX export's weight check (bake.verify.weight_check.WeightReport)
    note: str | None = None  # why the logits were not run, when they were not

    @property
    def logits_run(self) -> bool:
        return self.mean_kl is not None

    @classmethod
    def not_run(cls, name: str, dtype: str, note: str) -> CandidateResult:
        """A candidate whose logits cannot be computed here (judged by its weight check alone)."""
        return cls(name, dtype, None, None, None, None, None, None, None, 0, passed=True, note=note)

    def add_weight_check(self, report: dict[str, Any], failure_lines: list[str]) -> None:
        """Attach an export's weight check; its failures fail the candidate."""
        self.weights = report
        self.failures += [f"weights: {line}" for line in failure_lines]
        self.passed = self.passed and report["passed"]

    @property
    def weights_summary(self) -> str:
        if self.weights is None:
            return "-"
        if not self.weights["passed"]:
            return f"FAIL ({len(self.weights['failures'])})"
        steps = self.weights["max_quant_error_steps"]
        return "exact" if steps is None else f"<= {steps:.3f} step"

    @property
    def greedy_summary(self) -> str:
        if self.greedy_steps == 0:
            return "n/a"
        if self.greedy_first_divergence is None:
            return f"{self.greedy_steps}/{self.greedy_steps}"
        return f"diverges at {self.greedy_first_divergence}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"greedy_summary": self.greedy_summary}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CandidateResult:
        return cls(**{k: v for k, v in d.items() if k != "greedy_summary"})


def compare(
    reference: Candidate,
    candidate: Candidate,
    prompts: list[list[int]],
    budget: Budget,
    greedy_tokens: int = 16,
    reference_cache: dict[str, Any] | None = None,
) -> CandidateResult:
    """All metrics of ``candidate`` against ``reference`` over ``prompts``, and the verdict."""
    cache = reference_cache if reference_cache is not None else {}
    max_abs = max_rel = max_kl = 0.0
    sum_abs = sum_kl = 0.0
    agree = positions = 0
    first_div: int | None = None
    for i, ids in enumerate(prompts):
        ref = cache.setdefault(f"logits{i}", reference.logits(ids))
        cand = candidate.logits(ids)
        if cand.shape != ref.shape:
            raise BakeError(f"{candidate.name}: logits shape {list(cand.shape)} != reference {list(ref.shape)}")
        diff = (cand - ref).abs()
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float(diff.max() / ref.abs().max().clamp_min(1e-30)))
        sum_abs += float(diff.mean()) * ref.shape[0]
        kl = kl_divergence(ref, cand)
        max_kl = max(max_kl, float(kl.max()))
        sum_kl += float(kl.sum())
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        positions += ref.shape[0]
        if greedy_tokens:
            ref_tokens = cache.setdefault(f"greedy{i}", reference.greedy(ids, greedy_tokens))
            div = first_divergence(ref_tokens, candidate.greedy(ids, greedy_tokens))
            if div is not None:
                first_div = div if first_div is None else min(first_div, div)
    result = CandidateResult(
        name=candidate.name, dtype=candidate.dtype, max_abs_diff=max_abs, mean_abs_diff=sum_abs / positions,
        max_rel_diff=max_rel, mean_kl=sum_kl / positions, max_kl=max_kl, top1_agreement=agree / positions,
        greedy_first_divergence=first_div, greedy_steps=greedy_tokens,
    )
    result.failures = judge(result, budget)
    result.passed = not result.failures
    return result


def judge(r: CandidateResult, b: Budget) -> list[str]:
    """The budget lines a result breaks, each naming the metric, its value and the limit."""
    fails: list[str] = []
    if not r.logits_run:
        return fails
    if b.max_rel_diff is not None and r.max_rel_diff > b.max_rel_diff:
        fails.append(f"max |logit diff| / max |logit| = {r.max_rel_diff:.3g} > {b.max_rel_diff:g}")
    if r.mean_kl > b.max_mean_kl:
        fails.append(f"mean KL(ref||cand) = {r.mean_kl:.3g} > {b.max_mean_kl:g}")
    if r.top1_agreement < b.min_top1:
        fails.append(f"top-1 agreement = {r.top1_agreement:.4f} < {b.min_top1:g}")
    if r.greedy_steps and b.min_greedy_match > 0:
        matched = r.greedy_steps if r.greedy_first_divergence is None else r.greedy_first_divergence
        if matched / r.greedy_steps < b.min_greedy_match:
            fails.append(f"greedy continuation diverges at step {r.greedy_first_divergence} of {r.greedy_steps}")
    return fails


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
    """One row per candidate under a header, the name column as wide as the longest name."""
    width = max([len("candidate"), *(len(r.name) for r in results)])
    head = f"{'candidate':<{width}} {'dtype':<8} {'max|diff|':>10} {'rel':>9} {'mean KL':>9} {'max KL':>9} " \
           f"{'top-1':>7} {'greedy':>16} {'weights':>14}  verdict"
    rows = [head, "-" * len(head)]
    for r in results:
        if r.logits_run:
            figures = (f"{r.max_abs_diff:10.3g} {r.max_rel_diff:9.2g} {r.mean_kl:9.2g} {r.max_kl:9.2g} "
                       f"{r.top1_agreement:7.2%} {r.greedy_summary:>16}")
        else:
            figures = f"{'logits not run':>66}"
        rows.append(
            f"{r.name:<{width}} {r.dtype:<8} {figures} {r.weights_summary:>14}  "
            + ("pass" if r.passed else "FAIL: " + "; ".join(r.failures))
            + (f" ({r.note})" if r.note else "")
        )
    return "\n".join(rows)
