"""The verifier: prove a baked checkpoint (and its ONNX, GGUF and MLX exports) equals the hooked model.

The reference is always the *unmodified base* with ``down_proj`` pre-hooks (``bake.verify.reference``),
built from the bake manifest's record of base, gates and cut (or from what the user gives), never
from the bake's folded weights. The reference runs first, then each candidate, one model in memory at
a time; only the logits the comparisons still need are kept (the reference's, and the bake's while an
export is compared with it).

Each candidate is judged against the hooked reference by the coarsest step of its precision chain
(``bake.verify.precision``): the bake's dtype, the export's dtype, quantization. Exports are then proven
against what they must equal exactly:

- a float export against the bake (the checkpoint's run, or the bake rebuilt from its plan), by the budget
  of the export's own dtype: float32 to float rounding;
- a quantized export against its own weights, dequantized by verify and run in float32 by transformers
  (``bake.verify.export_model``), within the rounding of ONNX Runtime's kernels (``KERNEL_BOUNDS``); and
  where the hooked model's logits are too flat for top-1 and KL to tell a right export from a wrong one
  (too few positions have a top-2 margin above twice the quantization's own logit error), those are
  reported, not judged, and the verdict rests on the weight check and this exact comparison.

Every export's weights are also checked tensor by tensor against the bake (``bake.verify.weights.weight_check``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bake.errors import BakeError, ManifestMismatch
from bake.gates.gate_math import Cut, GateSettings, compute_gates
from bake.gates.variant import GateVariant, load_variant
from bake.gates.widths import padded_width
from bake.io.base_model import open_base_model, read_config
from bake.verify import precision
from bake.verify.candidates import BatchRunner, Candidate, Outputs, Runner, Sequences, TorchRunner, release_memory
from bake.verify.metrics import (
    DEFAULT_BUDGETS,
    INT8_ACTIVATIONS_BOUND,
    INT8_ACTIVATIONS_MEASURED,
    Budget,
    CandidateResult,
    Comparison,
    Tally,
)
from bake.verify.prompts import DEFAULT_PROMPTS, Messages, render_prompt_texts
from bake.verify.reference import ActivationRange, record_activation_range, streamed_hooked_model
from bake.verify.tensor_model import bake_layers, qwen3_model
from bake.verify.weights.bake_tensors import BakeFolder, BakeTensors, DerivedBake, config_widths
from bake.verify.weights.checkpoint_check import check_bake_weights
from bake.verify.weights.weight_check import check_export_weights
from bake.write.checkpoint import check_carried_files
from bake.write.manifest import MANIFEST_NAME, read_manifest

REFERENCE = "the hooked reference"
THE_BAKE = "the bake"
DEQUANTIZED = "its dequantized weights"
DEQ_FLOAT = "its dequantized weights, float activations"
# A block-quantized GGUF in llama.cpp against its own dequantized weights in float32 may differ by this many times
# what llama.cpp's rounding of the activations, emulated on those weights, does to them (measured: 0.88-1.59 times
# on correct q8_0, q4_0, q6_k, q4_k_m and q5_k_m files of the 4-layer and the narrow 28-layer test models, where that
# rounding moves the logits by 2.6-3.7 % and 25-41 % of the largest), and never less than GGUF_NOISE_FLOOR.
GGUF_NOISE_FACTOR = 2.5
GGUF_NOISE_FLOOR = 1e-3


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
    base_hub_id: str | None = None  # where to fetch base/gates when their recorded folder is not on this machine
    gates_hub_id: str | None = None

    def describe(self) -> dict[str, Any]:
        st = self.settings
        return {"base": str(self.base), "gates": str(self.gates), "variant": self.variant,
                "cut": {"kind": st.cut.kind, "value": st.cut.value, "rule": st.rule}, "gate_mode": st.gate_mode,
                "scale_mode": st.scale_mode, "scale_scope": st.scale_scope}


def spec_from_manifest(manifest: dict[str, Any]) -> ReferenceSpec:
    """The reference a bake manifest describes (its threshold, or its uniform off-fraction, reproduces the cut
    exactly). Inputs are the recorded local folders where they still exist, else their Hub ids."""
    t, rule = manifest["cut"]["threshold"], manifest["cut"].get("rule", "threshold")
    cut = Cut("none") if t is None else Cut("threshold", float(t))
    if rule == "uniform":  # the same k per layer: round(F * I) with the F the bake used
        cut = Cut("off_fraction", float(manifest["cut"]["target_off_fraction"]))
    settings = GateSettings(cut, manifest["gate_mode"], manifest["scale_mode"], manifest["scale_scope"], rule)
    (base, base_id), (gates, gates_id) = (_recorded(manifest[k]) for k in ("base", "gates"))
    return ReferenceSpec(base, gates, manifest["gates"]["variant"], settings, manifest["gates"]["sha256"],
                         manifest["base"].get("revision"), manifest["gates"].get("revision"), base_id, gates_id)


def _recorded(entry: dict[str, Any]) -> tuple[Path, str | None]:
    """An input as a manifest records it: (its folder here, or its public source; its Hub id). A manifest of format
    1 recorded a Hub id or an absolute path in ``source`` (a Hub id with a revision)."""
    hub_id = entry["hub_id"] if "hub_id" in entry else (entry["source"] if entry.get("revision") else None)
    local = entry.get("local_path")
    return Path(local if local and Path(local).exists() else entry["source"]), hub_id


@dataclass
class VerifyOptions:
    prompts: Sequence[Messages | str] = DEFAULT_PROMPTS
    greedy_tokens: int = 16
    budget_overrides: dict[str, float | None] = field(default_factory=dict)  # tighten the hooked-reference budget
    compute_dtype: torch.dtype = torch.float32


@dataclass
class _Run:
    """What one verification holds between candidates."""

    spec: ReferenceSpec
    variant: GateVariant
    options: VerifyOptions
    sequences: Sequences
    reference: Outputs
    bake_dir: Path | None
    scale: np.ndarray
    prompt_texts: list[str]
    bake_outputs: Outputs | None = None


def verify(
    spec: ReferenceSpec,
    candidates: Sequence[Candidate],
    options: VerifyOptions | None = None,
    bake: Path | None = None,
) -> dict[str, Any]:
    """Run the hooked reference, then every candidate in turn; the report says per candidate what passed and why.

    ``spec`` names local folders (``bake.hub.sources.resolve_reference`` turns Hub ids into them). An ONNX
    candidate is checked against a bake: the baked folder ``bake`` when given, else the bake its own
    ``bake_manifest.json`` describes, rebuilt in memory from the reference's base, gates and cut.
    """
    from transformers import AutoTokenizer

    options = options or VerifyOptions()
    stages = _Stages()
    base = Path(spec.base)
    config = read_config(base)
    variant = load_variant(Path(spec.gates), spec.variant, num_layers=int(config["num_hidden_layers"]),
                           intermediate_size=int(config["intermediate_size"]))
    if spec.gate_sha256 is not None and variant.sha256 != spec.gate_sha256:
        raise ManifestMismatch(
            f"the gates at {variant.gate_file} (sha256 {variant.sha256[:16]}...) are not the ones the bake "
            f"manifest records (sha256 {spec.gate_sha256[:16]}...); pass the gates it was baked from, "
            "or --ignore-manifest to compare against these anyway"
        )
    check_carried_files(base)  # the tokenizer and chat template the prompts are rendered with must parse
    for folder in {Path(c.folder) for c in candidates if c.kind == "checkpoint"} | ({Path(bake)} if bake else set()):
        open_base_model(folder)  # each checkpoint's config and MLP shapes (its per-layer widths), before any model runs
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    texts = render_prompt_texts(tokenizer, options.prompts)
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    scale = compute_gates(variant.logits, spec.settings, variant.selected_thresholds).scale
    activations: list[ActivationRange] = []

    def hooked() -> TorchRunner:
        model = streamed_hooked_model(base, scale)
        activations.append(record_activation_range(model))
        return TorchRunner(model)

    sequences, reference = _generate(hooked, prompts, options.greedy_tokens)
    stages.done("hooked reference")
    headroom = activations[0].float16_headroom()
    activations[0].remove()
    run = _Run(spec, variant, options, sequences, reference, Path(bake) if bake is not None else None, scale, texts)
    try:
        results = []
        for c in candidates:
            results.append(_verify_one(run, c))
            stages.done(c.name)
    finally:  # the GGUF files verify parsed are memory-mapped: let them go (a failed cut's file may be removed)
        from bake.io.gguf_reader import release_readers

        release_readers()
    for r, c in zip(results, candidates):
        if _computes_in_float16(c):
            r.float16_headroom = headroom
    return {
        "passed": all(r.passed for r in results),
        "reference": spec.describe() | {"gate_sha256": variant.sha256},
        "num_prompts": len(prompts),
        "prompt_tokens": [len(p) for p in prompts],
        "positions": sum(len(seq) for seq in sequences.inputs),
        "greedy_tokens": options.greedy_tokens,
        "reference_activations": headroom,
        "candidates": [r.to_dict() for r in results],
        "stages": stages.entries,
        "seconds": round(time.monotonic() - stages.started, 2),
        "peak_rss_mib": _peak_rss_mib(),
    }


class _Stages:
    """Time and peak memory per stage of a verification (the report's ``stages``), so a regression shows."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()
        self.entries: list[dict[str, Any]] = []

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.entries.append({"stage": name, "seconds": round(now - self.last, 2), "peak_rss_mib": _peak_rss_mib()})
        self.last = now


def _peak_rss_mib() -> float:
    """The process's peak resident memory so far, in MiB (ru_maxrss: kilobytes on Linux)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _computes_in_float16(c: Candidate) -> bool:
    """Whether a candidate's activations are float16 (a float16 export, or a float16 GGUF), so that the reference's
    activation peaks say how close it runs to float16's range."""
    return c.kind != "checkpoint" and c.export_dtype == "float16"


def _verify_one(run: _Run, c: Candidate) -> CandidateResult:
    """One candidate: its weight check (exports), its run, and its comparisons."""
    chain = [s.label() for s in c.chain]
    if c.kind == "onnx":  # first: it is quick, and a wrong export fails on it whatever its logits say
        weights = check_export_weights(c.folder, _bake_tensors(run, c.folder))
    elif c.kind == "gguf":
        from bake.verify.weights.gguf_check import check_gguf_weights

        if c.manifest is None and run.bake_dir is None:
            raise BakeError(f"{c.folder} carries no lambda-bake manifest, so the bake it was made from is unknown: "
                            "give --baked with the baked folder it was exported from")

        weights = check_gguf_weights(c.folder, _bake_tensors(run, c.folder, c.manifest))
    elif c.kind == "mlx":
        from bake.verify.weights.mlx_check import check_mlx_weights

        weights = check_mlx_weights(c.folder, _bake_tensors(run, c.folder))
    else:
        weights = check_bake_weights(BakeFolder(c.folder), _derived_bake(run, c.folder))
    carried = _carried(run, c)
    if c.not_run:
        result = CandidateResult.not_run(c.name, c.dtype, c.not_run, chain)
    elif c.kind != "checkpoint" and not weights.passed:  # a wrong export: more model runs would only say so again
        result = CandidateResult.not_run(c.name, c.dtype, "logits not compared: its weights are not the bake's "
                                                          "(see the weight check)", chain)
    else:
        result = _compare(run, c, chain)
    if weights is not None:
        result.add_weight_check(weights.to_dict(), weights.failure_lines())
    result.add_carried_check(carried.to_dict(), carried.failure_lines())
    return result


def _carried(run: _Run, c: Candidate) -> Any:
    """What the candidate carries besides weights, against the base (``bake.verify.carried``); for a GGUF that llama.cpp
    runs here, also llama.cpp's tokenization of verify's prompts against the base tokenizer's."""
    from bake.verify.carried import check_folder, check_gguf
    from bake.verify.modelfile_check import check_modelfile

    base = Path(run.spec.base)
    if c.kind != "gguf":
        manifest = read_manifest(c.folder) if (Path(c.folder) / MANIFEST_NAME).is_file() else None
        return check_folder(c.folder, base, c.kind, manifest)
    report = check_gguf(c.folder, base)
    modelfile = check_modelfile(Path(c.folder), base)  # Ollama's instructions beside the file, when they are there
    report.proven += modelfile.proven
    report.failures += modelfile.failures
    if report.passed and not c.not_run:
        from export.runtime.llama_loop import llama_tokens

        report.proven.append("llama.cpp's tokenization of verify's prompts")
        for i, (got, want) in enumerate(zip(llama_tokens(c.folder, run.prompt_texts), run.sequences.prompts)):
            if got != want:
                at = next((k for k, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
                report.fail(f"prompt {i}", f"llama.cpp tokenizes it into {len(got)} tokens and the base tokenizer into "
                                           f"{len(want)}; they first differ at token {at}")
    return report


def _compare(run: _Run, c: Candidate, chain: list[str]) -> CandidateResult:
    """Run ``c`` once, counting it against the reference and its other yardsticks prompt by prompt."""
    budget = DEFAULT_BUDGETS[precision.coarsest(c.chain).dtype].with_overrides(run.options.budget_overrides)
    yardsticks: list[Yardstick] = []
    checks: list[Comparison] = []
    not_judged = None
    c.max_length = max(len(seq) for seq in run.sequences.inputs) + 1
    ends = _ends(run)  # the graph's structure, not the prompts, is on trial: its shortest and longest sequence
    if c.kind == "gguf" and c.quantization is not None:
        dequantized = _dequantized_outputs(run, c, ends)
        noise = _activation_noise(run, c, dequantized, ends)
        bound = max(GGUF_NOISE_FACTOR * noise, GGUF_NOISE_FLOOR)
        not_judged = _flatness(run.reference, dequantized, budget)
        yardsticks.append(Yardstick(
            DEQUANTIZED, dequantized, Budget(bound, None, None, None), "q8-act",
            "the yardstick is the file's own weights, dequantized by gguf-py and run in float32 by transformers (on "
            "the shortest and the longest sequence); llama.cpp's CPU kernels round every matmul input to 8 bits for "
            f"block-quantized weights, which, emulated on the same weights, moves these logits by {noise:.2%} of the "
            f"largest, so the file may differ from them by {GGUF_NOISE_FACTOR:g} times that ({bound:.2%})"))
    elif c.kind == "mlx" and c.quantization is not None:
        dequantized = _dequantized_outputs(run, c, None)
        not_judged = _flatness(run.reference, dequantized, budget)
        yardsticks.append(Yardstick(
            DEQUANTIZED, dequantized, own_budget(c.export_dtype), c.export_dtype,
            "the yardstick is the export's own weights, dequantized by verify and run in float32 by transformers; "
            f"mlx's quantized matmul computes on {c.export_dtype} activations, so the export may differ from it only "
            f"by its own {c.export_dtype} arithmetic"))
    elif c.kind in ("onnx", "gguf", "mlx") and c.quantization is None:
        yardsticks.append(Yardstick(
            THE_BAKE, _bake_outputs(run, c.folder, c.manifest), own_budget(c.export_dtype), c.export_dtype,
            "the export holds the bake's weights (the weight check proves it), so it may differ from the bake only "
            f"by its own {c.export_dtype} arithmetic"))
    elif c.kind == "onnx":
        dequantized = _dequantized_outputs(run, c, ends)
        not_judged = _flatness(run.reference, dequantized, budget)
        level = int(c.quantization.get("accuracy_level", 0))
        exact = Yardstick(DEQ_FLOAT if level else DEQUANTIZED, dequantized, own_budget(c.export_dtype), c.export_dtype,
                          f"the yardstick is the export's own weights, dequantized by verify and run in float32 by "
                          f"transformers; with float activations the graph may differ from it only by its own "
                          f"{c.export_dtype} arithmetic (on the shortest and the longest sequence)")
        if level:
            from bake.verify.export_model import float_activations
            from export.onnx.folder import read_export_folder

            graph = float_activations(c.folder, read_export_folder(c.folder))
            checks += _run_against(lambda: _open_onnx(c.folder, c.device, graph), run, [exact], c.name, subset=ends)[1]
            del graph
            yardsticks.append(Yardstick(
                DEQUANTIZED, dequantized, Budget(INT8_ACTIVATIONS_BOUND, None, None, None), "int8-act",
                f"ONNX Runtime's CPU MatMulNBits (accuracy level {level}) quantizes the activations to int8, which "
                f"moved the logits of correct exports by up to {INT8_ACTIVATIONS_MEASURED:.1%} of the largest on "
                "the 28-layer test model; this bound only catches gross kernel errors (on the shortest and the "
                "longest sequence)"))
        else:
            yardsticks.append(exact)
    keep = c.kind == "checkpoint" and run.bake_outputs is None
    outputs, comparisons = _run_against(c.open, run, [Yardstick(REFERENCE, run.reference, budget,
                                                                   precision.coarsest(c.chain).dtype,
                                                                   precision.why(c.chain), not_judged),
                                                         *yardsticks], c.name, keep=keep)
    if keep:  # a checkpoint is the bake: exports after it are compared with its run
        run.bake_outputs = outputs
    return CandidateResult.from_comparisons(c.name, c.dtype, chain, comparisons[0], checks + comparisons[1:])


def _ends(run: _Run) -> list[int]:
    """The shortest and the longest of the reference's sequences (their indices, in order)."""
    lengths = [len(seq) for seq in run.sequences.inputs]
    return sorted({lengths.index(min(lengths)), lengths.index(max(lengths))})


def _activation_noise(run: _Run, c: Candidate, dequantized: Outputs, subset: list[int]) -> float:
    """How far llama.cpp's rounding of the activations (``bake.verify.llama_activations``), applied to the GGUF's own
    dequantized weights, moves their logits on ``subset``: the largest difference, relative to their largest logit."""
    from bake.verify.export_model import gguf_model

    config = dict(read_config(Path(run.spec.base)))
    rounded = _score(lambda: TorchRunner(gguf_model(c.folder, config, activations=True)), run, subset)
    tally = Tally(0)
    for i in subset:
        tally.add(dequantized.of(i)[0], rounded.of(i)[0], [], [], c.name)
    return tally.figures().max_rel_diff


def own_budget(dtype: str) -> Budget:
    """The budget of a comparison that is exact but for ``dtype`` arithmetic: float32 by its max difference alone
    (top-1 and greedy tokens add nothing to a bound of 1e-4 of the largest logit, and near-ties of flat models
    would make them noise); float16 by its calibrated KL and top-1."""
    return DEFAULT_BUDGETS[dtype].logit_budget_only() if dtype == "float32" else DEFAULT_BUDGETS[dtype]


@dataclass
class Yardstick:
    """What a candidate is compared with: its outputs, the budget, the budget's name and why it applies."""

    against: str
    outputs: Outputs
    budget: Budget
    budget_dtype: str
    why: str
    not_judged: str | None = None


def _run_against(make: Callable[[], Runner], run: _Run, yardsticks: list[Yardstick], name: str, keep: bool = False,
                 subset: list[int] | None = None) -> tuple[Outputs | None, list[Comparison]]:
    """Load a model (``make``), score it on the reference's sequences (or the ``subset`` of them), counting it
    against each yardstick as it goes, and free it. With ``keep``, also return its outputs."""
    tallies = [Tally(run.options.greedy_tokens) for _ in yardsticks]
    outputs = Outputs() if keep else None
    runner = make()
    chosen = list(range(len(run.sequences.inputs))) if subset is None else subset
    for i, (first, logits) in zip(chosen, _scored(runner, run, chosen)):
        continuation = run.sequences.continuation(i, logits, first)
        for tally, y in zip(tallies, yardsticks):
            if y.outputs.holds(i):
                theirs, their_tokens = y.outputs.of(i)
                tally.add(theirs[first:], logits, their_tokens, continuation, name)
        if outputs is not None:
            outputs.add(i, _every_position(first, logits, name), continuation)
    del runner
    release_memory()
    return outputs, [Comparison(y.against, t.figures(), y.budget, y.budget_dtype, y.why, y.not_judged)
                     for t, y in zip(tallies, yardsticks)]


def _score(make: Callable[[], Runner], run: _Run, subset: list[int] | None = None) -> Outputs:
    """A yardstick's outputs on the reference's sequences, or the ``subset`` of them (the model is loaded, run and
    freed here)."""
    runner = make()
    out = Outputs(which=None if subset is None else [])
    chosen = list(range(len(run.sequences.inputs))) if subset is None else subset
    for i, (first, logits) in zip(chosen, _scored(runner, run, chosen)):
        out.add(i, _every_position(first, logits, "a yardstick"), run.sequences.continuation(i, logits))
    del runner
    release_memory()
    return out


def _scored(runner: Runner, run: _Run, chosen: list[int]) -> Iterable[tuple[int, torch.Tensor]]:
    """The runner's (first position, logits) on the ``chosen`` reference sequences."""
    return runner.score_from([run.sequences.inputs[i] for i in chosen], [run.sequences.firsts[i] for i in chosen])


def _every_position(first: int, logits: torch.Tensor, name: str) -> torch.Tensor:
    """Logits kept as a yardstick must cover every position (those of transformers, llama.cpp and mlx-lm do)."""
    if first:
        raise ValueError(f"{name} scored from position {first}, not every position: it cannot be a yardstick")
    return logits


def _generate(make: Callable[[], TorchRunner], prompts: list[list[int]], greedy_tokens: int
              ) -> tuple[Sequences, Outputs]:
    runner = make()
    result = runner.generate(prompts, greedy_tokens)
    del runner
    release_memory()
    return result


def _open_onnx(folder: Path, device: str, graph: tuple[bytes, dict[str, Any]]) -> Runner:
    from export.runtime.ort_loop import OnnxCausalLM

    return BatchRunner(OnnxCausalLM(folder, device=device, graph=graph), from_prompt_end=True)


def _bake_tensors(run: _Run, export: Path, manifest: dict[str, Any] | None = None) -> BakeTensors:
    """The bake an export is checked against: the baked folder given (itself proven by the checkpoint's check),
    else the bake that the base and the gates define, in the layout the export's manifest records."""
    return BakeFolder(run.bake_dir) if run.bake_dir is not None else _derived_bake(run, export, manifest)


def _derived_bake(run: _Run, folder: Path, manifest: dict[str, Any] | None = None) -> DerivedBake:
    """What a bake must hold, derived from the base and the gates (``DerivedBake``), in the layout, dtype and
    width that ``folder``'s manifest (or ``manifest``, a GGUF's own) records (a checkpoint without one: its
    config's)."""
    base = Path(run.spec.base)
    if manifest is not None or (Path(folder) / MANIFEST_NAME).is_file():  # its layout and dtype; its cut's width
        m = manifest if manifest is not None else read_manifest(folder)
        layout, dtype, multiple = m["layout"], m["dtype"], m.get("pad_multiple") or 1
        kept = [int(k) for k in (run.scale != 0).sum(axis=1)]
        width = padded_width(kept, multiple) if layout == "pruned" else None
    else:
        config, base_width = read_config(folder), int(read_config(base)["intermediate_size"])
        dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
        widths = config_widths(config)
        width, multiple = max(widths), 1
        layout = "ragged" if len(set(widths)) > 1 else "dense" if width == base_width else "pruned"
    return DerivedBake(base, run.scale, layout=layout, dtype=dtype, width=width, pad_multiple=multiple,
                       label=f"the {layout} {dtype} bake that {base} and the gates define")


def _bake_outputs(run: _Run, export: Path, manifest: dict[str, Any] | None = None) -> Outputs:
    """The bake's run: the checkpoint candidate's, when it ran before; else the bake's tensors run in transformers
    (the bake ``export``'s manifest records, or ``manifest``: a lone GGUF's own, embedded in the file)."""
    if run.bake_outputs is None:
        bake = _bake_tensors(run, export, manifest)
        run.bake_outputs = _score(lambda: TorchRunner(qwen3_model(bake.config, bake_layers(bake))), run)
    return run.bake_outputs


def _dequantized_outputs(run: _Run, c: Candidate, subset: list[int] | None) -> Outputs:
    from bake.verify.export_model import export_model, gguf_model, mlx_model
    from export.onnx.folder import read_export_folder

    if c.kind == "mlx":
        config = dict(read_config(Path(run.spec.base)))
        return _score(lambda: TorchRunner(mlx_model(c.folder, config)), run, subset)
    if c.kind == "gguf":
        config = dict(read_config(Path(run.spec.base)))
        return _score(lambda: TorchRunner(gguf_model(c.folder, config)), run, subset)
    return _score(lambda: TorchRunner(export_model(c.folder, read_export_folder(c.folder))), run, subset)


def _flatness(reference: Outputs, dequantized: Outputs, budget: Budget) -> str | None:
    """Why top-1/KL against the hooked reference cannot judge a quantized export, or None when they can.

    At a position whose reference top-2 margin exceeds twice the largest logit change the weight
    quantization itself causes (the dequantized model against the reference), no such change can flip
    the top-1 token. If fewer positions than ``min_top1`` asks for are like that, the logits are too flat.
    Counted on the sequences the dequantized model was run on.
    """
    stable = positions = 0
    for i in dequantized.which if dequantized.which is not None else range(len(dequantized.logits)):
        ref, deq = reference.of(i)[0], dequantized.of(i)[0]
        top2 = ref.topk(2, dim=-1).values
        margin = top2[:, 0] - top2[:, 1]
        error = (deq - ref).abs().amax(-1)
        stable += int((margin > 2 * error).sum())
        positions += ref.shape[0]
    share = stable / max(positions, 1)
    if budget.min_top1 is None or share >= budget.min_top1:
        return None
    return (f"the hooked model's logits are too flat to judge top-1 and KL at this precision: only {share:.1%} of "
            f"positions have a top-2 margin above twice the quantization's own logit error (top-1 needs "
            f"{budget.min_top1:.0%}); they are reported, not judged, and the verdict rests on the weight check and "
            "the exact comparison with its dequantized weights")
