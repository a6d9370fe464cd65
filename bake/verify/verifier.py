"""The verifier: prove a baked checkpoint (and its ONNX export) equals the hooked model.

The reference is always the *unmodified base* with ``down_proj`` pre-hooks (``bake.verify.reference``),
built from the bake manifest's record of base, gates and cut (or from what the user gives), never
from the bake's folded weights. Candidates: the baked checkpoint through transformers, and an ONNX
export through onnxruntime. Metrics and budgets are in ``bake.verify.metrics``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bake.errors import BakeError, ManifestMismatch
from bake.fold.plan import BakeOptions, plan_bake
from bake.gates.gate_math import Cut, GateSettings, compute_gates
from bake.gates.variant import load_variant
from bake.io.base_model import open_base_model, read_config
from bake.verify.bake_tensors import BakeFolder, PlannedBake
from bake.verify.metrics import DEFAULT_BUDGETS, Budget, CandidateResult, compare
from bake.verify.prompts import DEFAULT_PROMPTS, Messages, render_prompts
from bake.verify.reference import load_hooked_model
from bake.verify.weight_check import check_export_weights
from bake.write.manifest import MANIFEST_NAME, read_manifest


@dataclass
class TorchCandidate:
    """A transformers causal LM: the hooked reference or a baked checkpoint."""

    name: str
    dtype: str
    model: Any

    def logits(self, ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return self.model(torch.tensor([ids])).logits[0].to(torch.float32)

    def greedy(self, ids: list[int], max_new_tokens: int) -> list[int]:
        """Pure argmax chain through the KV cache (EOS not special, so every candidate runs N steps)."""
        tokens: list[int] = []
        with torch.no_grad():
            out = self.model(torch.tensor([ids]), use_cache=True)
            while len(tokens) < max_new_tokens:
                tokens.append(int(out.logits[0, -1].argmax()))
                if len(tokens) < max_new_tokens:
                    out = self.model(torch.tensor([[tokens[-1]]]), use_cache=True, **_cache_kwargs(self.model, out))
        return tokens


def _cache_kwargs(model: Any, out: Any) -> dict[str, Any]:
    """Pass the KV cache back under the name this transformers uses (``cache`` since 5.2x)."""
    if "cache" in inspect.signature(model.forward).parameters:
        return {"cache": out.cache}
    return {"past_key_values": out.past_key_values}


@dataclass
class ReferenceSpec:
    """What the hooked reference is built from."""

    base: Path
    gates: Path
    variant: str | None
    settings: GateSettings
    gate_sha256: str | None = None  # what the manifest recorded, if any
    base_revision: str | None = None  # Hub commit, when base/gates are Hub ids
    gates_revision: str | None = None

    def describe(self) -> dict[str, Any]:
        st = self.settings
        return {"base": str(self.base), "gates": str(self.gates), "variant": self.variant,
                "cut": {"kind": st.cut.kind, "value": st.cut.value}, "gate_mode": st.gate_mode,
                "scale_mode": st.scale_mode, "scale_scope": st.scale_scope}


def spec_from_manifest(manifest: dict[str, Any]) -> ReferenceSpec:
    """The reference a bake manifest describes (its threshold reproduces the cut exactly)."""
    t = manifest["cut"]["threshold"]
    cut = Cut("none") if t is None else Cut("threshold", float(t))
    settings = GateSettings(cut, manifest["gate_mode"], manifest["scale_mode"], manifest["scale_scope"])
    return ReferenceSpec(Path(manifest["base"]["source"]), Path(manifest["gates"]["source"]),
                         manifest["gates"]["variant"], settings, manifest["gates"]["sha256"],
                         manifest["base"].get("revision"), manifest["gates"].get("revision"))


@dataclass
class VerifyOptions:
    prompts: Sequence[Messages | str] = DEFAULT_PROMPTS
    greedy_tokens: int = 16
    budget_overrides: dict[str, float] = field(default_factory=dict)
    compute_dtype: torch.dtype = torch.float32


def budget_for(dtype: str, overrides: dict[str, float]) -> Budget:
    base = DEFAULT_BUDGETS[dtype]
    return Budget(**{**base.__dict__, **{k: v for k, v in overrides.items() if v is not None}})


def verify(
    spec: ReferenceSpec,
    candidates: Sequence[Any],
    options: VerifyOptions | None = None,
    bake: Path | None = None,
) -> dict[str, Any]:
    """Run the hooked reference and every candidate; the report says per candidate what passed.

    An ONNX candidate's weights are also checked against a bake (``bake.verify.weight_check``): the baked
    folder ``bake`` when given, else the bake its own ``bake_manifest.json`` describes, rebuilt in
    memory from the reference's base, gates and cut.
    """
    from transformers import AutoTokenizer

    options = options or VerifyOptions()
    base = Path(spec.base)
    config = read_config(base)
    gates = Path(spec.gates)
    variant = load_variant(gates, spec.variant, num_layers=int(config["num_hidden_layers"]),
                           intermediate_size=int(config["intermediate_size"]))
    if spec.gate_sha256 is not None and variant.sha256 != spec.gate_sha256:
        raise ManifestMismatch(
            f"the gates at {variant.gate_file} (sha256 {variant.sha256[:16]}...) are not the ones the bake "
            f"manifest records (sha256 {spec.gate_sha256[:16]}...); pass the gates it was baked from, "
            "or --ignore-manifest to compare against these anyway"
        )
    scale = compute_gates(variant.logits, spec.settings, variant.selected_thresholds).scale
    reference = TorchCandidate("hooked reference", "float32", load_hooked_model(base, scale, torch.float32))
    prompts = render_prompts(AutoTokenizer.from_pretrained(str(base)), options.prompts)
    cache: dict[str, Any] = {}
    results: list[CandidateResult] = []
    for c in candidates:
        weights = None
        if isinstance(c, OnnxCandidate):  # first: it is quick, and a missing bake is a user error
            source = BakeFolder(bake) if bake is not None else planned_bake(c.folder, base, variant, spec.settings)
            weights = check_export_weights(c.folder, source)
        if getattr(c, "not_run", None):
            result = CandidateResult.not_run(c.name, c.dtype, c.not_run)
        else:
            result = compare(reference, c, prompts, budget_for(c.dtype, options.budget_overrides),
                             options.greedy_tokens, cache)
        if weights is not None:
            result.add_weight_check(weights.to_dict(), weights.failure_lines())
        results.append(result)
    return {
        "passed": all(r.passed for r in results),
        "reference": spec.describe() | {"gate_sha256": variant.sha256},
        "num_prompts": len(prompts),
        "prompt_tokens": [len(p) for p in prompts],
        "greedy_tokens": options.greedy_tokens,
        "candidates": [r.to_dict() for r in results],
    }


def torch_candidate(folder: Path, compute_dtype: torch.dtype = torch.float32) -> TorchCandidate:
    """A checkpoint loaded with plain AutoModelForCausalLM; judged by its checkpoint dtype.

    The bake manifest names the layout; a checkpoint without one (baked elsewhere) is still checked.
    """
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    has_manifest = (folder / MANIFEST_NAME).is_file()
    layout = read_manifest(folder)["layout"] if has_manifest else "no manifest"
    config = read_config(folder)
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=compute_dtype).eval()
    return TorchCandidate(f"checkpoint ({layout})", dtype, model)


@dataclass
class OnnxCandidate:
    """An ONNX export run by ONNX Runtime (``export.runtime.ort_loop``), judged by its export dtype and its weights."""

    name: str
    dtype: str
    model: Any  # export.runtime.ort_loop.OnnxCausalLM; None when the export cannot run here
    folder: Path
    not_run: str | None = None  # why its logits cannot be computed on this machine

    def logits(self, ids: list[int]) -> torch.Tensor:
        return torch.from_numpy(self.model.logits(ids))

    def greedy(self, ids: list[int], max_new_tokens: int) -> list[int]:
        return [int(t) for t in self.model.greedy([ids], max_new_tokens, eos_ids=set(), pad_id=0)[0]]


def onnx_candidate(folder: Path, device: str = "auto") -> OnnxCandidate:
    """An export folder as a candidate; a quantized export is judged by its weight type (int4, int8).

    A ``--target cuda`` export on a machine without CUDA is a candidate whose logits are not run
    (its fused q/k norm has no CPU kernel); verify then judges it by its weight check alone and says so.
    """
    from export.install import require_onnxruntime

    require_onnxruntime()
    from export.install import pick_device
    from export.onnx.folder import read_export_folder
    from export.runtime.ort_loop import OnnxCausalLM

    io = read_export_folder(folder)
    quant = io.get("quantization")
    dtype = quant["weights"] if quant else io["dtype"]
    target = io.get("target", "portable")
    if target == "cuda" and pick_device(device) == "cpu":
        return OnnxCandidate(f"onnx (cuda graph, {io['layout']}, not run)", dtype, None, Path(folder),
                             "logits NOT compared: a --target cuda export runs only on CUDA and this onnxruntime "
                             "has no CUDA provider; only its weights were checked")
    model = OnnxCausalLM(folder, device=device)
    return OnnxCandidate(f"onnx ({target} graph, {io['layout']}, on {model.device})", dtype, model, Path(folder))


def planned_bake(export: Path, base: Path, variant: Any, settings: GateSettings) -> PlannedBake:
    """The bake an export's own ``bake_manifest.json`` describes (layout, dtype, padding), with ``settings``."""
    if not (Path(export) / MANIFEST_NAME).is_file():
        raise BakeError(f"{export} has no {MANIFEST_NAME}, so the bake it was made from is unknown and its weights "
                        "cannot be checked: give --baked with the baked folder it was exported from")
    m = read_manifest(export)
    options = BakeOptions(layout=m["layout"], dtype=m["dtype"], pad_multiple=m.get("pad_multiple") or 1,
                          allow_all_off=True, progress=False)
    plan = plan_bake(open_base_model(base), variant, settings, options)
    return PlannedBake(plan, f"the bake {Path(export) / MANIFEST_NAME} describes, rebuilt from {base}")


