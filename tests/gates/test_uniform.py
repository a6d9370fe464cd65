"""The uniform-width cut (SPEC: every layer switches off its k = round(F * I) lowest-lambda neurons): masks, widths
and scales against hand-computed values, the bake it gives, what it costs against the threshold cut, sweeps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import hooked_logits, load_plain, logits, rel_diff

from bake.cli import main
from bake.gates.gate_math import Cut, GateSettings, compute_gates, gate_values, off_fraction_at, uniform_off
from bake.gates.report import uniform_cost
from bake.gates.variant import load_variant
from bake.write.pipeline import BakeOptions, bake_checkpoint

LOGIT = float(np.log(0.3 / 0.7))  # lambda 0.3


def logits_of(lams: list[list[float]]) -> np.ndarray:
    lam = np.asarray(lams, np.float64)
    return np.log(lam / (1 - lam)).astype(np.float32)


def test_masks_widths_and_scales_by_hand() -> None:
    logits_ = logits_of([[0.9, 0.1, 0.5, 0.2, 0.7, 0.3],
                         [0.4, 0.4, 0.4, 0.4, 0.4, 0.4],  # every lambda equal: the lowest indices go first
                         [0.6, 0.2, 0.2, 0.8, 0.05, 0.9]])  # a tie at the cut: index 1 before index 2
    g = compute_gates(logits_, GateSettings(Cut("off_fraction", 0.5), "hard", "none", rule="uniform"))
    off = [[False, True, False, True, False, True],
           [True, True, True, False, False, False],
           [False, True, True, False, True, False]]
    assert g.off.tolist() == off and g.kept_per_layer == [3, 3, 3]
    assert g.target_off_fraction == 0.5 and g.rule == "uniform"
    g = compute_gates(logits_, GateSettings(Cut("off_fraction", 0.4), "hard", "energy", rule="uniform"))
    assert g.off.sum(axis=1).tolist() == [2, 2, 2]  # round(0.4 * 6) = 2
    assert g.off.tolist()[2] == [False, True, False, False, True, False]  # 0.05, then the first 0.2
    on = (~g.off).astype(np.float32)
    np.testing.assert_array_equal(g.scale, on / np.sqrt(on.mean(axis=1, keepdims=True)))
    g = compute_gates(logits_, GateSettings(Cut("off_fraction", 0.4), "soft-masked", "mean", rule="uniform"))
    m = gate_values(logits_) * ~g.off
    np.testing.assert_allclose(g.scale, m / m.mean(axis=1, keepdims=True), rtol=1e-6)


def test_a_threshold_or_preset_gives_its_off_fraction() -> None:
    logits_ = np.random.default_rng(0).normal(0, 0.2, (4, 64)).astype(np.float32)
    t = 0.5
    g = compute_gates(logits_, GateSettings(Cut("threshold", t), "hard", "mean", rule="uniform"))
    f = off_fraction_at(gate_values(logits_), t)
    assert g.target_off_fraction == f and g.off.sum(axis=1).tolist() == [round(f * 64)] * 4
    np.testing.assert_array_equal(g.threshold_off, gate_values(logits_) < np.float32(t))
    assert g.threshold == t


def test_disagreement_counts_are_exact() -> None:
    logits_ = np.random.default_rng(1).normal(0, 0.3, (5, 200)).astype(np.float32)
    g = compute_gates(logits_, GateSettings(Cut("off_fraction", 0.3), "hard", "none", rule="uniform"))
    cost = uniform_cost(logits_, g)
    lam = gate_values(logits_)
    t = np.float32(g.threshold)
    for i in range(5):
        uniform = set(np.argsort(lam[i], kind="stable")[:60].tolist())
        threshold = set(np.flatnonzero(lam[i] < t).tolist())
        assert cost["on_to_off_per_layer"][i] == len(uniform - threshold)
        assert cost["off_to_on_per_layer"][i] == len(threshold - uniform)
        assert cost["lambda_off_range_per_layer"][i] == [float(lam[i][sorted(uniform)].min()),
                                                         float(lam[i][sorted(uniform)].max())]
    assert cost["switched_off_per_layer"] == 60 and cost["on_to_off"] == sum(cost["on_to_off_per_layer"])
    assert uniform_off(lam, 0.0).sum() == 0 and uniform_off(lam, 1.0).all()


@pytest.mark.parametrize("fraction", [0.05, 0.25, 0.5, 0.75, 0.95])
def test_pruned_uniform_checkpoint_has_no_padding_and_equals_the_hooked_model(
        tiny_base: Path, tiny_gates: Path, tmp_path: Path, prompt_ids: torch.Tensor, fraction: float) -> None:
    v = load_variant(tiny_gates, "chat_energy_optA", num_layers=4, intermediate_size=128)
    settings = GateSettings(Cut("off_fraction", fraction), "hard", "energy", rule="uniform")
    m = bake_checkpoint(tiny_base, v, settings, tmp_path / "b", BakeOptions(layout="pruned", pad_multiple=1,
                                                                             progress=False))
    k = round(fraction * 128)
    assert m["intermediate_size"] == 128 - k and m["kept_per_layer"] == [128 - k] * 4
    assert m["sizes"]["pruned"]["mlp_neurons"] == m["sizes"]["ragged"]["mlp_neurons"] == 4 * (128 - k)
    assert m["sizes"]["pruned_padding_overhead"] == 0.0
    assert m["cut"]["rule"] == "uniform" and m["uniform_cut"]["switched_off_per_layer"] == k
    model = load_plain(tmp_path / "b")
    assert model.config.intermediate_size == 128 - k
    assert rel_diff(hooked_logits(tiny_base, v, settings, prompt_ids), logits(model, prompt_ids)) <= 1e-4
    card = (tmp_path / "b" / "README.md").read_text()
    assert f"| cut rule | uniform width: every layer switches off its {k} lowest-lambda neurons" in card


def test_uniform_bake_verifies_exports_ragged_and_keeps_its_rule(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bake", "--base", str(tiny_base), "--gates", str(tiny_gates), "--variant", "chat_mean", "--preset",
                 "3", "--uniform-width", "--layout", "pruned", "--pad-multiple", "8", "--onnx", "--onnx-layout",
                 "ragged", "--verify", "--greedy-tokens", "4", "--out", str(tmp_path / "b"), "--json", "--quiet"])
    m = json.loads(capsys.readouterr().out)["manifest"]
    assert code == 0 and m["verification"]["passed"]
    assert m["verification"]["reference"]["cut"]["rule"] == "uniform"
    io = json.loads((tmp_path / "b" / "onnx" / "onnx_io.json").read_text())
    assert len(set(io["mlp_widths"])) == 1 and io["mlp_widths"][0] == 128 - m["uniform_cut"]["switched_off_per_layer"]
    assert m["intermediate_size"] == -(-io["mlp_widths"][0] // 8) * 8  # the pad multiple still applies
    claimed = json.loads((tmp_path / "b" / "bake_manifest.json").read_text())
    claimed["cut"]["rule"] = "threshold"  # a uniform bake that claims to be a threshold cut fails
    (tmp_path / "b" / "bake_manifest.json").write_text(json.dumps(claimed))
    assert main(["verify", "--baked", str(tmp_path / "b"), "--quiet", "--greedy-tokens", "2"]) == 3
    assert "weights: model.layers." in capsys.readouterr().err


def test_sweep_of_every_variant_and_preset(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bake", "--base", str(tiny_base), "--gates", str(tiny_gates), "--variant", "all", "--preset", "all",
                 "--uniform-width", "--layout", "pruned", "--pad-multiple", "1", "--out", str(tmp_path / "s"), "--json",
                 "--quiet"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and len(report["outputs"]) == 20
    for o in report["outputs"]:
        assert o["name"].endswith("-uniform") and o["manifest"]["cut"]["rule"] == "uniform"
        assert len(set(o["manifest"]["kept_per_layer"])) == 1 and o["sizes"]["pruned_padding_overhead"] in (0.0, None)


def test_a_uniform_cut_that_switches_everything_off_is_refused(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bake", "--base", str(tiny_base), "--gates", str(tiny_gates / "chat_mean"), "--off-fraction", "1",
                 "--uniform-width", "--out", str(tmp_path / "b"), "--quiet"])
    assert code == 2 and "switches off every neuron of every layer" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    code = main(["bake", "--base", str(tiny_base), "--gates", str(tiny_gates / "chat_mean"), "--gate-mode", "soft",
                 "--uniform-width", "--out", str(tmp_path / "b"), "--quiet"])
    assert code == 2 and "drop --uniform-width" in capsys.readouterr().err


def test_inspect_reports_and_draws_the_uniform_cut(tiny_gates: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from helpers import by_gid

    from bake.plots import inspect_plot

    code = main(["inspect", "--gates", str(tiny_gates), "--variant", "chat_mean", "--num-layers", "4",
                 "--uniform-width", "--json"])
    report = json.loads(capsys.readouterr().out)
    rows = report["variants"][0]["thresholds"]
    assert code == 0 and all("uniform_cut" in r for r in rows)
    for r in rows:
        u = r["uniform_cut"]
        assert u["kept_per_layer"] == [128 - round(r["off_fraction"] * 128)] * 4
        assert u["padding_neurons"] == 4 * (u["pruned_width"] - u["kept_per_layer"][0])
    fig = inspect_plot.inspect_figure(report, (800, 1300))
    line = by_gid(fig)["chat_mean/uniform/2"]
    assert list(line.get_ydata()) == rows[2]["uniform_cut"]["kept_per_layer"]
