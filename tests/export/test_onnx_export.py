"""ONNX export: ORT logits and greedy tokens match transformers on the same checkpoint, for every target.

Tiny random Qwen3 models are built at test time (no network). Emulated bakes: ``dense`` (some
down_proj columns zeroed, one layer entirely) and ``pruned`` (smaller intermediate_size padded with
all-zero neurons). The ``cuda`` target's fused q/k norm has no CPU kernel; its graph is checked to be
the ``cpu`` graph with exactly that fusion, and the ``cpu`` graph is checked numerically.
"""

from __future__ import annotations

import argparse
import ctypes
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from bake.commands import export_cmd, generate_cmd
from bake.demo.assets import build_tiny_qwen3
from bake.errors import ExportError
from bake.write.checkpoint import carry_base_files
from export.onnx.builder import build_qwen3_model
from export.onnx.exporter import export_onnx, open_model_folder
from export.runtime.ort_loop import OnnxCausalLM

REL_TOL = 1e-4
DENSE_ZEROED = (40, 0, 128, 100)  # down_proj columns zeroed per layer (intermediate 128)
PRUNED_KEPT = (80, 96, 50, 70)  # real neurons per layer, padded to intermediate 96
TARGETS = ("portable", "cpu")  # the targets that run on ONNX Runtime's CPU provider


def load_hf(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def save_variant(src: Path, dst: Path, edit, **config_changes) -> Path:
    """Load ``src``, let ``edit`` change its state dict, save under a config with ``config_changes``."""
    from transformers import Qwen3ForCausalLM

    model = load_hf(src)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    edit(state)
    for key, value in config_changes.items():
        setattr(model.config, key, value)
    out = Qwen3ForCausalLM(model.config)
    out.load_state_dict(state)
    out.save_pretrained(str(dst))
    carry_base_files(src, dst)
    return dst


def prompt(vocab: int, length: int = 11, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(5, vocab, size=length).tolist()


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    """transformers' generate(do_sample=False) with eos not special: exactly ``n`` tokens."""
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


def rel_diff(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float32) - ref).max() / np.abs(ref).max())


def assert_matches(folder: Path, hf_model, vocab: int) -> None:
    """Logits at every position of two prompts (through the whole-prompt pass and, for the last-token
    graphs, one-token steps through the cache) and greedy tokens of a right-padded batch."""
    lm = OnnxCausalLM(folder, device="cpu")
    prompts = [prompt(vocab, 11, seed=0), prompt(vocab, 6, seed=1)]
    for ids in prompts:
        assert rel_diff(lm.logits(ids), hf_logits(hf_model, ids)) <= REL_TOL
    got = lm.greedy(prompts, 8, eos_ids=set(), pad_id=0)
    assert [row.tolist() for row in got] == [hf_greedy(hf_model, ids, 8) for ids in prompts]


def cached_logits(lm: OnnxCausalLM, ids: list[int], prefill: int = 3) -> np.ndarray:
    """Portable graph: prefill ``prefill`` tokens, then one token at a time through the concatenated cache."""
    cache = lm.new_cache(1, len(ids))
    out = [lm.forward(np.array([ids[:prefill]]), np.array([prefill]), cache)[0]]
    for t in range(prefill, len(ids)):
        out.append(lm.forward(np.array([[ids[t]]]), np.array([1]), cache)[0])
    return np.concatenate(out)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny_hf(tiny):
    return load_hf(tiny)


@pytest.fixture(scope="module")
def vocab(tiny) -> int:
    return json.loads((tiny / "config.json").read_text())["vocab_size"]


@pytest.fixture(scope="module")
def dense_bake(tiny, tmp_path_factory) -> Path:
    def zero_columns(state):
        g = torch.Generator().manual_seed(1)
        for i, n in enumerate(DENSE_ZEROED):
            cols = torch.randperm(128, generator=g)[:n]
            state[f"model.layers.{i}.mlp.down_proj.weight"][:, cols] = 0

    return save_variant(tiny, tmp_path_factory.mktemp("dense") / "model", zero_columns)


@pytest.fixture(scope="module")
def pruned_bake(tiny, tmp_path_factory) -> Path:
    def prune(state):
        g = torch.Generator().manual_seed(2)
        for i, kept in enumerate(PRUNED_KEPT):
            keep = torch.randperm(128, generator=g)[:kept].sort().values
            for proj, dim in (("gate_proj", 0), ("up_proj", 0), ("down_proj", 1)):
                name = f"model.layers.{i}.mlp.{proj}.weight"
                w = state[name].index_select(dim, keep)
                pad_shape = list(w.shape)
                pad_shape[dim] = 96 - kept  # all-zero neurons up to the config width
                state[name] = torch.cat([w, torch.zeros(pad_shape)], dim=dim)

    return save_variant(tiny, tmp_path_factory.mktemp("pruned") / "model", prune, intermediate_size=96)


@pytest.mark.parametrize("target", TARGETS)
def test_float32_matches_transformers(tiny, tiny_hf, vocab, tmp_path, target):
    out = tmp_path / "onnx"
    report = export_onnx(tiny, out, target=target, progress=False)
    assert report["mlp_widths"] == [128] * 4 and not report["external_data"] and report["checked_on"] == "cpu"
    assert_matches(out, tiny_hf, vocab)


def test_portable_graph_matches_through_the_concatenated_cache(tiny, tiny_hf, vocab, tmp_path):
    export_onnx(tiny, tmp_path / "onnx", target="portable", progress=False)
    ids = prompt(vocab, 12)
    got = cached_logits(OnnxCausalLM(tmp_path / "onnx", device="cpu"), ids)
    assert rel_diff(got, hf_logits(tiny_hf, ids)) <= REL_TOL


@pytest.mark.parametrize("target", TARGETS)
def test_ragged_export_of_dense_bake_drops_zero_columns(dense_bake, vocab, tmp_path, target):
    out = tmp_path / "onnx"
    report = export_onnx(dense_bake, out, layout="ragged", target=target, progress=False)
    widths = [128 - n for n in DENSE_ZEROED]
    assert report["mlp_widths"] == widths
    assert json.loads((out / "onnx_io.json").read_text())["mlp_widths"] == widths
    shapes = {t.name: list(t.dims) for t in onnx.load(str(out / "model.onnx")).graph.initializer}
    for i, w in enumerate(widths):
        down = f"model.layers.{i}.mlp.down_proj.weight"
        assert shapes.get(down) == ([w, 64] if w else None)  # stored transposed; an empty layer has no MLP
        if target == "cpu":  # gate and up rows packed into one projection
            assert shapes.get(f"model.layers.{i}.mlp.gate_up_proj.weight") == ([64, 2 * w] if w else None)
    assert_matches(out, load_hf(dense_bake), vocab)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("layout", ["as-is", "ragged"])
def test_pruned_bake_matches(pruned_bake, vocab, tmp_path, layout, target):
    out = tmp_path / "onnx"
    report = export_onnx(pruned_bake, out, layout=layout, target=target, progress=False)
    assert report["mlp_widths"] == ([96] * 4 if layout == "as-is" else list(PRUNED_KEPT))
    assert_matches(out, load_hf(pruned_bake), vocab)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("multiple", [24, 64])
def test_aligned_widths_add_zero_neurons_and_stay_exact(dense_bake, vocab, tmp_path, target, multiple):
    """--width-multiple rounds every ragged layer up with zero neurons (an empty layer still has no MLP); the
    logits and greedy tokens are still transformers' own, and the padding is reported per layer."""
    out = tmp_path / "onnx"
    report = export_onnx(dense_bake, out, layout="ragged", target=target, width_multiple=multiple, progress=False)
    kept = [128 - n for n in DENSE_ZEROED]  # 88, 128, 0, 28
    widths = [-(-k // multiple) * multiple for k in kept]
    assert report["mlp_widths"] == widths and report["mlp_padding_per_layer"] == [w - k for w, k in zip(widths, kept)]
    assert report["mlp_neurons"] == sum(kept) and report["mlp_padding_neurons"] == sum(widths) - sum(kept)
    io = json.loads((out / "onnx_io.json").read_text())
    assert (io["mlp_widths"], io["mlp_padding"], io["width_multiple"]) == (widths, report["mlp_padding_per_layer"],
                                                                           multiple)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(out / "model.onnx")).graph.initializer}
    for i, (w, k) in enumerate(zip(widths, kept)):
        down = weights.get(f"model.layers.{i}.mlp.down_proj.weight")  # [width, hidden]: padding rows are zero
        assert (down is None) == (w == 0)
        if w:
            assert down.shape == (w, 64) and not down[k:].any() and (down[:k] != 0).any(axis=1).all()
    assert_matches(out, load_hf(dense_bake), vocab)


def test_cuda_target_aligns_widths_to_64_by_default(dense_bake, tmp_path):
    report = export_onnx(dense_bake, tmp_path / "cuda", target="cuda", dtype="float16", layout="ragged",
                         progress=False)
    assert report["width_multiple"] == 64 and report["mlp_widths"] == [128, 128, 0, 64]
    assert export_onnx(dense_bake, tmp_path / "cpu", target="cpu", layout="ragged",
                       progress=False)["mlp_widths"] == [88, 128, 0, 28]
    with pytest.raises(ExportError, match="--width-multiple 0"):
        export_onnx(dense_bake, tmp_path / "bad", target="cuda", dtype="float16", width_multiple=0, progress=False)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("target", ["portable", "cpu", "cuda"])
def test_no_graph_uses_gathernd_and_the_final_norm_writes_no_unused_sum(tiny, tmp_path, target):
    """GatherND broke CUDA-graph capture in ONNX Runtime's CUDA kernels; the last SkipSimplifiedLayerNormalization's
    residual sum is read by nothing, so it is not asked for."""
    export_onnx(tiny, tmp_path / "onnx", target=target, dtype="float16" if target == "cuda" else "float32",
                progress=False)
    graph = onnx.load(str(tmp_path / "onnx" / "model.onnx"), load_external_data=False).graph
    assert "GatherND" not in {n.op_type for n in graph.node}
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    unused = [o for n in graph.node for o in n.output if o and o not in read]
    assert unused == []


@pytest.mark.parametrize("target", TARGETS)
def test_float16_export_agrees_on_top1(tiny, tiny_hf, vocab, tmp_path, target):
    out = tmp_path / "onnx"
    export_onnx(tiny, out, dtype="float16", target=target, progress=False)
    lm = OnnxCausalLM(out, device="cpu")
    agree = [lm.logits(ids).argmax(-1) == hf_logits(tiny_hf, ids).argmax(-1)
             for ids in (prompt(vocab, 64, seed=s) for s in range(3))]
    assert np.concatenate(agree).mean() >= 0.99


def graph_dims(values) -> dict[str, list]:
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


@pytest.mark.parametrize(("target", "dtype"), [("portable", "float32"), ("cpu", "float32"), ("cuda", "float16")])
def test_checker_shape_inference_and_io(tiny, vocab, tmp_path, target, dtype):
    out = tmp_path / "onnx"
    export_onnx(tiny, out, target=target, dtype=dtype, progress=False)
    path = str(out / "model.onnx")
    onnx.checker.check_model(path, full_check=True)
    onnx.shape_inference.infer_shapes_path(path, str(tmp_path / "inferred.onnx"), check_type=True, strict_mode=True)
    graph = onnx.load(path, load_external_data=False).graph
    ins, outs = graph_dims(graph.input), graph_dims(graph.output)
    assert ins["input_ids"] == ["batch", "sequence"] and ins["attention_mask"] == ["batch", "total_sequence"]
    assert ins["past_key_values.3.value"] == ["batch", 2, "past_sequence", 16]
    assert outs["present.0.key"] == ["batch", 2, "total_sequence", 16]
    io = json.loads((out / "onnx_io.json").read_text())
    assert io["target"] == target and io["dtype"] == dtype
    if target == "portable":
        assert "position_ids" in ins and outs["logits"] == ["batch", "sequence", vocab]
        assert (io["kv_cache"], io["logits"], io["max_position_id"]) == ("concat", "all", None)
    else:
        assert "position_ids" not in ins and outs["logits"] == ["batch", 1, vocab]
        assert (io["kv_cache"], io["logits"], io["max_position_id"]) == ("shared-buffer", "last", 511)
        assert graph.output[0].type.tensor_type.elem_type == graph.input[2].type.tensor_type.elem_type  # model dtype


# The ops of the cuda graph; each has a CUDA kernel in onnxruntime-gpu (and is what onnxruntime-genai's
# builder emits for Qwen3 on CUDA, plus the last-token gather). Anything else would be placed on the CPU.
CUDA_OPS = {"Gather", "ReduceSum", "Sub", "Cast", "Shape", "RMSNormalization", "MatMul", "Split",
            "GroupQueryAttention", "SkipSimplifiedLayerNormalization", "Sigmoid", "Mul", "ConstantOfShape", "Min",
            "Unsqueeze", "CumSum", "Add", "Reshape", "Gemm", "MatMulNBits", "GatherBlockQuantized"}


def build(model: Path, folder: Path, **kwargs) -> onnx.ModelProto:
    """The float16 ragged graph (weights external, in ``folder``/w.data)."""
    folder.mkdir()
    config, reader = open_model_folder(model)
    return build_qwen3_model(reader, config, folder / "w.data", dtype=torch.float16, ragged=True, **kwargs).model


def test_cuda_graph_is_the_cpu_graph_with_the_qk_norm_fused_into_attention(dense_bake, tmp_path):
    cuda = build(dense_bake, tmp_path / "a", target="cuda")
    unfused = build(dense_bake, tmp_path / "b", target="cuda", fuse_qk_norm=False)
    cpu = build(dense_bake, tmp_path / "c", target="cpu", width_multiple=64)  # the cuda target's default widths
    assert (tmp_path / "b" / "w.data").read_bytes() == (tmp_path / "c" / "w.data").read_bytes()
    assert unfused.graph == cpu.graph  # the cuda graph minus the fusion is the graph tested numerically on CPU
    assert {n.op_type for n in cuda.graph.node} <= CUDA_OPS
    gqa = [n for n in cuda.graph.node if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == 4
    for i, node in enumerate(gqa):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["do_rotary"] == 1 and attrs["qk_norm_epsilon"] == pytest.approx(1e-6)
        assert list(node.input[-2:]) == [f"model.layers.{i}.self_attn.q_norm.weight",
                                         f"model.layers.{i}.self_attn.k_norm.weight"]
    # exactly the per-head norm nodes (Reshape, RMSNormalization, Reshape for q and k) are gone
    removed = {n.name for n in cpu.graph.node} - {n.name for n in cuda.graph.node}
    assert len(removed) == 4 * 2 * 3 and all("_norm/" in n for n in removed)
    host_side = [n.op_type for n in cuda.graph.node if n.op_type == "Shape"]
    assert len(host_side) == 2  # total_sequence_length (a host input of GQA) and ConstantOfShape's shape


@pytest.mark.parametrize("quantize", ["none", "int4"])
def test_bfloat16_cuda_graph_is_the_float16_one_in_bfloat16_with_float32_logits(dense_bake, tmp_path, quantize):
    """bfloat16 (as Qwen3 ships: float16 can overflow on real weights) for --target cuda: every node and weight of the
    float16 graph, in bfloat16, and one Cast making the logits float32 as onnxruntime-genai's builder does. ONNX
    Runtime's CUDA provider registers a bfloat16 kernel for each of these ops (docs/ONNX.md lists them)."""
    graphs = {}
    for dtype in ("float16", "bfloat16"):
        report = export_onnx(dense_bake, tmp_path / dtype, target="cuda", dtype=dtype, layout="ragged",
                             quantize=quantize, progress=False)
        graphs[dtype] = onnx.load(str(tmp_path / dtype / "model.onnx")).graph
    assert "not loaded: ONNX Runtime's CPU provider has no bfloat16 kernels" in report["checked_on"]
    f16, bf16 = graphs["float16"], graphs["bfloat16"]
    (cast,) = [n for n in bf16.node if n.name == "lm_head/Cast"]
    uncast = {cast.output[0]: cast.input[0]}  # the bfloat16 graph minus its Cast
    assert [(n.op_type, [uncast.get(i, i) for i in n.input]) for n in bf16.node if n is not cast] == \
        [(n.op_type, list(n.input)) for n in f16.node]
    assert {n.op_type for n in bf16.node} <= CUDA_OPS
    types = {t.name: t.data_type for t in bf16.initializer}
    for t in f16.initializer:  # every float16 tensor (weights, scales, RoPE tables) is bfloat16 here
        assert types[t.name] == (onnx.TensorProto.BFLOAT16 if t.data_type == onnx.TensorProto.FLOAT16 else t.data_type)
    assert bf16.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # logits
    assert bf16.output[1].type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16  # the KV cache
    io = json.loads((tmp_path / "bfloat16" / "onnx_io.json").read_text())
    assert io["dtype"] == "bfloat16" and io["outputs"][0]["dtype"] == "float32"


def test_bfloat16_kv_cache_is_allocated_zero_filled(tiny, tmp_path):
    """The bfloat16 cache buffers (numpy has no bfloat16) are made on the device and zero-filled from raw bits."""
    export_onnx(tiny, tmp_path / "bf16", target="cuda", dtype="bfloat16", progress=False)
    lm = OnnxCausalLM.__new__(OnnxCausalLM)  # the cache alone: a bfloat16 graph has no CPU kernels to load
    lm.io, lm.device = json.loads((tmp_path / "bf16" / "onnx_io.json").read_text()), "cpu"
    buffer = lm._zeros([1, 2, 8, 16])
    assert buffer.data_type() == "tensor(bfloat16)" and buffer.shape() == [1, 2, 8, 16]
    raw = np.ctypeslib.as_array((ctypes.c_uint16 * 256).from_address(buffer.data_ptr()))
    assert not raw.any()


def test_cuda_target_needs_float16_and_loads_on_cpu(tiny, tmp_path):
    with pytest.raises(ExportError, match="--target cuda needs --dtype float16 or bfloat16"):
        export_onnx(tiny, tmp_path / "a", target="cuda", progress=False)
    report = export_onnx(tiny, tmp_path / "b", target="cuda", dtype="float16", progress=False)
    assert report["checked_on"].startswith("cpu (loaded only")
    with pytest.raises(ExportError, match="runs only on CUDA"):
        OnnxCausalLM(tmp_path / "b", device="cpu")
    assert not (tmp_path / "a").exists()


def test_external_data_missing_or_truncated_is_an_export_error(tiny, tmp_path):
    out = tmp_path / "onnx"
    report = export_onnx(tiny, out, external_data_threshold=0, progress=False)
    data = out / "model.onnx.data"
    assert report["external_data"] and data.is_file()
    OnnxCausalLM(out, device="cpu")
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(ExportError, match="truncated"):
        OnnxCausalLM(out, device="cpu")
    data.unlink()
    with pytest.raises(ExportError, match="model.onnx.data is missing"):
        OnnxCausalLM(out, device="cpu")


def test_ort_graph_refuses_positions_past_its_rope_tables(tiny, tmp_path):
    export_onnx(tiny, tmp_path / "onnx", target="cpu", progress=False)
    lm = OnnxCausalLM(tmp_path / "onnx", device="cpu")
    cache = lm.new_cache(1, 600)
    lm.forward(np.ones((1, 512), np.int64), np.array([512]), cache)  # positions 0..511: the whole table
    with pytest.raises(ExportError, match="position 512 is past this export's RoPE tables"):
        lm.forward(np.ones((1, 1), np.int64), np.array([1]), cache)
    with pytest.raises(ExportError, match="do not fit the KV cache of 4"):
        lm.forward(np.ones((1, 5), np.int64), np.array([5]), lm.new_cache(1, 4))


def test_ort_targets_refuse_head_dim_not_a_multiple_of_16(tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=8)
    Qwen3ForCausalLM(config).save_pretrained(str(tmp_path / "model"))
    with pytest.raises(ExportError, match="head_dim 8 is not a multiple of 16.*--target portable"):
        export_onnx(tmp_path / "model", tmp_path / "onnx", target="cpu", progress=False)
    assert not (tmp_path / "onnx").exists()
    assert export_onnx(tmp_path / "model", tmp_path / "onnx", target="portable", progress=False)["checked_on"] == "cpu"


def test_bad_inputs_are_export_errors(tiny, tmp_path):
    with pytest.raises(ExportError, match="--dtype bfloat16 needs --target cuda"):
        export_onnx(tiny, tmp_path / "a", dtype="bfloat16", progress=False)
    with pytest.raises(ExportError, match="unknown target"):
        export_onnx(tiny, tmp_path / "a", target="tpu", progress=False)
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ExportError, match="Qwen3"):
        export_onnx(other, tmp_path / "b", progress=False)
    with pytest.raises(ExportError, match="not a lambda-bake ONNX export"):
        OnnxCausalLM(tmp_path, device="cpu")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("target", TARGETS)
def test_attention_bias_and_untied_lm_head(tmp_path, target):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=16, attention_bias=True,
                         tie_word_embeddings=False, initializer_range=0.1, max_position_embeddings=64)
    torch.manual_seed(5)
    model = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.1)
    model.save_pretrained(str(tmp_path / "model"))
    export_onnx(tmp_path / "model", tmp_path / "onnx", target=target, progress=False)
    assert_matches(tmp_path / "onnx", load_hf(tmp_path / "model"), 96)


def test_cli_export_json_and_generate(tiny, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="lambda-bake")
    sub = parser.add_subparsers(dest="command", required=True)
    export_cmd.register(sub)
    generate_cmd.register(sub)
    out = tmp_path / "onnx"
    args = parser.parse_args(["export", "--model", str(tiny), "--out", str(out), "--layout", "ragged",
                              "--target", "cpu", "--json"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "ragged" and report["target"] == "cpu"
    assert {"model.onnx", "genai_config.json", "onnx_io.json", "tokenizer.json"} <= set(report["files"])
    for engine in ("ort", "genai"):
        args = parser.parse_args(["generate", "--onnx", str(out), "--prompt", "What is two plus two?",
                                  "--max-new-tokens", "4", "--engine", engine])
        assert args.func(args) == 0
        assert capsys.readouterr().out.endswith("\n")


@pytest.mark.parametrize("target", ["portable", "cpu"])
def test_score_of_several_sequences_equals_transformers_at_every_position(tiny, tiny_hf, tmp_path, target):
    """Sequences of different lengths scored together (cpu: stepped as one batch through the in-place KV cache)
    give every position's logits of each alone."""
    export_onnx(tiny, tmp_path / "x", target=target, progress=False)
    rng = np.random.default_rng(5)
    seqs = [rng.integers(5, 380, size=n).tolist() for n in (7, 19, 1, 12)]
    scored = OnnxCausalLM(tmp_path / "x", device="cpu").score(seqs)
    assert [s.shape[0] for s in scored] == [7, 19, 1, 12]
    for seq, got in zip(seqs, scored):
        with torch.no_grad():
            want = tiny_hf(torch.tensor([seq])).logits[0].numpy()
        assert float(np.abs(got - want).max() / np.abs(want).max()) < 1e-5


@pytest.mark.parametrize("target", ["portable", "cpu"])
def test_score_from_gives_a_last_token_graph_the_positions_a_deployment_reads(tiny, tiny_hf, tmp_path, target):
    """verify's path: a last-token graph (cpu) scores each sequence from its prompt's last position on (one batched
    prefill, then one-token steps), every row as transformers scores it alone; a graph with logits at every position
    (portable) still scores every position."""
    export_onnx(tiny, tmp_path / "x", target=target, progress=False)
    rng = np.random.default_rng(6)
    seqs = [rng.integers(5, 380, size=n).tolist() for n in (9, 21, 4, 13)]
    firsts = [3, 17, 0, 12]  # a long continuation, a short one, the whole sequence stepped, only its last position
    scored = OnnxCausalLM(tmp_path / "x", device="cpu").score_from(seqs, firsts)
    assert [f for f, _ in scored] == (firsts if target == "cpu" else [0, 0, 0, 0])
    for seq, (first, got) in zip(seqs, scored):
        with torch.no_grad():
            want = tiny_hf(torch.tensor([seq])).logits[0, first:].numpy()
        assert got.shape == want.shape
        assert float(np.abs(got - want).max() / np.abs(want).max()) < 1e-5
