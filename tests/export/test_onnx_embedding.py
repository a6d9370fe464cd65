"""Quantized ONNX exports look tokens up in int codes: com.microsoft GatherBlockQuantized on the tied table that the
lm_head's MatMulNBits reads (one copy on disk, as onnxruntime-genai's model builder shares it), or on an untied
table quantized the same way; ``--embedding float`` keeps the float table. verify proves the shared table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime_genai as og
import pytest
import torch
from onnx import numpy_helper

from bake.cli import main
from bake.demo.assets import TinyQwen3Spec, build_tiny_qwen3
from bake.errors import ExportError
from bake.gates.gate_math import Cut, GateSettings
from bake.gates.variant import load_variant
from bake.verify.weights.bake_tensors import BakeFolder
from bake.verify.weights.weight_check import check_export_weights
from bake.write.pipeline import BakeOptions, bake_checkpoint
from export.onnx.exporter import export_onnx
from export.onnx.graph_ort import embedding_form
from export.onnx.quantize import QuantSpec
from export.runtime.chat import ChatTokenizer
from export.runtime.genai_loop import GenaiLM
from export.runtime.ort_loop import OnnxCausalLM

VOCAB, HIDDEN = 384, 64  # the tiny test model


@pytest.fixture(scope="module")
def bake(tiny_base: Path, tiny_gates: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    v = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    out = tmp_path_factory.mktemp("embedding") / "bake"
    bake_checkpoint(tiny_base, v, GateSettings(Cut("preset", 3), "hard", "energy"), out, BakeOptions(progress=False))
    return out


def graph(folder: Path) -> onnx.GraphProto:
    return onnx.load(str(folder / "model.onnx")).graph


@pytest.mark.parametrize(("quantize", "layout"), [("int4", "as-is"), ("int4", "ragged"), ("int8", "ragged")])
def test_the_shared_table_is_the_lm_heads_codes_and_the_float_table_is_gone(bake: Path, tmp_path: Path,
                                                                            quantize: str, layout: str) -> None:
    shared = export_onnx(bake, tmp_path / "s", quantize=quantize, layout=layout, progress=False)
    kept = export_onnx(bake, tmp_path / "f", quantize=quantize, layout=layout, embedding="float", progress=False)
    float_bytes = VOCAB * HIDDEN * 4
    assert shared["embedding"] == {"form": "shared", "why": None, "bytes": 0, "float_bytes": float_bytes}
    assert kept["embedding"] == {"form": "float", "why": "--embedding float", "bytes": float_bytes,
                                 "float_bytes": float_bytes}
    g = graph(tmp_path / "s")
    names = {t.name for t in g.initializer}
    assert "model.embed_tokens.weight" not in names and "model.embed_tokens.weight" in {
        t.name for t in graph(tmp_path / "f").initializer}
    (lookup,) = [n for n in g.node if n.op_type == "GatherBlockQuantized"]
    (reshape,) = [n for n in g.node if lookup.input[0] in n.output]
    (head,) = [n for n in g.node if n.op_type == "MatMulNBits" and n.name == "lm_head/MatMulNBits"]
    assert reshape.input[0] == head.input[1] == "lm_head.weight.quant"
    assert list(lookup.input[1:]) == ["input_ids", *head.input[2:4]]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in lookup.attribute}
    bits = int(quantize[3:])
    assert attrs == {"bits": bits, "block_size": 32, "gather_axis": 0, "quantize_axis": 1}
    codes = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    assert codes[reshape.input[1]].tolist() == [VOCAB, HIDDEN * bits // 8]
    assert kept["bytes"] - shared["bytes"] >= float_bytes - 1024  # the float table, less a few bytes of graph
    io = json.loads((tmp_path / "s" / "onnx_io.json").read_text())
    assert io["embedding"]["form"] == "shared" and "GatherBlockQuantized" in io["requires"]
    # ONNX Runtime's lookup returns the head's rows, dequantized: the two nodes alone, against numpy
    ids = np.array([[0, 5, 383, 17]], np.int64)
    rows = _run_lookup(g, reshape, lookup, ids)
    want = _dequantize(codes["lm_head.weight.quant"], codes["lm_head.weight.scales"],
                       codes.get("lm_head.weight.zero_points"), bits)[ids[0]]
    assert np.array_equal(rows[0], want)


def _dequantize(b: np.ndarray, scales: np.ndarray, zp: np.ndarray | None, bits: int) -> np.ndarray:
    """MatMulNBits' layout read by hand: codes low bits first, (code - zero point) * scale per block (no zero points:
    the implicit 2**(bits-1))."""
    def unpack(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32) if bits == 8 else np.stack([x & 0x0F, x >> 4], -1).reshape(*x.shape[:-1], -1)

    n, blocks = scales.shape
    zero = unpack(zp).astype(np.float32)[:, :blocks] if zp is not None else np.full((n, blocks), 1 << (bits - 1),
                                                                                       np.float32)
    return ((unpack(b).astype(np.float32) - zero[..., None]) * scales[..., None].astype(np.float32)).reshape(n, -1)


def _run_lookup(g: onnx.GraphProto, reshape: onnx.NodeProto, lookup: onnx.NodeProto, ids: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    inits = [t for t in g.initializer if t.name in (*reshape.input, *lookup.input)]
    out = onnx.helper.make_tensor_value_info(lookup.output[0], onnx.TensorProto.FLOAT, None)
    small = onnx.helper.make_graph([reshape, lookup], "lookup", [onnx.helper.make_tensor_value_info(
        "input_ids", onnx.TensorProto.INT64, ["b", "s"])], [out], initializer=inits)
    model = onnx.helper.make_model(small, opset_imports=[onnx.helper.make_opsetid("", 21),
                                                         onnx.helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": ids})[0]


@pytest.mark.parametrize("quantize", ["int4", "int8"])
def test_verify_proves_the_shared_table_and_says_the_embedding_is_quantized(bake: Path, tmp_path: Path,
                                                                            quantize: str) -> None:
    from bake.verify.candidates import onnx_candidate
    from bake.verify.verifier import VerifyOptions, spec_from_manifest, verify
    from bake.write.manifest import read_manifest

    export_onnx(bake, tmp_path / "s", quantize=quantize, layout="ragged", progress=False)
    report = verify(spec_from_manifest(read_manifest(bake)), [onnx_candidate(tmp_path / "s", device="cpu")],
                    VerifyOptions(greedy_tokens=4, budget_overrides={"min_top1": 0.0}), bake=bake)
    (c,) = report["candidates"]
    assert c["passed"] and c["weights"]["passed"], c["failures"]
    assert "the linear weights and the input embedding (the tied table, shared with lm_head)" in c["budget"]["why"]
    float_check = next(k for k in c["checks"] if "float activations" in k["against"])
    assert float_check["passed"] and float_check["max_rel_diff"] <= 1e-4  # the graph computes its own weights


def test_the_asymmetric_scheme_shares_its_zero_points_too(bake: Path, tmp_path: Path) -> None:
    """--quant-scheme asymmetric: a zero point per block, read by the head and the lookup alike; verify proves it."""
    report = export_onnx(bake, tmp_path / "a", quantize="int4", quant_scheme="asymmetric", progress=False)
    symmetric = export_onnx(bake, tmp_path / "s", quantize="int4", progress=False)
    g = graph(tmp_path / "a")
    (lookup,) = [n for n in g.node if n.op_type == "GatherBlockQuantized"]
    assert lookup.input[3] == "lm_head.weight.zero_points" and report["embedding"]["form"] == "shared"
    assert not any(t.name.endswith(".zero_points") for t in graph(tmp_path / "s").initializer)
    blocks = sum(numpy_helper.to_array(t).size for t in g.initializer if t.name.endswith(".zero_points"))
    assert report["bytes"] - symmetric["bytes"] >= blocks  # the zero points are the difference
    assert json.loads((tmp_path / "a" / "onnx_io.json").read_text())["quantization"]["symmetric"] is False
    assert check_export_weights(tmp_path / "a", BakeFolder(bake)).passed


def test_the_weight_proof_catches_one_changed_code_or_a_miswired_lookup(bake: Path, tmp_path: Path) -> None:
    export_onnx(bake, tmp_path / "s", quantize="int4", progress=False)
    assert check_export_weights(tmp_path / "s", BakeFolder(bake)).passed

    def damaged(name: str, edit: object) -> list[str]:
        folder = tmp_path / name
        shutil.copytree(tmp_path / "s", folder)
        model = onnx.load(str(folder / "model.onnx"))
        edit(model.graph)
        onnx.save(model, str(folder / "model.onnx"))
        report = check_export_weights(folder, BakeFolder(bake))
        assert not report.passed
        return [f.message for f in report.failures]

    def flip_code(g: onnx.GraphProto) -> None:
        table = next(t for t in g.initializer if t.name == "lm_head.weight.quant")
        codes = numpy_helper.to_array(table).copy()
        codes[7, 1, 3] ^= 0x0F  # one byte: two 4-bit codes of token 7's row, read by lookup and head alike
        table.CopyFrom(numpy_helper.from_array(codes, table.name))

    assert any(m.startswith("lm_head.weight.quant: element [7, ") for m in damaged("code", flip_code))

    def other_scales(g: onnx.GraphProto) -> None:
        lookup = next(n for n in g.node if n.op_type == "GatherBlockQuantized")
        lookup.input[2] = "model.layers.0.self_attn.o_proj.weight.scales"

    assert any("GatherBlockQuantized" in m and "not the lm_head's" in m for m in damaged("scales", other_scales))

    def other_blocks(g: onnx.GraphProto) -> None:
        lookup = next(n for n in g.node if n.op_type == "GatherBlockQuantized")
        next(a for a in lookup.attribute if a.name == "block_size").i = 64

    assert any("blocks of 64" in m for m in damaged("blocks", other_blocks))


def test_genai_and_our_loop_run_both_forms(bake: Path, tmp_path: Path) -> None:
    chat = ChatTokenizer(bake)
    ids = chat.prompt_ids([{"role": "user", "content": "Name two colours."}])
    tokens = {}
    for form in ("auto", "float"):
        out = tmp_path / form
        export_onnx(bake, out, quantize="int4", embedding=form, progress=False)
        og.Config(str(out))
        eos = ChatTokenizer(out).eos_ids()
        ours = [int(s[0]) for s in OnnxCausalLM(out, device="cpu").stream([ids], 8, eos, 0)]
        assert ours == [int(s[0]) for s in GenaiLM(out, device="cpu").stream([ids], 8, eos, 0)]
        tokens[form] = ours
    assert len(tokens["auto"]) > 1


def test_an_untied_model_quantizes_its_own_table(tmp_path: Path) -> None:
    base = build_tiny_qwen3(tmp_path / "untied", TinyQwen3Spec(tie_word_embeddings=False, seed=3))
    report = export_onnx(base, tmp_path / "s", quantize="int4", progress=False)
    blocks = HIDDEN // 32
    assert report["embedding"]["form"] == "quantized"
    assert report["embedding"]["bytes"] == VOCAB * (HIDDEN // 2 + blocks * 4)  # codes and scales: symmetric
    names = {t.name for t in graph(tmp_path / "s").initializer}
    assert {"model.embed_tokens.weight.quant", "lm_head.weight.quant"} <= names
    assert "model.embed_tokens.weight" not in names
    assert check_export_weights(tmp_path / "s", BakeFolder(base)).passed
    with torch.no_grad():  # the dequantized model verify runs holds the table the lookup reads
        from bake.verify.export_model import export_model
        from export.onnx.folder import read_export_folder

        model = export_model(tmp_path / "s", read_export_folder(tmp_path / "s"))
        ids = torch.tensor([[3, 9, 200]])
        ours = np.asarray(OnnxCausalLM(tmp_path / "s", device="cpu").logits(ids[0].tolist())).reshape(-1, VOCAB)[-1]
        theirs = model(ids).logits[0, -1].numpy()
        assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 0.2  # int8 activations on the CPU kernel


def test_the_cuda_graph_shares_the_table_in_its_dtype(bake: Path, tmp_path: Path) -> None:
    for dtype in ("float16", "bfloat16"):
        report = export_onnx(bake, tmp_path / dtype, target="cuda", dtype=dtype, quantize="int4", progress=False)
        assert report["embedding"]["form"] == "shared"
        assert report["embedding"]["float_bytes"] == VOCAB * HIDDEN * 2
        g = graph(tmp_path / dtype)
        assert sum(n.op_type == "GatherBlockQuantized" for n in g.node) == 1
        assert check_export_weights(tmp_path / dtype, BakeFolder(bake)).passed


def test_when_the_float_table_stays() -> None:
    spec, zero_points = QuantSpec(4), QuantSpec(4, symmetric=False)
    assert embedding_form("auto", None, 64, True).form == "float"  # not quantized: nothing to share
    assert embedding_form("auto", spec, 64, True).form == "shared"
    assert embedding_form("auto", spec, 64, False).form == "quantized"
    assert embedding_form("auto", spec, 96, True).form == "shared"  # 3 blocks a row, no zero points: fine
    odd = embedding_form("auto", zero_points, 96, True)  # 3 blocks a row: CUDA reads packed zero points wrongly
    assert odd.form == "float" and "32663" in odd.why
    ragged = embedding_form("auto", spec, 100, True)
    assert ragged.form == "float" and "not a whole number of 32-wide blocks" in ragged.why
    assert embedding_form("auto", QuantSpec(8), 96, True).form == "shared"  # 8-bit zero points are not packed


def test_refused_embedding_requests(bake: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ExportError, match="needs --quantize int4 or int8 and --target cpu or cuda"):
        export_onnx(bake, tmp_path / "x", embedding="quantized", progress=False)
    with pytest.raises(ExportError, match="needs --quantize int4 or int8 and --target cpu or cuda"):
        export_onnx(bake, tmp_path / "x", embedding="quantized", quantize="int4", target="portable", progress=False)
    assert not (tmp_path / "x").exists()
    for args in (["export", "--model", str(bake), "--out", str(tmp_path / "x"), "--embedding", "quantized"],
                 ["bake", "--base", str(bake), "--gates", "g", "--preset", "1", "--out", str(tmp_path / "x"),
                  "--onnx-embedding", "float"]):
        assert main([*args, "--quiet"]) == 2
        assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["export", "--model", str(bake), "--out", str(tmp_path / "q"), "--quantize", "int4"]) == 0
    assert "embedding: looked up in the lm_head's int codes (GatherBlockQuantized): 0 bytes of its own, 0.1 MB less " \
           "than the float table" in capsys.readouterr().err
