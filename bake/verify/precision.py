"""The precision chain of a candidate, and the budget it decides.

A candidate went through steps that each may round: the bake stores its dtype (``down_proj`` is
``W_down * s`` rounded once; every other tensor is the base's), an ONNX export computes in its dtype,
and quantization stores 8- or 4-bit weights. Against the hooked model a candidate is judged by the
coarsest step of its chain: a float32 export of a bfloat16 bake holds exactly the bake's weights
widened, so it can be no closer to the hooked model than the bake, and gets the bfloat16 budget.
What the export adds on top of the bake is judged separately, against the bake itself, by the
budget of the export's own steps (float32: to float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

# Finest first. float16 keeps 11 significant bits, bfloat16 8; int8/int4 are blockwise weight codes.
ORDER: tuple[str, ...] = ("float32", "float16", "bfloat16", "int8", "int4")
_WHAT = {
    "bake": "the bake, which stores {dtype} (down_proj = W_down * s rounded once to {dtype})",
    "export": "the export, which computes in {dtype}",
    "quantization": "quantization: {weights} are {dtype} codes (blocks of 32 or 256, within half a step of the bake's)",
}
LINEAR = "the linear weights"
# an ONNX export whose token lookup reads int codes (GatherBlockQuantized): the input embedding is quantized too
WITH_EMBEDDING = {"shared": "the linear weights and the input embedding (the tied table, shared with lm_head)",
                  "quantized": "the linear weights and the input embedding (a table of its own)"}


@dataclass(frozen=True)
class Step:
    """One stage a candidate went through, and the precision it left the weights (or arithmetic) in."""

    stage: str  # "bake", "export" or "quantization"
    dtype: str
    weights: str = LINEAR  # quantization: which weights it coded

    def describe(self) -> str:
        return _WHAT[self.stage].format(dtype=self.dtype, weights=self.weights)

    def label(self) -> str:
        return f"{self.stage} {self.dtype}"


def checkpoint_chain(bake_dtype: str) -> list[Step]:
    return [Step("bake", bake_dtype)]


def export_chain(bake_dtype: str, export_dtype: str, quantization: str | None, weights: str = LINEAR) -> list[Step]:
    return [Step("bake", bake_dtype), *export_steps(export_dtype, quantization, weights)]


def export_steps(export_dtype: str, quantization: str | None, weights: str = LINEAR) -> list[Step]:
    """What an export adds on top of its bake (``weights``: which of them its quantization coded)."""
    return [Step("export", export_dtype)] + ([Step("quantization", quantization, weights)] if quantization else [])


def coarsest(chain: list[Step]) -> Step:
    """The step with the least precision (the first of equals)."""
    return max(chain, key=lambda s: ORDER.index(s.dtype))


def why(chain: list[Step]) -> str:
    """Which budget a chain gets and why, in one sentence."""
    step = coarsest(chain)
    path = " -> ".join(s.label() for s in chain)
    if step.dtype == "float32":
        return f"every step keeps float32 ({path}), so only float rounding may differ"
    return f"the coarsest step of {path} is {step.describe()}"
