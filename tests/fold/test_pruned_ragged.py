"""Pruned checkpoints and ragged in-memory models: shapes, zero padding, counts, and logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import load_plain, logits, rel_diff

from bake.demo.assets import SEED_VARIANTS, write_gate_folder
from bake.fold.ragged_model import build_ragged_model
from bake.gates.gate_math import Cut, GateSettings, compute_gates
from bake.gates.variant import load_variant
from bake.io.base_model import mlp_name
from bake.io.tensor_io import CheckpointReader
from bake.verify.reference import load_hooked_model
from bake.write.pipeline import BakeOptions, bake_checkpoint


@pytest.mark.parametrize("variant", [v.name for v in SEED_VARIANTS])
def test_pruned_and_ragged_match_hooked_at_every_selected_threshold(
    tiny_base: Path, tiny_gates: Path, tmp_path: Path, prompt_ids: torch.Tensor, variant: str
) -> None:
    v = load_variant(tiny_gates, variant, num_layers=4, intermediate_size=128)
    for k in range(1, len(v.selected_thresholds) + 1):
        st = GateSettings(Cut("preset", k), "hard", v.scale_mode)
        scale = compute_gates(v.logits, st, v.selected_thresholds).scale
        ref = logits(load_hooked_model(tiny_base, scale), prompt_ids)
        m = bake_checkpoint(tiny_base, v, st, tmp_path / f"p{k}", BakeOptions(layout="pruned", pad_multiple=8,
                                                                              progress=False))
        assert rel_diff(ref, logits(load_plain(tmp_path / f"p{k}"), prompt_ids)) <= 1e-4
        assert rel_diff(ref, logits(build_ragged_model(tiny_base, scale), prompt_ids)) <= 1e-4
        assert m["intermediate_size"] == -(-max(m["kept_per_layer"]) // 8) * 8


def extreme_gates(folder: Path) -> Path:
    """Layer 0 loses every neuron at t=0.5, layer 1 keeps every neuron, layers 2-3 are mixed."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 128, generator=g) * 0.5
    logits[0] = -2.0 - torch.rand(128, generator=g)
    logits[1] = 2.0 + torch.rand(128, generator=g)
    return write_gate_folder(folder, logits, scale_mode="energy")


@pytest.mark.parametrize("gate_mode", ["hard", "soft-masked"])
def test_layer_losing_all_and_layer_losing_none(tiny_base: Path, tmp_path: Path, prompt_ids: torch.Tensor,
                                                gate_mode: str) -> None:
    v = load_variant(extreme_gates(tmp_path / "chat_energy"), num_layers=4, intermediate_size=128)
    st = GateSettings(Cut("threshold", 0.5), gate_mode, "energy")
    g = compute_gates(v.logits, st)
    assert g.kept_per_layer[0] == 0 and g.kept_per_layer[1] == 128
    ref = logits(load_hooked_model(tiny_base, g.scale), prompt_ids)
    for layout in ("dense", "pruned"):
        m = bake_checkpoint(tiny_base, v, st, tmp_path / layout, BakeOptions(layout=layout, progress=False))
        assert m["intermediate_size"] == 128
        assert rel_diff(ref, logits(load_plain(tmp_path / layout), prompt_ids)) <= 1e-4
    ragged = build_ragged_model(tiny_base, g.scale)
    assert [layer.mlp.down_proj.weight.shape[1] for layer in ragged.model.layers] == g.kept_per_layer
    assert rel_diff(ref, logits(ragged, prompt_ids)) <= 1e-4


def test_pruned_shapes_padding_and_kept_rows(tiny_base: Path, tiny_gates: Path, tmp_path: Path) -> None:
    v = load_variant(tiny_gates, "chat_mean", num_layers=4, intermediate_size=128)
    st = GateSettings(Cut("preset", 4), "hard", "mean")
    g = compute_gates(v.logits, st, v.selected_thresholds)
    m = bake_checkpoint(tiny_base, v, st, tmp_path / "out", BakeOptions(layout="pruned", pad_multiple=16,
                                                                        progress=False))
    width = -(-max(g.kept_per_layer) // 16) * 16
    assert width < 128 and m["intermediate_size"] == width
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["intermediate_size"] == width
    base, out = CheckpointReader(tiny_base), CheckpointReader(tmp_path / "out")
    for layer in range(4):
        keep = torch.nonzero(torch.from_numpy(g.scale[layer] != 0)).reshape(-1)
        k = keep.numel()
        gate, up, down = (out.tensor(mlp_name(layer, p)) for p in ("gate_proj", "up_proj", "down_proj"))
        assert gate.shape == up.shape == (width, 64) and down.shape == (64, width)
        assert torch.equal(gate[:k], base.tensor(mlp_name(layer, "gate_proj"))[keep])
        assert torch.equal(up[:k], base.tensor(mlp_name(layer, "up_proj"))[keep])
        s = torch.from_numpy(g.scale[layer])
        assert torch.equal(down[:, :k], base.tensor(mlp_name(layer, "down_proj"))[:, keep] * s[keep])
        for pad in (gate[k:], up[k:], down[:, k:]):  # padding neurons are exactly zero
            assert torch.equal(pad, torch.zeros_like(pad))
    for name in base.names():
        if ".mlp." not in name:
            assert out.read_bytes(name) == base.read_bytes(name)


def test_reported_sizes_are_the_real_counts(tiny_base: Path, tiny_gates: Path, tmp_path: Path) -> None:
    v = load_variant(tiny_gates, "chat_energy_optB", num_layers=4, intermediate_size=128)
    st = GateSettings(Cut("preset", 3), "hard", "energy")
    m = bake_checkpoint(tiny_base, v, st, tmp_path / "out", BakeOptions(layout="pruned", pad_multiple=8,
                                                                        progress=False))
    g = compute_gates(v.logits, st, v.selected_thresholds)
    sizes = m["sizes"]
    pruned_model = load_plain(tmp_path / "out")
    unique = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731 - tied weights count once
    assert sizes["pruned"]["params"] == unique(pruned_model)
    assert sizes["exact"]["params"] == unique(build_ragged_model(tiny_base, g.scale))
    assert sizes["dense"]["params"] == unique(load_plain(tiny_base))
    kept = sum(g.kept_per_layer)
    assert sizes["exact"]["mlp_flops_per_token"] == 2 * 3 * 64 * kept
    assert sizes["pruned"]["mlp_flops_per_token"] == 2 * 3 * 64 * 4 * m["intermediate_size"]
    assert sizes["dense"]["mlp_flops_per_token"] == 2 * 3 * 64 * 4 * 128
    assert sizes["pruned_padding_overhead"] == pytest.approx((4 * m["intermediate_size"] - kept) / kept)
    assert sizes["exact"]["widths"] == g.kept_per_layer
    assert sizes["ragged"]["widths"] == [-(-k // 8) * 8 for k in g.kept_per_layer]
    data = (tmp_path / "out" / "model.safetensors").stat().st_size
    header = 8 + int.from_bytes((tmp_path / "out" / "model.safetensors").read_bytes()[:8], "little")
    assert sizes["pruned"]["weight_bytes"] == data - header  # float32: 4 bytes a parameter, the file's data exactly
    assert sizes["dense"]["weight_bytes"] == 4 * sizes["dense"]["params"]


def test_all_off_cut_is_refused_unless_forced(tiny_base: Path, tiny_gates: Path, tmp_path: Path) -> None:
    from bake.errors import CutError

    v = load_variant(tiny_gates, "chat_mean", num_layers=4, intermediate_size=128)
    st = GateSettings(Cut("off_fraction", 1.0), "hard", "mean")
    with pytest.raises(CutError, match="switches off every neuron of every layer.*--allow-all-off"):
        bake_checkpoint(tiny_base, v, st, tmp_path / "out", BakeOptions(layout="pruned", progress=False))
    assert not (tmp_path / "out").exists()
    m = bake_checkpoint(tiny_base, v, st, tmp_path / "out",
                        BakeOptions(layout="pruned", pad_multiple=8, allow_all_off=True, progress=False))
    assert m["off_fraction"] == 1.0 and m["intermediate_size"] == 8
    model = load_plain(tmp_path / "out")
    assert all(torch.equal(layer.mlp.down_proj.weight, torch.zeros(64, 8)) for layer in model.model.layers)
