"""verify on bfloat16 bakes (as Qwen3 ships): the budget follows the precision chain, exports are proven against
the bake or their own dequantized weights, checkpoints are proven weight by weight, and flat random models get a
sound verdict instead of a noisy top-1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from bake.cli import main
from bake.gates.gate_math import Cut, GateSettings, compute_gates
from bake.gates.variant import load_variant
from bake.verify import precision
from bake.verify.candidates import Outputs
from bake.verify.metrics import DEFAULT_BUDGETS, Tally, kl_divergence
from bake.verify.verifier import _flatness
from bake.verify.weights.bake_tensors import BakeFolder, DerivedBake
from bake.verify.weights.checkpoint_check import check_bake_weights
from bake.write.pipeline import BakeOptions, bake_checkpoint

FAST = ["--quiet", "--json", "--greedy-tokens", "4"]


def bake_verify(base: Path, gates: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str
                ) -> tuple[int, dict[str, Any], str]:
    code = main(["bake", "--base", str(base), "--gates", str(gates), "--variant", "chat_energy_optA",
                 "--preset", "3", "--out", str(out), "--verify", *FAST, *extra])
    captured = capsys.readouterr()
    report = json.loads(captured.out) if captured.out.strip() else {}
    return code, report, captured.err


@pytest.mark.parametrize(("layout", "onnx_layout", "dtype", "target"), [
    ("dense", "as-is", "float32", "cpu"), ("pruned", "as-is", "float32", "portable"), ("dense", "ragged", "float32", "cpu"),
    ("dense", "as-is", "float16", "cpu"), ("pruned", "ragged", "float16", "portable")])
def test_bf16_bake_with_onnx_verify_passes_and_names_its_budgets(tiny_base_bf16: Path, tiny_gates: Path,
                                                                 tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 layout: str, onnx_layout: str, dtype: str,
                                                                 target: str) -> None:
    code, report, err = bake_verify(tiny_base_bf16, tiny_gates, tmp_path / "o", capsys, "--layout", layout,
                                    "--pad-multiple", "8", "--onnx", "--onnx-layout", onnx_layout, "--onnx-dtype",
                                    dtype, "--onnx-target", target)
    assert code == 0, err
    checkpoint, export = report["manifest"]["verification"]["candidates"]
    assert checkpoint["chain"] == ["bake bfloat16"] and checkpoint["budget"]["dtype"] == "bfloat16"
    assert "the bake, which stores bfloat16" in checkpoint["budget"]["why"]
    assert checkpoint["weights"]["passed"] and checkpoint["weights"]["weights_checked"] > 0  # proven bit for bit
    assert export["chain"] == ["bake bfloat16", f"export {dtype}"]
    assert export["budget"]["dtype"] == "bfloat16"  # float16 keeps more bits than bfloat16: the bake is coarsest
    assert export["max_rel_diff"] > 1e-4  # the bf16 bake itself is this far from the hooked model...
    (vs_bake,) = export["checks"]
    assert vs_bake["against"] == "the bake" and vs_bake["budget"]["dtype"] == dtype and vs_bake["passed"]
    if dtype == "float32":  # ...but the export is the bake, to float rounding
        assert vs_bake["max_rel_diff"] < 1e-5 and vs_bake["budget"]["max_rel_diff"] == 1e-4
    else:
        assert vs_bake["mean_kl"] <= DEFAULT_BUDGETS["float16"].max_mean_kl and vs_bake["top1_agreement"] >= 0.96


@pytest.mark.slow
@pytest.mark.parametrize("onnx_layout", ["as-is", "ragged"])
def test_bf16_bake_at_the_real_gate_shape(full_base_bf16: Path, full_gates: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str], onnx_layout: str) -> None:
    code, report, err = bake_verify(full_base_bf16, full_gates, tmp_path / "o", capsys, "--onnx", "--onnx-layout",
                                    onnx_layout)
    assert code == 0, err
    checkpoint, export = report["manifest"]["verification"]["candidates"]
    assert checkpoint["weights"]["passed"] and export["weights"]["passed"]
    assert export["checks"][0]["max_rel_diff"] < 3e-5  # float32 rounding over 28 layers: 1.3e-5 measured


def one_bf16_step(folder: Path, name: str) -> None:
    """Move one nonzero element of a stored tensor by one bfloat16 step (a bake that is almost right)."""
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    t = tensors[name].view(torch.int16).clone()
    index = int(torch.nonzero(tensors[name].reshape(-1))[3])
    t.view(-1)[index] += 1
    tensors[name] = t.view(torch.bfloat16)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_a_bf16_bake_one_step_off_fails_with_the_tensor_named(tiny_base_bf16: Path, tiny_gates: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bake", "--base", str(tiny_base_bf16), "--gates", str(tiny_gates), "--variant", "chat_mean",
                 "--preset", "2", "--out", str(tmp_path / "b"), "--quiet"]) == 0
    one_bf16_step(tmp_path / "b", "model.layers.1.mlp.down_proj.weight")
    code = main(["verify", "--baked", str(tmp_path / "b"), *FAST])
    captured = capsys.readouterr()
    (c,) = json.loads(captured.out)["candidates"]
    assert code == 3 and not c["passed"]
    assert all(f.startswith("weights: ") for f in c["failures"])  # its logits pass the bfloat16 budget...
    (failure,) = c["weights"]["failures"]  # ...the weight check does
    assert failure["tensor"] == "model.layers.1.mlp.down_proj.weight" and failure["worst"]["bound"] == 0.0
    assert "weights: model.layers.1.mlp.down_proj.weight: element" in captured.err


@pytest.mark.parametrize("case", ["wrong scale mode", "one extra neuron off", "another variant"])
@pytest.mark.parametrize("layout", ["dense", "pruned"])
def test_wrong_bf16_bakes_fail_on_their_weights(tiny_base_bf16: Path, tiny_gates: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str], case: str, layout: str) -> None:
    """A bake made with other settings than its manifest claims: bfloat16 logit budgets may not see it, the weight
    proof names every layer it touched."""
    right = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    t = right.selected_thresholds[2]
    lam = np.sort(1 / (1 + np.exp(-right.logits.astype(np.float64).reshape(-1)))).astype(np.float32)
    actual = {"wrong scale mode": (right, GateSettings(Cut("threshold", t), "hard", "mean")),
              "one extra neuron off": (right, GateSettings(Cut("threshold", float(lam[int((lam < np.float32(t)).sum())
                                                                                       + 1])), "hard", "energy")),
              "another variant": (load_variant(tiny_gates, "chat_energy_optB", num_layers=4, intermediate_size=128),
                                  GateSettings(Cut("threshold", t), "hard", "energy"))}[case]
    bake_checkpoint(tiny_base_bf16, *actual, tmp_path / "b", BakeOptions(layout=layout, pad_multiple=1,
                                                                          progress=False))
    manifest = json.loads((tmp_path / "b" / "bake_manifest.json").read_text())
    manifest.update(scale_mode="energy", cut={"kind": "threshold", "value": t, "threshold": t})
    manifest["gates"].update(variant="chat_energy_optA", sha256=right.sha256)
    (tmp_path / "b" / "bake_manifest.json").write_text(json.dumps(manifest))
    code = main(["verify", "--baked", str(tmp_path / "b"), *FAST])
    (c,) = json.loads(capsys.readouterr().out)["candidates"]
    named = {f["tensor"] for f in c["weights"]["failures"]}
    assert code == 3 and not c["weights"]["passed"], named
    assert {n.split(".")[-2] for n in named} <= {"down_proj", "gate_proj", "up_proj"}, named
    assert any(n.endswith("down_proj.weight") for n in named)


@pytest.mark.parametrize(("layout", "dtype"), [("dense", "auto"), ("pruned", "auto"), ("dense", "float32"),
                                                ("pruned", "float16")])
def test_the_derived_bake_is_the_bake_bit_for_bit(tiny_base_bf16: Path, tiny_gates: Path, tmp_path: Path,
                                                  layout: str, dtype: str) -> None:
    v = load_variant(tiny_gates, "chat_mean", num_layers=4, intermediate_size=128)
    settings = GateSettings(Cut("preset", 4), "soft-masked", "mean")
    m = bake_checkpoint(tiny_base_bf16, v, settings, tmp_path / "b", BakeOptions(layout=layout, dtype=dtype,
                                                                                  pad_multiple=8, progress=False))
    scale = compute_gates(v.logits, settings, v.selected_thresholds).scale
    derived = DerivedBake(tiny_base_bf16, scale, layout=layout, dtype=m["dtype"], width=m["intermediate_size"])
    report = check_bake_weights(BakeFolder(tmp_path / "b"), derived)
    assert report.passed and report.weights_checked == len(derived.names()) == 4 * 11 + 2
    assert report.elements_checked == sum(derived.tensor(n).raw.size for n in derived.names())


def test_precision_chain_order_and_words() -> None:
    chain = precision.export_chain("bfloat16", "float16", None)
    assert precision.coarsest(chain).label() == "bake bfloat16"
    assert precision.coarsest(precision.export_chain("float32", "float16", "int4")).label() == "quantization int4"
    assert precision.coarsest(precision.export_chain("float32", "float16", None)).label() == "export float16"
    assert precision.why(precision.export_chain("float32", "float32", None)) == (
        "every step keeps float32 (bake float32 -> export float32), so only float rounding may differ")


def test_tally_in_chunks_equals_the_direct_figures() -> None:
    g = torch.Generator().manual_seed(0)
    ref, cand = torch.randn(37, 500, generator=g), torch.randn(37, 500, generator=g)
    tally = Tally(3)
    tally.add(ref, cand, [1, 2, 3], [1, 5, 3])
    f = tally.figures()
    kl = kl_divergence(ref, cand)
    # KL(ref || cand) by an independent formula: numpy in float64, sum_v p_ref (log p_ref - log p_cand)
    r, c = ref.double().numpy(), cand.double().numpy()
    log_r = r - r.max(-1, keepdims=True) - np.log(np.exp(r - r.max(-1, keepdims=True)).sum(-1, keepdims=True))
    log_c = c - c.max(-1, keepdims=True) - np.log(np.exp(c - c.max(-1, keepdims=True)).sum(-1, keepdims=True))
    independent = (np.exp(log_r) * (log_r - log_c)).sum(-1)
    assert f.mean_kl == pytest.approx(float(independent.mean()), rel=1e-5)
    assert f.max_kl == pytest.approx(float(independent.max()), rel=1e-5)
    assert f.max_abs_diff == float((ref - cand).abs().max())
    assert f.max_rel_diff == pytest.approx(float((ref - cand).abs().max() / ref.abs().max()), rel=1e-6)
    assert f.mean_kl == pytest.approx(float(kl.mean()), rel=1e-9) and f.max_kl == pytest.approx(float(kl.max()))
    assert f.top1_agreement == float((ref.argmax(-1) == cand.argmax(-1)).float().mean())
    assert f.greedy_first_divergence == 1


def outputs(*logits: torch.Tensor) -> Outputs:
    out = Outputs()
    for x in logits:
        out.logits.append(x)
        out.continuation.append([])
    return out


def test_flat_logits_are_reported_not_judged_and_peaked_ones_are_judged() -> None:
    budget = DEFAULT_BUDGETS["int4"]
    peaked = torch.zeros(10, 50)
    peaked[:, 3] = 10.0  # top-2 margin 10
    noise = torch.full((10, 50), 0.5)  # the quantization moves every logit by 0.5 at most
    assert _flatness(outputs(peaked), outputs(peaked + noise * (torch.arange(50) % 2)), budget) is None
    flat = torch.zeros(10, 50)
    flat[:, 3] = 0.6  # margin 0.6 < 2 x 0.5
    message = _flatness(outputs(flat), outputs(flat + noise * (torch.arange(50) % 2)), budget)
    assert message.startswith("the hooked model's logits are too flat") and "only 0.0% of positions" in message


@pytest.mark.slow
def test_quantized_exports_of_a_flat_random_model_get_a_sound_verdict(full_base: Path, full_gates: Path,
                                                                      tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """No budget waived: a correct int4 export passes on its weights and the exact comparison with its own
    dequantized weights; an export of a wrong bake fails."""
    from export.onnx.exporter import export_onnx

    v = load_variant(full_gates, "chat_energy_optA", num_layers=28, intermediate_size=3072)
    t = v.selected_thresholds[2]
    for name, mode in (("right", "energy"), ("wrong", "mean")):
        bake_checkpoint(full_base, v, GateSettings(Cut("threshold", t), "hard", mode), tmp_path / name,
                        BakeOptions(progress=False))
        export_onnx(tmp_path / name, tmp_path / f"{name}-int4", quantize="int4", layout="ragged", progress=False)
    code = main(["verify", "--baked", str(tmp_path / "right"), "--onnx", str(tmp_path / "right-int4"), *FAST])
    checkpoint, export = json.loads(capsys.readouterr().out)["candidates"]
    assert code == 0 and export["passed"], export["failures"]
    assert export["top1_agreement"] < DEFAULT_BUDGETS["int4"].min_top1  # the old verdict: a correct export failed
    assert export["budget"]["not_judged"].startswith("the hooked model's logits are too flat")
    exact, shipped = export["checks"]
    assert exact["against"] == "its dequantized weights, float activations" and exact["max_rel_diff"] < 1e-4
    assert shipped["against"] == "its dequantized weights" and shipped["budget"]["dtype"] == "int8-act"
    assert export["weights"]["passed"] and export["weights"]["max_quant_error_steps"] <= 0.5 + 1e-3
    code = main(["verify", "--baked", str(tmp_path / "right"), "--onnx", str(tmp_path / "wrong-int4"), *FAST])
    _, export = json.loads(capsys.readouterr().out)["candidates"]
    assert code == 3 and not export["weights"]["passed"] and export["note"].startswith("logits not compared")


def test_quantized_export_with_external_weights_is_proven_with_float_activations(
        tiny_base: Path, tiny_gates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Weights past 2 GB live in model.onnx.data: the float-activation variant of the graph reads them from there."""
    from export.onnx.exporter import export_onnx

    v = load_variant(tiny_gates, "chat_mean", num_layers=4, intermediate_size=128)
    bake_checkpoint(tiny_base, v, GateSettings(Cut("preset", 2), "hard", "mean"), tmp_path / "b",
                    BakeOptions(progress=False))
    export_onnx(tmp_path / "b", tmp_path / "x", quantize="int8", external_data_threshold=0, progress=False)
    assert (tmp_path / "x" / "model.onnx.data").is_file()
    code = main(["verify", "--onnx", str(tmp_path / "x"), *FAST])
    (export,) = json.loads(capsys.readouterr().out)["candidates"]
    assert code == 0 and export["checks"][0]["against"] == "its dequantized weights, float activations"
    assert export["checks"][0]["max_rel_diff"] < 1e-4
    assert not [p.name for p in (tmp_path / "x").iterdir() if p.name.startswith(".")]  # nothing written into it
