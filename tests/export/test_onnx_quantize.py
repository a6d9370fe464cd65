"""Weight-only int4/int8 ONNX export (com.microsoft MatMulNBits).

The packing is checked against an independent numpy dequantization, against ONNX Runtime's own
quantizer, and end to end: a quantized graph computing with float32 activations (accuracy_level 0)
must equal, to float rounding, a plain float32 export of the dequantized weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from bake.cli import main
from bake.errors import ExportError
from bake.gates.gate_math import Cut, GateSettings
from bake.gates.variant import load_variant
from bake.write.pipeline import BakeOptions, bake_checkpoint
from export.onnx.builder import build_qwen3_model
from export.onnx.exporter import export_onnx, open_model_folder
from export.onnx.graph_base import live_neurons
from export.onnx.quantize import PackedWeight, QuantSpec, quantize_weight
from export.runtime.ort_loop import OnnxCausalLM

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def dequantize(p: PackedWeight, k: int, spec: QuantSpec) -> np.ndarray:
    """Numpy reference: unpack codes and zero points (low bits first), (code - zp) * scale, crop to K."""
    def unpack(packed: np.ndarray) -> np.ndarray:
        if spec.bits == 8:
            return packed.astype(np.float32)
        return np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1).astype(np.float32)

    b, scales = p.b.numpy(), p.scales.numpy().astype(np.float32)
    n, blocks = scales.shape
    assert b.shape == (n, blocks, spec.block_size * spec.bits // 8) and b.dtype == np.uint8
    if spec.symmetric:  # no zero points: the kernels' implicit 2**(bits-1)
        assert p.zero_points is None
        zp = np.full((n, blocks), float(1 << (spec.bits - 1)), np.float32)
    else:
        assert p.zero_points.shape == (n, -(-blocks * spec.bits // 8))
        zp = unpack(p.zero_points.numpy())[:, :blocks]
    w = (unpack(b) - zp[..., None]) * scales[..., None]
    return w.reshape(n, -1)[:, :k]


def single_node(p: PackedWeight, n: int, k: int, spec: QuantSpec) -> ort.InferenceSession:
    """A graph with one MatMulNBits node: Y = A @ W.T."""
    inits = [numpy_helper.from_array(t.numpy(), name) for t, name in
             ((p.b, "B"), (p.scales, "scales"), (p.zero_points, "zero_points")) if t is not None]
    node = helper.make_node("MatMulNBits", ["A", "B", "scales"] + ([] if p.zero_points is None else ["zero_points"]),
                            ["Y"], domain="com.microsoft",
                            K=k, N=n, bits=spec.bits, block_size=spec.block_size,
                            accuracy_level=spec.accuracy_level)
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["m", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["m", n])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("k", [96, 100, 20])  # whole blocks, a padded last block, less than one block
def test_packing_matches_numpy_dequantization(bits: int, k: int, symmetric: bool) -> None:
    n = 24
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(k)) * 0.05
    w[5, :] = w[5, :].abs() + 0.01  # a skewed row (all positive): the symmetric scale still fits it
    w[3] = 0.0  # an all-zero row (scale 0) and zeroed columns stay exactly 0
    w[:, 7] = 0.0
    spec = QuantSpec(bits, accuracy_level=0, symmetric=symmetric)  # float32 compute: exact up to float rounding
    p = quantize_weight(w, spec, rows_per_chunk=10)  # chunks must join seamlessly
    deq = dequantize(p, k, spec)
    step = p.scales.numpy().repeat(spec.block_size, axis=1)[:, :k]
    assert np.all(np.abs(deq - w.numpy()) <= step / 2 + 1e-7)  # rounding to the nearest code
    assert np.all(deq[3] == 0) and np.all(deq[:, 7] == 0)
    a = np.random.default_rng(0).standard_normal((5, k)).astype(np.float32)
    y = single_node(p, n, k, spec).run(None, {"A": a})[0]
    np.testing.assert_allclose(y, a @ deq.T, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bits", [4, 8])
def test_float16_scales_are_rounded_up_and_codes_use_them(bits: int) -> None:
    """For float16 activations the stored scale is the float32 one rounded up to float16, and every weight
    stays within half a step of the stored scale (the block's range still fits)."""
    n, k = 16, 96
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(2)) * 0.05
    w[:, 5] = 0.0
    spec = QuantSpec(bits, accuracy_level=0)
    p16 = quantize_weight(w, spec, scale_dtype=torch.float16)
    p32 = quantize_weight(w, spec)
    assert p16.scales.dtype == torch.float16
    assert torch.all(p16.scales.float() >= p32.scales) and torch.all(p16.scales.float() <= p32.scales * (1 + 2 ** -9))
    deq = dequantize(p16, k, spec)
    step = p16.scales.float().numpy().repeat(spec.block_size, axis=1)[:, :k]
    assert np.all(np.abs(deq - w.numpy()) <= step / 2 + 1e-7) and np.all(deq[:, 5] == 0)


@pytest.mark.parametrize("bits", [4, 8])
def test_packing_equals_onnxruntime_quantizer(bits: int) -> None:
    """ONNX Runtime's own blockwise quantizer (asymmetric) gives the same bytes and scales."""
    from onnxruntime.capi import _pybind_state as ort_c

    n, k, bs = 40, 128, 32
    w = (torch.randn(n, k, generator=torch.Generator().manual_seed(1)) * 0.05).numpy()
    blocks = k // bs
    packed = np.zeros((n, blocks, bs * bits // 8), np.uint8)
    scales = np.zeros((n, blocks), np.float32)
    zp = np.zeros((n, -(-blocks * bits // 8)), np.uint8)
    quantize = ort_c.quantize_matmul_4bits if bits == 4 else ort_c.quantize_matmul_8bits
    quantize(packed, np.ascontiguousarray(w.T), scales, zp, bs, n, k, False)
    ours = quantize_weight(torch.from_numpy(w), QuantSpec(bits, symmetric=False))
    assert np.array_equal(ours.b.numpy(), packed)
    assert np.array_equal(ours.scales.numpy(), scales)
    assert np.array_equal(ours.zero_points.numpy(), zp)


def dequantized_checkpoint(src: Path, dst: Path, spec: QuantSpec, shared_embedding: bool = False) -> Path:
    """``src`` with every linear weight replaced by what the ragged quantized graph computes with.

    down_proj is quantized after the ragged column selection (blocks run along the kept columns),
    so its dequantized kept columns are scattered back; lm_head becomes an untied copy of the
    dequantized embedding, and the embedding itself stays float unless the graph looks tokens up in
    those codes too (``shared_embedding``).
    """
    from transformers import AutoModelForCausalLM, Qwen3ForCausalLM

    from bake.write.checkpoint import carry_base_files

    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    _, reader = open_model_folder(src)

    def deq(w: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(dequantize(quantize_weight(w, spec), w.shape[1], spec))

    for i in range(model.config.num_hidden_layers):
        keep = live_neurons(reader, i)
        for part in LINEARS:
            name = f"model.layers.{i}.{part}.weight"
            w = state[name]
            if part == "mlp.down_proj":
                state[name] = torch.zeros_like(w).index_copy(1, keep, deq(w.index_select(1, keep)))
            elif part.startswith("mlp."):
                state[name] = torch.zeros_like(w).index_copy(0, keep, deq(w.index_select(0, keep)))
            else:
                state[name] = deq(w)
    state["lm_head.weight"] = deq(state["model.embed_tokens.weight"])
    if shared_embedding:
        state["model.embed_tokens.weight"] = state["lm_head.weight"].clone()
    model.config.tie_word_embeddings = False
    out = Qwen3ForCausalLM(model.config)
    out.load_state_dict(state)
    out.save_pretrained(str(dst))
    carry_base_files(src, dst)
    return dst


def zeroed(src: Path, dst: Path) -> Path:
    """A dense-bake-like copy of ``src``: some down_proj columns zero, so ragged widths are not block multiples."""
    from transformers import AutoModelForCausalLM

    from bake.write.checkpoint import carry_base_files

    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    with torch.no_grad():
        for layer, cut in zip(model.model.layers, (40, 0, 100, 127)):
            layer.mlp.down_proj.weight[:, :cut] = 0.0
    model.save_pretrained(str(dst))
    carry_base_files(src, dst)
    return dst


@pytest.mark.parametrize(("target", "matmuls_per_layer"), [("portable", 7), ("cpu", 4)])  # cpu: packed qkv, gate/up
def test_quantized_graph_equals_float_graph_of_dequantized_weights(tiny_base: Path, tmp_path: Path, target: str,
                                                                   matmuls_per_layer: int) -> None:
    spec = QuantSpec(4, accuracy_level=0)
    dense = zeroed(tiny_base, tmp_path / "dense")
    shared = target != "portable"  # cpu: the tokens are looked up in the lm_head's codes (GatherBlockQuantized)
    ref_dir = Path(export_onnx(dequantized_checkpoint(dense, tmp_path / "deq", spec, shared), tmp_path / "deq-onnx",
                               layout="ragged", target=target, progress=False)["out"])
    config, reader = open_model_folder(dense)
    (tmp_path / "q").mkdir()
    built = build_qwen3_model(reader, config, tmp_path / "q" / "q.data", dtype=torch.float32, ragged=True,
                              target=target, quant=spec)
    assert built.mlp_widths == [88, 128, 28, 1]
    weights = {t.name for t in built.model.graph.initializer}
    float_matmuls = [n.name for n in built.model.graph.node
                     if n.op_type in ("MatMul", "Gemm") and weights.intersection(n.input)]
    assert not float_matmuls  # attention's activation x activation MatMuls remain, no weight is float
    assert sum(n.op_type == "MatMulNBits" for n in built.model.graph.node) == matmuls_per_layer * 4 + 1
    assert (built.embedding.form, "model.embed_tokens.weight" in weights) == (("shared", False) if shared
                                                                              else ("float", True))
    onnx.save(built.model, str(tmp_path / "q" / "model.onnx"))
    onnx.checker.check_model(str(tmp_path / "q" / "model.onnx"), full_check=True)
    (tmp_path / "q" / "onnx_io.json").write_bytes((ref_dir / "onnx_io.json").read_bytes())  # same inputs/outputs
    ids = np.random.default_rng(3).integers(5, 300, size=12).tolist()
    expected = OnnxCausalLM(ref_dir, device="cpu").logits(ids)
    got = OnnxCausalLM(tmp_path / "q", device="cpu").logits(ids)
    assert float(np.abs(got - expected).max() / np.abs(expected).max()) < 1e-5


@pytest.mark.parametrize(("quantize", "layout", "target", "dtype"), [
    ("int4", "as-is", "portable", "float32"), ("int4", "ragged", "portable", "float32"),
    ("int8", "ragged", "portable", "float32"), ("int4", "ragged", "cpu", "float32"),
    ("int4", "ragged", "cpu", "float16"), ("int8", "as-is", "cpu", "float16")])
def test_quantized_export_passes_its_verify_budget(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                   quantize: str, layout: str, target: str, dtype: str) -> None:
    from bake.verify.candidates import onnx_candidate
    from bake.verify.verifier import VerifyOptions, spec_from_manifest, verify

    v = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    manifest = bake_checkpoint(tiny_base, v, GateSettings(Cut("preset", 4), "hard", "energy"), tmp_path / "b",
                               BakeOptions(progress=False))
    report = export_onnx(tmp_path / "b", tmp_path / "x", quantize=quantize, layout=layout, target=target,
                         dtype=dtype, progress=False)
    assert report["quantize"] == quantize
    io = json.loads((tmp_path / "x" / "onnx_io.json").read_text())
    assert io["dtype"] == dtype and "MatMulNBits" in io["requires"]
    scales = [t for t in onnx.load(str(tmp_path / "x" / "model.onnx")).graph.initializer
              if t.name.endswith(".weight.scales")]
    assert scales and {t.data_type for t in scales} == {TensorProto.FLOAT if dtype == "float32" else TensorProto.FLOAT16}
    assert io["quantization"] == QuantSpec(int(quantize[3:])).describe()
    assert io["quantization"]["bits"] == int(quantize[3:]) and io["quantization"]["block_size"] == 32
    onnx.checker.check_model(str(tmp_path / "x" / "model.onnx"), full_check=True)
    result = verify(spec_from_manifest(manifest), [onnx_candidate(tmp_path / "x", device="cpu")],
                    VerifyOptions(greedy_tokens=4, budget_overrides={"min_top1": 0.0}))  # random weights: top-1 is noise
    (c,) = result["candidates"]
    assert c["dtype"] == quantize and c["passed"], c["failures"]
    assert c["weights"]["passed"] and c["weights"]["max_quant_error_steps"] <= 0.5 + 1e-3


def test_quantized_export_is_smaller(tiny_base: Path, tmp_path: Path) -> None:
    sizes = {q: export_onnx(tiny_base, tmp_path / q, quantize=q, target="portable", progress=False)["bytes"]
             for q in ("none", "int4")}
    io = json.loads((tmp_path / "none" / "onnx_io.json").read_text())
    assert io["quantization"] is None and io["requires"] == "ONNX opset 21"
    assert sizes["int4"] < 0.5 * sizes["none"]


def test_cuda_quantized_graph_computes_in_float16_without_int8_activations(tiny_base: Path, tmp_path: Path) -> None:
    export_onnx(tiny_base, tmp_path / "x", target="cuda", dtype="float16", quantize="int4", progress=False)
    graph = onnx.load(str(tmp_path / "x" / "model.onnx")).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 4 * 4 + 1
    assert all("accuracy_level" not in {a.name for a in n.attribute} for n in nbits)  # CUDA: float16 compute
    assert json.loads((tmp_path / "x" / "onnx_io.json").read_text())["quantization"]["accuracy_level"] == 0


def test_refuses_unknown_quantization(tiny_base: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="unknown quantization"):
        export_onnx(tiny_base, tmp_path / "x", quantize="int3", progress=False)
    assert not (tmp_path / "x").exists()


def test_cli_quantize_options(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--model", str(tiny_base), "--out", str(tmp_path / "x"), "--quantize", "int4",
                 "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quantize"] == "int4"
    bake = ["bake", "--base", str(tiny_base), "--gates", str(tiny_gates), "--variant", "chat_energy_optA",
            "--preset", "4", "--quiet"]
    assert main([*bake, "--out", str(tmp_path / "a"), "--onnx-quantize", "int4"]) != 0
    assert "add --onnx" in capsys.readouterr().err
    assert main([*bake, "--out", str(tmp_path / "b"), "--onnx", "--onnx-target", "cuda",
                 "--onnx-quantize", "int4"]) != 0
    assert "--target cuda needs --dtype float16" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert main([*bake, "--out", str(tmp_path / "c"), "--onnx", "--onnx-quantize", "int8"]) == 0
    assert json.loads((tmp_path / "c" / "onnx" / "onnx_io.json").read_text())["quantization"]["weights"] == "int8"
