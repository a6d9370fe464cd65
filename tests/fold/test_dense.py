"""Dense bake: logits equal the hooked model for every mode, file contents are exact."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import hooked_logits, load_plain, logits, rel_diff
from huggingface_hub import ModelCard

from bake import __version__
from bake.gates.gate_math import Cut, GateSettings, compute_gates
from bake.gates.variant import load_variant
from bake.io.base_model import mlp_name
from bake.io.tensor_io import CheckpointReader
from bake.write.pipeline import BakeOptions, bake_checkpoint

MODES = [
    (gate, scale, scope)
    for gate, scale, scope in itertools.product(("hard", "soft-masked", "soft"), ("mean", "energy", "none"),
                                                ("layer", "global"))
]


def settings_for(gate: str, scale: str, scope: str, cut: Cut | None = None) -> GateSettings:
    return GateSettings(Cut("none") if gate == "soft" else cut or Cut("preset", 3), gate, scale, scope)


@pytest.mark.parametrize("gate,scale,scope", MODES)
def test_dense_float32_matches_hooked_tiny(tiny_base: Path, tiny_gates: Path, tmp_path: Path, prompt_ids: torch.Tensor,
                                           gate: str, scale: str, scope: str) -> None:
    v = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    st = settings_for(gate, scale, scope)
    bake_checkpoint(tiny_base, v, st, tmp_path / "out", BakeOptions(progress=False))
    assert rel_diff(hooked_logits(tiny_base, v, st, prompt_ids), logits(load_plain(tmp_path / "out"), prompt_ids)) <= 1e-4


@pytest.mark.parametrize("gate,scale,scope", MODES)
def test_dense_float32_matches_hooked_full_gate_shape(full_base: Path, full_gates: Path, tmp_path: Path,
                                                      prompt_ids: torch.Tensor, gate: str, scale: str,
                                                      scope: str) -> None:
    v = load_variant(full_gates, "chat_energy", num_layers=28, intermediate_size=3072)
    assert v.logits.size == 86_016
    st = settings_for(gate, scale, scope, Cut("off_fraction", 0.5))
    bake_checkpoint(full_base, v, st, tmp_path / "out", BakeOptions(progress=False))
    assert rel_diff(hooked_logits(full_base, v, st, prompt_ids), logits(load_plain(tmp_path / "out"), prompt_ids)) <= 1e-4


def test_only_down_proj_changes_and_exactly_by_the_fold(tiny_base: Path, tiny_gates: Path, tmp_path: Path) -> None:
    v = load_variant(tiny_gates, "chat_mean", num_layers=4, intermediate_size=128)
    st = GateSettings(Cut("threshold", 0.5), "soft-masked", "mean")
    bake_checkpoint(tiny_base, v, st, tmp_path / "out", BakeOptions(progress=False))
    base, out = CheckpointReader(tiny_base), CheckpointReader(tmp_path / "out")
    assert sorted(base.names()) == sorted(out.names())
    s = torch.from_numpy(compute_gates(v.logits, st).scale)
    for name in base.names():
        if ".down_proj." in name:
            layer = int(name.split(".")[2])
            w = base.tensor(name)
            assert torch.equal(out.tensor(name), w * s[layer][None, :])
            assert torch.equal(out.tensor(name)[:, s[layer] == 0], torch.zeros(w.shape[0], int((s[layer] == 0).sum())))
        else:
            assert out.read_bytes(name) == base.read_bytes(name), name  # bit-for-bit
    assert out.tensors[mlp_name(0, "down_proj")].dtype.name == "float32"


def test_float32_base_to_bf16_checkpoint(tiny_base: Path, tiny_gates: Path, tmp_path: Path) -> None:
    v = load_variant(tiny_gates, "chat_energy", num_layers=4, intermediate_size=128)
    st = GateSettings(Cut("preset", 3), "hard", "energy")
    m = bake_checkpoint(tiny_base, v, st, tmp_path / "out", BakeOptions(dtype="bfloat16", progress=False))
    assert m["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    out, base = CheckpointReader(tmp_path / "out"), CheckpointReader(tiny_base)
    assert all(i.dtype.name == "bfloat16" for i in out.tensors.values())
    s = torch.from_numpy(compute_gates(v.logits, st, v.selected_thresholds).scale)
    name = mlp_name(2, "down_proj")  # float32 math, one rounding
    assert torch.equal(out.tensor(name), (base.tensor(name) * s[2][None, :]).to(torch.bfloat16))
    name = mlp_name(2, "up_proj")
    assert torch.equal(out.tensor(name), base.tensor(name).to(torch.bfloat16))


@pytest.mark.parametrize("variant", ["chat_energy", "chat_mean"])
@pytest.mark.parametrize("preset", [1, 3, 5])
def test_bf16_bake_top1_agreement(tmp_path: Path, tiny_gates: Path, variant: str, preset: int) -> None:
    """A bf16 base (like Qwen/Qwen3-0.6B) baked to bf16: the one rounding of the fold keeps top-1 >= 99 %.

    Both models are run in float32 arithmetic, so what is measured is the bake, not bf16 matmuls.
    """
    from conftest import TINY

    from bake.demo.assets import build_tiny_qwen3

    base = build_tiny_qwen3(tmp_path / "base16", TINY, dtype=torch.bfloat16)
    v = load_variant(tiny_gates, variant, num_layers=4, intermediate_size=128)
    st = GateSettings(Cut("preset", preset), "hard", v.scale_mode)
    m = bake_checkpoint(base, v, st, tmp_path / "out", BakeOptions(progress=False))
    assert m["dtype"] == "bfloat16"
    ids = torch.randint(5, 384, (8, 64), generator=torch.Generator().manual_seed(1))
    ref = hooked_logits(base, v, st, ids)
    cand = logits(load_plain(tmp_path / "out", torch.float32), ids)
    agreement = float((ref.argmax(-1) == cand.argmax(-1)).float().mean())
    assert agreement >= 0.99, agreement


def test_sharded_output_loads_and_matches(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                          prompt_ids: torch.Tensor) -> None:
    v = load_variant(tiny_gates, "chat_energy_optB", num_layers=4, intermediate_size=128)
    st = GateSettings(Cut("preset", 4), "hard", "energy")
    m = bake_checkpoint(tiny_base, v, st, tmp_path / "out", BakeOptions(max_shard_size="200KB", progress=False))
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert index["metadata"]["total_size"] == sum(i.nbytes for i in CheckpointReader(tiny_base).tensors.values())
    assert set(shards) <= set(m["files"])
    assert rel_diff(hooked_logits(tiny_base, v, st, prompt_ids), logits(load_plain(tmp_path / "out"), prompt_ids)) <= 1e-4


def test_output_folder_contents_and_manifest(tiny_base: Path, tiny_gates: Path, tmp_path: Path) -> None:
    v = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    st = GateSettings(Cut("preset", 2), "hard", "energy")
    m = bake_checkpoint(tiny_base, v, st, tmp_path / "out", BakeOptions(progress=False),
                        sources={"scale_mode_source": "gate_stats.json"})
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["README.md", "bake_manifest.json", "chat_template.jinja", "config.json",
                     "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert m["files"] == names
    for carried in ("chat_template.jinja", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / carried).read_bytes() == (tiny_base / carried).read_bytes()
    cfg_out, cfg_base = (json.loads((d / "config.json").read_text()) for d in (out, tiny_base))
    assert cfg_out == cfg_base  # dense, same dtype: nothing changes in the config
    disk = json.loads((out / "bake_manifest.json").read_text())
    assert disk == m
    g = compute_gates(v.logits, st, v.selected_thresholds)
    assert m["tool"] == {"name": "lambda-bake", "version": __version__}
    assert m["gates"]["sha256"] == hashlib.sha256((v.gate_file).read_bytes()).hexdigest()
    assert m["gates"]["variant"] == "chat_energy_optA" and m["gates"]["num_neurons"] == 512
    assert m["cut"] == {"kind": "preset", "value": 2, "threshold": v.selected_thresholds[1], "rule": "threshold",
                        "target_off_fraction": None}
    assert m["uniform_cut"] is None
    assert m["off_fraction"] == g.off_fraction and m["off_per_layer"] == g.off_per_layer
    lam = (1 / (1 + np.exp(-v.logits.astype(np.float64)))).astype(np.float32)
    assert sum(m["off_per_layer"]) == int((lam < np.float32(v.selected_thresholds[1])).sum())
    assert (m["gate_mode"], m["scale_mode"], m["scale_scope"], m["layout"], m["dtype"]) == (
        "hard", "energy", "layer", "dense", "float32")
    assert m["scale_mode_source"] == "gate_stats.json"
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert "lambda-gates" in card.data.tags and "variant-chat_energy_optA" in card.data.tags
    assert f"{m['off_fraction']:.2%}" in card.text


def test_tokenizer_and_chat_template_survive(tiny_base: Path, tiny_gates: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    v = load_variant(tiny_gates, "chat_mean", num_layers=4, intermediate_size=128)
    bake_checkpoint(tiny_base, v, GateSettings(Cut("preset", 1), "hard", "mean"), tmp_path / "out",
                    BakeOptions(progress=False))
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    kw = dict(tokenize=False, add_generation_prompt=True, enable_thinking=False)
    a = AutoTokenizer.from_pretrained(str(tiny_base)).apply_chat_template(msgs, **kw)
    b = AutoTokenizer.from_pretrained(str(tmp_path / "out")).apply_chat_template(msgs, **kw)
    assert a == b and a.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
