"""verify's weight check: ONNX exports of wrong bakes fail with the tensor named; correct exports pass.

Random-weight models have flat logits, so int4/int8 exports of a wrong bake can pass the logit
budgets; the weight check must catch them anyway. The default int4/int8 budgets are calibrated on a
trained model with peaked logits (docs/VERIFY.md); on these random models
top-1 is noise and KL grows with depth, so their quantized exports run with the logit budgets
waived (``RANDOM_MODEL``) and the weight check is the verdict.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from bake.cli import main
from bake.demo.assets import write_gate_folder
from bake.fold.plan import BakeOptions
from bake.gates.gate_math import Cut, GateSettings, gate_values
from bake.gates.variant import load_variant
from bake.verify.weights.bake_tensors import BakeFolder, Stored
from bake.verify.weights.nbits import unpack_codes
from bake.verify.weights.quant_check import quant_error
from bake.verify.weights.weight_check import check_export_weights
from bake.write.pipeline import bake_checkpoint
from export.onnx.exporter import export_onnx

FAST = ["--quiet", "--json", "--greedy-tokens", "0"]
WRONG = ("wrong scale mode", "one extra neuron off", "a layer's gates shuffled", "another variant")
SHUFFLED_LAYER = 2
RANDOM_MODEL = ("--min-top1", "0", "--max-mean-kl", "10")  # logit budgets waived: random weights
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Bakes:
    """A correct bake and four wrong ones, for one model and one bake layout."""

    folders: dict[str, Path]  # "correct" and each of WRONG
    extra_off_layer: int  # the layer whose neuron "one extra neuron off" switches off
    layers: int


def make_bakes(base: Path, gates: Path, root: Path, layers: int, neurons: int, layout: str) -> Bakes:
    right = load_variant(gates, "chat_energy_optA", num_layers=layers, intermediate_size=neurons)
    t = right.selected_thresholds[2]
    lam = gate_values(right.logits)
    ordered = np.sort(lam.reshape(-1))
    off = int((ordered < np.float32(t)).sum())
    extra_layer = int(np.argwhere(lam == ordered[off])[0, 0])
    shuffled = right.logits.copy()
    shuffled[SHUFFLED_LAYER] = shuffled[SHUFFLED_LAYER][np.random.default_rng(0).permutation(neurons)]
    shuffled_v = load_variant(write_gate_folder(root / "shuffled" / "chat_energy_optA", torch.from_numpy(shuffled),
                                                scale_mode="energy"), num_layers=layers, intermediate_size=neurons)
    other = load_variant(gates, "chat_energy_optB", num_layers=layers, intermediate_size=neurons)
    ok = GateSettings(Cut("threshold", t), "hard", "energy")
    cases = {
        "correct": (right, ok),
        "wrong scale mode": (right, GateSettings(Cut("threshold", t), "hard", "mean")),
        "one extra neuron off": (right, GateSettings(Cut("threshold", float(ordered[off + 1])), "hard", "energy")),
        "a layer's gates shuffled": (shuffled_v, ok),
        "another variant": (other, ok),
    }
    folders = {}
    for name, (variant, settings) in cases.items():
        folders[name] = root / name.replace(" ", "-").replace("'", "")
        bake_checkpoint(base, variant, settings, folders[name], BakeOptions(layout=layout, pad_multiple=8,
                                                                             progress=False))
    return Bakes(folders, extra_layer, layers)


@pytest.fixture(scope="module")
def bakes(tiny_base: Path, tiny_gates: Path, full_base: Path, full_gates: Path,
          tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Bakes]:
    """(model, bake layout) -> the five bakes; tiny = 4 x 128 neurons, full = the real 28 x 3072 gate shape."""
    out = {}
    for model, base, gates, layers, neurons in (("tiny", tiny_base, tiny_gates, 4, 128),
                                                ("full", full_base, full_gates, 28, 3072)):
        for layout in ("dense", "pruned"):
            out[model, layout] = make_bakes(base, gates, tmp_path_factory.mktemp(f"{model}-{layout}"), layers,
                                            neurons, layout)
    return out


@pytest.fixture(scope="module")
def one_prompt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short chat prompt: the logit figures of these tests are only reported (budgets waived)."""
    path = tmp_path_factory.mktemp("prompts") / "one.jsonl"
    path.write_text('"What is 2+2?"\n')
    return path


def verify_onnx(baked: Path, onnx_dir: Path, capsys: pytest.CaptureFixture[str],
                *extra: str) -> tuple[int, dict[str, Any], str]:
    code = main(["verify", "--baked", str(baked), "--onnx", str(onnx_dir), *FAST, *extra])
    out, err = capsys.readouterr()
    report = json.loads(out) if out.strip() else {}
    return code, report, err


def failing_tensors(report: dict[str, Any]) -> set[str]:
    return {f["tensor"] for f in report["candidates"][-1]["weights"]["failures"]}


# (export layout, which bake, target) per quantization: every layout on both targets across int4 and int8
EXPORTS = {
    "int4": [("as-is", "dense", "cpu"), ("as-is", "pruned", "portable"), ("ragged", "dense", "cpu")],
    "int8": [("as-is", "dense", "portable"), ("as-is", "pruned", "cpu"), ("ragged", "dense", "portable")],
}


@pytest.mark.parametrize("model", ["tiny", "full"])
@pytest.mark.parametrize("quantize", ["int4", "int8"])
@pytest.mark.parametrize("which", [0, 1, 2], ids=["dense", "pruned", "ragged"])
def test_quantized_exports_of_wrong_bakes_fail_with_tensor_named(bakes: dict[tuple[str, str], Bakes], model: str,
                                                                  quantize: str, which: int, one_prompt: Path,
                                                                  tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    layout, bake_layout, target = EXPORTS[quantize][which]
    waived = (*RANDOM_MODEL, "--prompts", str(one_prompt))
    b = bakes[model, bake_layout]
    correct = b.folders["correct"]
    export_onnx(correct, tmp_path / "correct", target=target, layout=layout, quantize=quantize, progress=False)
    code, report, err = verify_onnx(correct, tmp_path / "correct", capsys, *waived)
    weights = report["candidates"][-1]["weights"]
    assert code == 0, err
    assert weights["passed"] and weights["bake"] == str(correct) and weights["failures"] == []
    assert 0.49 < weights["max_quant_error_steps"] <= 0.5 + 1e-3
    down = "{}.mlp.down_proj.weight.quant"
    for case in WRONG:
        x = tmp_path / case.replace(" ", "-").replace("'", "")
        export_onnx(b.folders[case], x, target=target, layout=layout, quantize=quantize, progress=False)
        (x / "bake_manifest.json").unlink()  # handed over alone: only --baked says what it must be
        code, report, err = verify_onnx(correct, x, capsys, *waived)
        assert code == 3, (case, err)
        named = failing_tensors(report)
        layer_of = {t: t.split(".")[2] for t in named if t.startswith("model.layers.")}
        if case == "wrong scale mode":  # every layer's down_proj columns are scaled differently, nothing else
            assert named == {down.format(f"model.layers.{i}") for i in range(b.layers)}, named
        elif case in ("one extra neuron off", "a layer's gates shuffled"):
            layer = b.extra_off_layer if case == "one extra neuron off" else SHUFFLED_LAYER
            assert down.format(f"model.layers.{layer}") in named, named
            assert set(layer_of.values()) == {str(layer)}, named  # only that layer (and onnx_io.json's widths)
            assert named - set(layer_of) <= {"onnx_io.json"}, named
        else:  # every layer keeps other neurons
            assert set(layer_of.values()) == {str(i) for i in range(b.layers)}, named
        first = report["candidates"][-1]["weights"]["failures"][0]
        assert "verification failed: onnx" in err and f"weights: {first['tensor']}: " in err
        if first["worst"] is not None:  # the worst element, its value, the bake's and the bound
            assert f"element {first['worst']['index']}" in err and "> bound" in err


@pytest.mark.parametrize("target", ["portable", "cpu"])
def test_float16_export_with_one_weight_one_step_off_fails(bakes: dict[tuple[str, str], Bakes], target: str,
                                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    correct = bakes["tiny", "dense"].folders["correct"]
    export_onnx(correct, tmp_path / "x", target=target, dtype="float16", progress=False)
    code, report, err = verify_onnx(correct, tmp_path / "x", capsys)
    assert code == 0, err
    assert report["candidates"][-1]["weights"]["max_quant_error_steps"] is None  # float: exact
    path = tmp_path / "x" / "model.onnx"
    model = onnx.load(str(path))
    name = "model.layers.1.mlp.down_proj.weight"  # stored as [in, out] for MatMul: bake index [hidden, neuron]
    init = next(t for t in model.graph.initializer if t.name == name)
    w = numpy_helper.to_array(init).copy()
    neuron, hidden = int(np.flatnonzero(w[:, 5])[0]), 5
    old = w[neuron, hidden]
    w[neuron, hidden] = np.nextafter(old, np.float16(np.inf))
    init.CopyFrom(numpy_helper.from_array(w, name))
    onnx.save(model, str(path))
    code, report, err = verify_onnx(correct, tmp_path / "x", capsys)
    assert code == 3
    (failure,) = report["candidates"][-1]["weights"]["failures"]
    assert failure["tensor"] == name
    worst = failure["worst"]
    assert worst["index"] == [hidden, neuron] and worst["bake_index"] == [hidden, neuron]
    assert worst["value"] == float(w[neuron, hidden]) and worst["expected"] == float(old) and worst["bound"] == 0.0
    assert f"{name}: element [{hidden}, {neuron}]" in err and "bound 0" in err


def test_cuda_export_is_weight_checked_and_says_logits_were_not_run(bakes: dict[tuple[str, str], Bakes],
                                                                     tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    b = bakes["tiny", "dense"]
    correct = b.folders["correct"]
    for name, bake in (("ok", correct), ("bad", b.folders["wrong scale mode"])):
        export_onnx(bake, tmp_path / name, target="cuda", dtype="float16", quantize="int4", layout="ragged",
                    progress=False)
    code, report, err = verify_onnx(correct, tmp_path / "ok", capsys)
    (checkpoint, cand) = report["candidates"]
    assert code == 0 and cand["name"] == "onnx (cuda graph, ragged, not run)" and cand["passed"]
    assert cand["mean_kl"] is None and cand["top1_agreement"] is None and cand["weights"]["passed"]
    assert "logits NOT compared" in cand["note"] and "logits NOT compared" in err
    assert checkpoint["mean_kl"] is not None  # the bake itself is still run
    code, report, err = verify_onnx(correct, tmp_path / "bad", capsys)
    assert code == 3 and "model.layers.0.mlp.down_proj.weight.quant" in failing_tensors(report)
    code = main(["verify", "--baked", str(correct), "--onnx", str(tmp_path / "ok"), "--quiet", "--greedy-tokens", "0"])
    table = capsys.readouterr().out
    assert code == 0 and "logits not run" in table and "<= 0.500 step" in table


@pytest.mark.parametrize("quantize", ["none", "int4"])
def test_alignment_neurons_are_proven_zero(bakes: dict[tuple[str, str], Bakes], tmp_path: Path,
                                          quantize: str) -> None:
    """An aligned export passes; one alignment neuron made nonzero fails naming it; widths or padding in
    onnx_io.json that the bake and the multiple do not give fail too."""
    correct = bakes["tiny", "dense"].folders["correct"]
    export_onnx(correct, tmp_path / "x", target="cpu", layout="ragged", quantize=quantize, width_multiple=64,
                progress=False)
    io_path = tmp_path / "x" / "onnx_io.json"
    io = json.loads(io_path.read_text())
    assert sum(io["mlp_padding"]) > 0 and all(w % 64 == 0 for w in io["mlp_widths"])
    assert check_export_weights(tmp_path / "x", BakeFolder(correct)).passed
    layer = next(i for i, p in enumerate(io["mlp_padding"]) if p)
    path = tmp_path / "x" / "model.onnx"
    model = onnx.load(str(path))
    suffix = ".quant" if quantize == "int4" else ""
    name = f"model.layers.{layer}.mlp.gate_up_proj.weight{suffix}"
    init = next(t for t in model.graph.initializer if t.name == name)
    a = numpy_helper.to_array(init).copy()
    width = io["mlp_widths"][layer]
    if quantize == "int4":  # [N, blocks, bytes]: the last gate row is an alignment neuron; a code and its scale move
        a[width - 1, 0, 0] ^= 0x11
        scales = next(t for t in model.graph.initializer if t.name == name.replace(".quant", ".scales"))
        sc = numpy_helper.to_array(scales).copy()
        sc.reshape(-1, sc.shape[-1] if sc.ndim > 1 else 1)[width - 1, 0] = 0.5
        scales.CopyFrom(numpy_helper.from_array(sc, scales.name))
    else:  # [hidden, 2 * width]: the last gate column is an alignment neuron
        a[0, width - 1] = 0.5
    init.CopyFrom(numpy_helper.from_array(a, name))
    onnx.save(model, str(path))
    (failure,) = check_export_weights(tmp_path / "x", BakeFolder(correct)).failures
    assert failure.tensor == name and "zero neuron added to" in failure.message and "for alignment" in failure.message
    export_onnx(correct, tmp_path / "y", target="cpu", layout="ragged", width_multiple=64, progress=False)
    io_path = tmp_path / "y" / "onnx_io.json"
    io = json.loads(io_path.read_text())
    io_path.write_text(json.dumps(io | {"mlp_padding": [0] * len(io["mlp_padding"]), "width_multiple": 1}))
    messages = [f.message for f in check_export_weights(tmp_path / "y", BakeFolder(correct)).failures]
    assert any("onnx_io.json: records MLP widths" in m for m in messages), messages


TAMPER = {  # initializer changed in one value -> the tensor the failure names
    "rotary.cos_cache": "rotary.cos_cache",
    "model.layers.2.mlp.down_proj.weight.zero_points": "model.layers.2.mlp.down_proj.weight.quant",
    "lm_head.weight.scales": "lm_head.weight.quant",
    "model.norm.weight": "model.norm.weight",
}


@pytest.mark.parametrize("name", list(TAMPER))
def test_every_kind_of_initializer_is_checked(bakes: dict[tuple[str, str], Bakes], name: str,
                                              tmp_path: Path) -> None:
    correct = bakes["tiny", "dense"].folders["correct"]
    scheme = "asymmetric" if name.endswith(".zero_points") else "symmetric"  # zero points exist in that one alone
    export_onnx(correct, tmp_path / "x", target="cpu", quantize="int4", quant_scheme=scheme, progress=False)
    assert check_export_weights(tmp_path / "x", BakeFolder(correct)).passed
    path = tmp_path / "x" / "model.onnx"
    model = onnx.load(str(path))
    init = next(t for t in model.graph.initializer if t.name == name)
    a = numpy_helper.to_array(init).copy()
    flat = a.reshape(-1)
    if a.dtype == np.uint8:
        flat[3] ^= 0x01  # one zero point moves by one code
    else:
        flat[3] = flat[3] * 1.01 + 1e-3
    init.CopyFrom(numpy_helper.from_array(a, name))
    onnx.save(model, str(path))
    report = check_export_weights(tmp_path / "x", BakeFolder(correct))
    named = [f.tensor for f in report.failures]
    assert named == [TAMPER[name]], [f.message for f in report.failures]


def test_stray_initializer_and_missing_bake_tensor_fail(bakes: dict[tuple[str, str], Bakes], tmp_path: Path) -> None:
    correct = bakes["tiny", "dense"].folders["correct"]
    export_onnx(correct, tmp_path / "x", target="portable", progress=False)
    path = tmp_path / "x" / "model.onnx"
    model = onnx.load(str(path))
    norm = next(t for t in model.graph.initializer if t.name == "model.layers.3.input_layernorm.weight")
    norm.name = "model.layers.3.extra.weight"  # no bake tensor of that name; the norm's own is now unused
    onnx.save(model, str(path))
    report = check_export_weights(tmp_path / "x", BakeFolder(correct))
    stray, missing = report.failures
    assert stray.tensor == "model.layers.3.extra.weight" and "cannot account for it" in stray.message
    assert missing.tensor == "model.layers.3.input_layernorm.weight" and "not in the export" in missing.message


def test_export_alone_is_checked_against_the_bake_the_base_and_gates_define(
        bakes: dict[tuple[str, str], Bakes], tiny_base: Path, tiny_gates: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    b = bakes["tiny", "pruned"]
    export_onnx(b.folders["correct"], tmp_path / "x", target="portable", quantize="int8", layout="ragged",
                progress=False)
    assert main(["verify", "--onnx", str(tmp_path / "x"), *FAST, *RANDOM_MODEL]) == 0
    weights = json.loads(capsys.readouterr().out)["candidates"][0]["weights"]
    assert weights["passed"] and weights["bake"] == f"the pruned float32 bake that {tiny_base} and the gates define"
    manifest = json.loads((tmp_path / "x" / "bake_manifest.json").read_text())
    (tmp_path / "x" / "bake_manifest.json").unlink()
    assert main(["verify", "--onnx", str(tmp_path / "x"), "--quiet", "--base", str(tiny_base), "--gates",
                 str(tiny_gates), "--variant", "chat_energy_optA", "--threshold", str(manifest["cut"]["threshold"]),
                 "--scale-mode", "energy", "--json", *RANDOM_MODEL]) == 0  # the layout comes from its config
    weights = json.loads(capsys.readouterr().out)["candidates"][0]["weights"]
    assert weights["passed"] and weights["bake"] == f"the pruned float32 bake that {tiny_base} and the gates define"


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_unpacker_reads_fields_lowest_bits_first(bits: int) -> None:
    packed = np.array([[0b11100100, 0b00011011]], np.uint8)
    expected = {2: [0, 1, 2, 3, 3, 2, 1, 0], 4: [4, 14, 11, 1], 8: [228, 27]}[bits]
    assert unpack_codes(packed, bits).tolist() == [expected]


def test_half_step_bound_is_exact_and_zero_blocks_must_be_zero() -> None:
    """One block of 32, int4, scale 0.1, zero point 8: codes 8 + [-8..7] hold w within 0.05 of (code - 8) * 0.1."""
    codes = np.tile(np.arange(16, dtype=np.uint8), 2)  # 32 codes
    b = (codes[0::2] | (codes[1::2] << 4)).reshape(1, 1, 16)
    zp = np.array([[8]], dtype=np.uint8)
    scales = np.array([[0.1]], dtype=np.float32)
    w = ((codes.astype(np.float32) - 8) * np.float32(0.1)).reshape(1, 32)
    assert quant_error(b, scales, zp, Stored.of(w), 4, 32).steps < 1e-5
    w2 = w.copy()
    w2[0, 5] += 0.049  # 0.49 steps: still the nearest code
    assert 0.489 < quant_error(b, scales, zp, Stored.of(w2), 4, 32).steps < 0.491
    w2[0, 5] += 0.002  # 0.51 steps: another code was nearer
    worst = quant_error(b, scales, zp, Stored.of(w2), 4, 32)
    assert 0.509 < worst.steps < 0.511 and worst.index == (0, 5)
    assert worst.value == pytest.approx(-0.3) and worst.expected == pytest.approx(-0.249)
    zero = np.zeros((1, 1), np.float32)
    zeros = Stored.of(np.zeros((1, 32), np.float32))
    assert quant_error(b, zero, zp, zeros, 4, 32).steps == 0.0  # a zero block is 0 whatever its codes
    w3 = np.zeros((1, 32), np.float32)
    w3[0, 9] = 1e-6
    worst = quant_error(b, zero, zp, Stored.of(w3), 4, 32)
    assert worst.steps == float("inf") and worst.index == (0, 9) and worst.value == 0.0


def test_untied_lm_head_and_attention_bias(tiny_base: Path, tiny_gates: Path, tmp_path: Path) -> None:
    """A Qwen3 with attention biases and its own lm_head: every export kind traces them (qkv biases packed)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from bake.write.checkpoint import carry_base_files

    config = Qwen3Config.from_pretrained(str(tiny_base))
    config.attention_bias, config.tie_word_embeddings = True, False
    torch.manual_seed(3)
    model = Qwen3ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.uniform_(-0.1, 0.1)
    model.save_pretrained(str(tmp_path / "base"))
    carry_base_files(tiny_base, tmp_path / "base")
    v = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    bake = tmp_path / "bake"
    bake_checkpoint(tmp_path / "base", v, GateSettings(Cut("preset", 3), "hard", "energy"), bake,
                    BakeOptions(progress=False))
    kinds = {"portable-f16": {"target": "portable", "dtype": "float16"}, "cpu-int4": {"target": "cpu", "quantize": "int4"},
             "cuda-int8-ragged": {"target": "cuda", "dtype": "float16", "quantize": "int8", "layout": "ragged"}}
    for name, opts in kinds.items():
        export_onnx(bake, tmp_path / name, progress=False, **opts)
        report = check_export_weights(tmp_path / name, BakeFolder(bake))
        assert report.passed, [f.message for f in report.failures]
    graph = onnx.load(str(tmp_path / "cpu-int4" / "model.onnx"))
    names = {t.name for t in graph.graph.initializer}
    assert {"lm_head.weight.quant", "model.layers.0.self_attn.qkv_proj.bias"} <= names
    bias = next(t for t in graph.graph.initializer if t.name == "model.layers.0.self_attn.qkv_proj.bias")
    b = numpy_helper.to_array(bias).copy()
    q_rows = config.num_attention_heads * config.head_dim
    b[q_rows + 3] += 1e-3  # k_proj.bias[3]
    bias.CopyFrom(numpy_helper.from_array(b, bias.name))
    onnx.save(graph, str(tmp_path / "cpu-int4" / "model.onnx"))
    (failure,) = check_export_weights(tmp_path / "cpu-int4", BakeFolder(bake)).failures
    assert failure.tensor == "model.layers.0.self_attn.qkv_proj.bias"
    assert failure.worst["index"] == [q_rows + 3] and failure.worst["bake_tensor"] == "model.layers.0.self_attn.k_proj.bias"
    assert failure.worst["bake_index"] == [3]


def test_weight_check_is_numpy_only(bakes: dict[tuple[str, str], Bakes], tmp_path: Path) -> None:
    """The check (graph, bake, unpacking, comparison) runs without importing torch or transformers."""
    correct = bakes["tiny", "pruned"].folders["correct"]
    export_onnx(correct, tmp_path / "x", target="cpu", quantize="int4", layout="ragged", progress=False)
    code = ("import json, sys\nfrom bake.verify.weights.bake_tensors import BakeFolder\nfrom bake.verify.weights.weight_check import "
            "check_export_weights\nr = check_export_weights(sys.argv[1], BakeFolder(sys.argv[2]))\n"
            "print(json.dumps([r.passed, sorted({'torch', 'transformers'} & set(sys.modules))]))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x"), str(correct)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [True, []]


@pytest.mark.parametrize("quantize", ["none", "int4"])
def test_bfloat16_cuda_export_of_a_bfloat16_bake_is_proven_weight_by_weight(
        tiny_base_bf16: Path, tiny_gates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        quantize: str) -> None:
    """A bf16 bake (as Qwen3 ships) exported in bfloat16 for CUDA holds the bake's bits exactly (no rounding at all);
    on a machine without CUDA verify proves its weights and says its logits need a GPU. One weight one bfloat16 step
    off fails with the tensor named."""
    import ml_dtypes

    v = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    bake = tmp_path / "b"
    bake_checkpoint(tiny_base_bf16, v, GateSettings(Cut("preset", 3), "hard", "energy"), bake,
                    BakeOptions(progress=False))
    export_onnx(bake, tmp_path / "x", target="cuda", dtype="bfloat16", layout="ragged", quantize=quantize,
                progress=False)
    code, report, err = verify_onnx(bake, tmp_path / "x", capsys)
    cand = report["candidates"][-1]
    assert code == 0 and cand["passed"] and cand["weights"]["passed"] and cand["mean_kl"] is None
    assert cand["chain"] == ["bake bfloat16", "export bfloat16"] + (["quantization int4"] if quantize == "int4" else [])
    assert "logits NOT compared: a --target cuda export runs only on CUDA" in err
    if quantize == "int4":
        assert 0 < cand["weights"]["max_quant_error_steps"] <= 0.5 + 1e-3
        return
    path = tmp_path / "x" / "model.onnx"
    model = onnx.load(str(path))
    name = "model.layers.0.self_attn.o_proj.weight"
    init = next(t for t in model.graph.initializer if t.name == name)
    w = numpy_helper.to_array(init).copy()
    assert w.dtype == ml_dtypes.bfloat16
    raw = w.view(np.uint16)
    raw[2, 3] += 1  # one bfloat16 step
    init.CopyFrom(numpy_helper.from_array(w, name))
    onnx.save(model, str(path))
    code, report, err = verify_onnx(bake, tmp_path / "x", capsys)
    assert code == 3 and failing_tensors(report) == {name}
    assert report["candidates"][-1]["weights"]["failures"][0]["worst"]["index"] == [3, 2]  # stored [in, out]
