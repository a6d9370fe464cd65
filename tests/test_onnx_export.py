"""ONNX export: ORT logits and greedy tokens match transformers on the same checkpoint.

Tiny random Qwen3 models are built at test time (no network). Emulated bakes: ``dense`` (some
down_proj columns zeroed, one layer entirely) and ``pruned`` (smaller intermediate_size padded with
all-zero neurons).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from bake.checkpoint_writer import carry_base_files
from bake.demo_assets import build_tiny_qwen3
from bake.errors import ExportError
from export.commands import register
from export.exporter import export_onnx
from export.runtime import OnnxCausalLM, position_ids

REL_TOL = 1e-4
DENSE_ZEROED = (40, 0, 128, 100)  # down_proj columns zeroed per layer (intermediate 128)
PRUNED_KEPT = (80, 96, 50, 70)  # real neurons per layer, padded to intermediate 96


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


def prompts(vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Batch 2, 9 tokens, the second row left-padded by 4."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(2, 9)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, :4] = 0
    ids[1, :4] = 0
    return ids, mask


def hf_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                     position_ids=torch.from_numpy(position_ids(mask))).logits.numpy()


def rel_diff(got: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    valid = mask.astype(bool)
    return float(np.abs(got.astype(np.float32) - ref)[valid].max() / np.abs(ref[valid]).max())


def cached_logits(lm: OnnxCausalLM, ids: np.ndarray, mask: np.ndarray, prefill: int = 3) -> np.ndarray:
    """Prefill ``prefill`` tokens, then feed one token at a time through the KV cache."""
    pos = position_ids(mask)
    logits, past = lm.step(ids[:, :prefill], mask[:, :prefill], pos[:, :prefill], lm.empty_past(len(ids)))
    out = [logits]
    for t in range(prefill, ids.shape[1]):
        logits, past = lm.step(ids[:, t:t + 1], mask[:, :t + 1], pos[:, t:t + 1], past)
        out.append(logits)
    return np.concatenate(out, axis=1)


def assert_matches(folder: Path, hf_model, vocab: int) -> None:
    ids, mask = prompts(vocab)
    ref = hf_logits(hf_model, ids, mask)
    lm = OnnxCausalLM(folder, device="cpu")
    assert rel_diff(lm.logits(ids, mask), ref, mask) <= REL_TOL
    assert rel_diff(cached_logits(lm, ids, mask), ref, mask) <= REL_TOL


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


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_float32_matches_transformers_full_and_through_kv_cache(tiny, tiny_hf, vocab, tmp_path, fused):
    out = tmp_path / "onnx"
    report = export_onnx(tiny, out, fused=fused, progress=False)
    assert report["mlp_widths"] == [128] * 4 and not report["external_data"]
    assert_matches(out, tiny_hf, vocab)


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_ragged_export_of_dense_bake_drops_zero_columns(dense_bake, vocab, tmp_path, fused):
    out = tmp_path / "onnx"
    report = export_onnx(dense_bake, out, layout="ragged", fused=fused, progress=False)
    widths = [128 - n for n in DENSE_ZEROED]
    assert report["mlp_widths"] == widths
    assert json.loads((out / "onnx_io.json").read_text())["mlp_widths"] == widths
    shapes = {t.name: list(t.dims) for t in onnx.load(str(out / "model.onnx")).graph.initializer}
    for i, w in enumerate(widths):
        down = f"model.layers.{i}.mlp.down_proj.weight"
        assert shapes.get(down) == ([w, 64] if w else None)  # stored transposed; an empty layer has no MLP
    assert_matches(out, load_hf(dense_bake), vocab)


@pytest.mark.parametrize("layout", ["as-is", "ragged"])
def test_pruned_bake_matches(pruned_bake, vocab, tmp_path, layout):
    out = tmp_path / "onnx"
    report = export_onnx(pruned_bake, out, layout=layout, progress=False)
    assert report["mlp_widths"] == ([96] * 4 if layout == "as-is" else list(PRUNED_KEPT))
    assert_matches(out, load_hf(pruned_bake), vocab)


def test_greedy_generation_equals_transformers_generate(tiny, tiny_hf, vocab, tmp_path):
    out = tmp_path / "onnx"
    export_onnx(tiny, out, progress=False)
    lm = OnnxCausalLM(out, device="cpu")
    eos, pad = lm.special_ids()
    ids, mask = prompts(vocab, seed=3)
    ids[1, :4] = pad
    with torch.no_grad():
        ref = tiny_hf.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                               max_new_tokens=32, do_sample=False)[:, ids.shape[1]:].numpy()
    got = lm.greedy(ids, mask, 32, eos, pad)
    assert got.shape == ref.shape and got.shape[1] > 1
    np.testing.assert_array_equal(got, ref)

    messages = [{"role": "user", "content": "What is two plus two?"}]
    tok = lm.tokenizer
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    prompt = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        new = tiny_hf.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32,
                               do_sample=False)[0, prompt.shape[1]:].tolist()
    expected = tok.decode([t for t in new if t not in eos], skip_special_tokens=True)
    assert lm.generate(messages, max_new_tokens=32) == expected


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_float16_export_agrees_on_top1(tiny, tiny_hf, vocab, tmp_path, fused):
    out = tmp_path / "onnx"
    export_onnx(tiny, out, dtype="float16", fused=fused, progress=False)
    rng = np.random.default_rng(4)
    ids = rng.integers(5, vocab, size=(4, 64)).astype(np.int64)
    mask = np.ones_like(ids)
    lm = OnnxCausalLM(out, device="cpu")
    got = cached_logits(lm, ids, mask, prefill=32)
    assert got.dtype == np.float16
    agree = (got.argmax(-1) == hf_logits(tiny_hf, ids, mask).argmax(-1)).mean()
    assert agree >= 0.99


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_checker_and_shape_inference_pass(tiny, tmp_path, fused):
    out = tmp_path / "onnx"
    export_onnx(tiny, out, fused=fused, progress=False)
    path = str(out / "model.onnx")
    onnx.checker.check_model(path, full_check=True)
    onnx.shape_inference.infer_shapes_path(path, str(tmp_path / "inferred.onnx"), check_type=True, strict_mode=True)
    graph = onnx.load(path, load_external_data=False).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input}
    assert dims["input_ids"] == ["batch", "sequence"]
    assert dims["attention_mask"] == ["batch", "total_sequence"]
    assert dims["past_key_values.3.value"] == ["batch", 2, "past_sequence", 16]
    outs = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.output}
    assert outs["logits"] == ["batch", "sequence", vocab_of(out)]
    assert outs["present.0.key"] == ["batch", 2, "total_sequence", 16]


def vocab_of(folder: Path) -> int:
    return json.loads((folder / "onnx_io.json").read_text())["vocab_size"]


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


def test_fused_export_refuses_positions_past_its_rope_tables(tiny, tmp_path):
    export_onnx(tiny, tmp_path / "onnx", fused=True, progress=False)
    lm = OnnxCausalLM(tmp_path / "onnx", device="cpu")
    ids = np.ones((1, 1), np.int64)
    with pytest.raises(ExportError, match="max_position_id 511"):
        lm.step(ids, np.ones((1, 513), np.int64), np.array([[512]]), lm.empty_past(1))


def test_bad_inputs_are_export_errors(tiny, tmp_path):
    with pytest.raises(ExportError, match="bfloat16"):
        export_onnx(tiny, tmp_path / "a", dtype="bfloat16", progress=False)
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ExportError, match="Qwen3"):
        export_onnx(other, tmp_path / "b", progress=False)
    with pytest.raises(ExportError, match="not a lambda-bake ONNX export"):
        OnnxCausalLM(tmp_path, device="cpu")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_attention_bias_and_untied_lm_head(tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=8, attention_bias=True,
                         tie_word_embeddings=False, initializer_range=0.1, max_position_embeddings=64)
    torch.manual_seed(5)
    model = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.1)
    model.save_pretrained(str(tmp_path / "model"))
    export_onnx(tmp_path / "model", tmp_path / "onnx", fused=True, progress=False)
    assert_matches(tmp_path / "onnx", load_hf(tmp_path / "model"), 96)


def test_cli_export_json_and_generate(tiny, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="lambda-bake")
    register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "onnx"
    args = parser.parse_args(["export", "--model", str(tiny), "--out", str(out), "--layout", "ragged", "--json"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "ragged" and "model.onnx" in report["files"]
    args = parser.parse_args(["generate", "--onnx", str(out), "--prompt", "What is two plus two?",
                              "--max-new-tokens", "4"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.endswith("\n")
