"""The numbers an evaluation reports, defined so that anyone can recompute them (docs/EVAL.md).

Text sets. Each row is scored on its own from its first token: for a row of ``n`` tokens ``x_1 .. x_n`` (after
truncation to ``max_length``), the model's logits at positions 1 .. n-1 predict ``x_2 .. x_n``, so the row has
``n - 1`` predicted tokens (a row of one token has none). Per set:

- ``tokens``: the predicted tokens of all rows;
- ``nll``: ``-sum log softmax(logits_t)[x_{t+1}]`` over them, divided by ``tokens`` (nats per token);
- ``perplexity``: ``exp(nll)``;
- with a reference model: ``delta_nll`` = ``nll - nll_ref``, and ``mean_kl`` = the mean over the same predicted
  positions of ``KL(p_ref || p) = sum_v p_ref(v) (log p_ref(v) - log p(v))``, ``p = softmax(logits_t)``.

Log-softmax is taken in float32 with the maximum subtracted (torch's, on every core), and sums are accumulated in
float64: within 1e-6 relative of a float64 computation (tests recompute it so). A set whose nll is not finite (a
model with NaN or infinite outputs) reports ``nll`` None and says why; a perplexity past float64's range is None.
QA sets: a greedy answer, normalized by SQuAD v1.1's evaluation rule (lower case, punctuation and the articles
a/an/the removed, whitespace collapsed); ``exact_match`` is the share of rows whose answer equals one alias,
``contains`` the share whose answer contains one, both after that normalization. An alias that normalizes to
nothing ("The The") matches no answer. (PopQA's own scoring is a raw substring match of an alias, its lower-case or
capitalized form, in the answer: ``contains`` here is that test on normalized text.)
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
import torch


def log_softmax(logits: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Row-wise log softmax, float32."""
    return torch.log_softmax(torch.as_tensor(logits, dtype=torch.float32), dim=-1)


def row_nll(logits: np.ndarray, ids: list[int]) -> tuple[float, torch.Tensor]:
    """Summed negative log-likelihood of ``ids[1:]`` under ``logits[:-1]`` ([len(ids), V]), and the log-probs used."""
    logp = log_softmax(logits[: len(ids) - 1])
    picked = logp.gather(1, torch.as_tensor(ids[1:], dtype=torch.long)[:, None])
    return float(-picked.double().sum()), logp


def row_kl(ref_logp: torch.Tensor, logp: torch.Tensor) -> float:
    """Summed KL(ref || model) over the positions of two log-prob arrays [T, V], summed in float64."""
    return float((ref_logp.exp() * (ref_logp - logp)).double().sum())


@dataclass
class TextTally:
    """One text set's running sums for one model."""

    rows: int = 0
    tokens: int = 0
    nll_sum: float = 0.0
    kl_sum: float | None = None
    truncated: int = 0

    def add(self, nll: float, tokens: int, kl: float | None = None) -> None:
        self.rows += 1
        self.tokens += tokens
        self.nll_sum += nll
        if kl is not None:
            self.kl_sum = (self.kl_sum or 0.0) + kl

    def figures(self, reference: dict[str, Any] | None = None, comparable: bool = True) -> dict[str, Any]:
        """The set's figures; against ``reference`` (its figures) when the two scored the same tokens
        (``comparable``: another tokenizer counts other tokens, so no delta_nll)."""
        nll = self.nll_sum / self.tokens if self.tokens else None
        out: dict[str, Any] = {"rows": self.rows, "tokens": self.tokens, "nll": nll, "perplexity": None,
                               "truncated": self.truncated}
        if nll is not None and not math.isfinite(nll):
            out["nll"] = nll = None
            out["nll_note"] = "the model's outputs are not finite (NaN or infinite logits): no nll"
        elif nll is not None:
            try:
                out["perplexity"] = math.exp(nll)
            except OverflowError:
                out["perplexity_note"] = f"exp(nll) = exp({nll:.1f}) is past float64's range"
        if reference is not None and comparable and nll is not None and reference.get("nll") is not None:
            out["delta_nll"] = nll - reference["nll"]
            kl = self.kl_sum / self.tokens if self.kl_sum is not None else None
            out["mean_kl"] = kl if kl is None or math.isfinite(kl) else None
        return out


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's answer normalization: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def numbers_in(text: str) -> list[Decimal]:
    """The numbers written in ``text``, in order (thousands commas dropped): what a final-number answer is read
    from."""
    out = []
    for m in _NUMBER.findall(text):
        try:
            out.append(Decimal(m.replace(",", "")))
        except InvalidOperation:
            continue
    return out


@dataclass
class QATally:
    """Greedy answers against their references. ``aliases``: the SQuAD-normalized answer equals (exact_match) or
    contains (contains) an alias. ``final_number``: the answer's last number equals the reference's value
    (exact_match, as lm-eval's gsm8k "flexible-extract"), or any number in it does (contains)."""

    scoring: str = "aliases"
    rows: int = 0
    exact: int = 0
    contains: int = 0
    answers: list[str] = field(default_factory=list)

    def add(self, answer: str, aliases: tuple[str, ...]) -> None:
        self.rows += 1
        self.answers.append(answer)
        if self.scoring == "final_number":
            want = {n for a in aliases for n in numbers_in(a)[-1:]}
            got = numbers_in(answer)
            self.exact += bool(got) and got[-1] in want
            self.contains += any(g in want for g in got)
            return
        normalized = normalize_answer(answer)
        wanted = [w for w in (normalize_answer(a) for a in aliases) if w]  # an alias of nothing matches nothing
        self.exact += any(normalized == w for w in wanted)
        self.contains += any(w in normalized for w in wanted)

    def figures(self) -> dict[str, Any]:
        return {"rows": self.rows, "exact_match": self.exact / self.rows if self.rows else None,
                "contains": self.contains / self.rows if self.rows else None}
