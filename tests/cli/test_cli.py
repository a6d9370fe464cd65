"""The command line: help, JSON reports, exit codes, --quiet, inspect and hooked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bake.cli import build_parser, main
from bake.demo.assets import write_gate_folder
from bake.gates.variant import load_variant

REPO = Path(__file__).resolve().parents[2]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"bake", "inspect", "demo", "verify", "hooked", "export", "generate", "push"} <= set(sub.choices)
    for name in sub.choices:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert "usage: lambda-bake " + name in capsys.readouterr().out


def test_bake_json_report(tiny_base: Path, tiny_gates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["bake", "--base", str(tiny_base), "--gates", str(tiny_gates), "--variant", "chat_mean",
                              "--off-fraction", "0.25", "--layout", "pruned", "--pad-multiple", "8",
                              "--out", str(tmp_path / "o"), "--json", "--quiet"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] and report["manifest"]["layout"] == "pruned"
    assert report["manifest"]["cut"]["kind"] == "off_fraction" and report["manifest"]["off_fraction"] == 0.25
    assert report["manifest"]["scale_mode"] == "mean" and report["manifest"]["scale_mode_source"] == "gate_stats.json"
    assert json.loads((tmp_path / "o" / "bake_manifest.json").read_text()) == report["manifest"]


def test_human_summary_reports_off_fractions(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bake", "--base", str(tiny_base), "--gates", str(tiny_gates / "chat_energy"), "--preset", "2"]
    code, out, err = run_cli([*args, "--out", str(tmp_path / "o")], capsys)
    assert code == 0 and out == ""
    assert "off-fraction 0.2500 (128 of 512 neurons)" in err and "off per layer:" in err
    assert "padding:" not in err  # a dense bake has no padding to speak of
    code, out, err = run_cli([*args, "--out", str(tmp_path / "p"), "--layout", "pruned", "--pad-multiple", "1"], capsys)
    assert code == 0 and "pruned padding: " in err and "zero neurons beyond the cut's (--pad-multiple 1)" in err
    code, out, err = run_cli([*args, "--out", str(tmp_path / "r"), "--layout", "ragged", "--pad-multiple", "1"], capsys)
    manifest = json.loads((tmp_path / "r" / "bake_manifest.json").read_text())
    assert code == 0 and "ragged padding: 0.00% zero neurons" in err
    assert f"MLP widths {' '.join(map(str, manifest['kept_per_layer']))}  (of 128 each)" in err


def test_quiet_prints_nothing_on_success(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["bake", "--base", str(tiny_base), "--gates", str(tiny_gates / "chat_energy"),
                              "--preset", "2", "--out", str(tmp_path / "o"), "--quiet"], capsys)
    assert (code, out, err) == (0, "", "")


@pytest.mark.parametrize("extra,message", [
    (["--variant", "nope", "--threshold", "0.5"], "unknown variant 'nope'"),
    (["--variant", "chat_mean", "--threshold", "1.5"], r"must lie in (0, 1)"),
    (["--variant", "chat_mean", "--preset", "9"], "--preset 9 is out of range; this variant has 5"),
    (["--variant", "chat_mean"], "needs a cut"),
    (["--variant", "chat_mean", "--threshold", "0.5", "--gate-mode", "soft"], "uses no threshold"),
])
def test_user_errors_exit_2_with_the_fix(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    code, out, err = run_cli(["bake", "--base", str(tiny_base), "--gates", str(tiny_gates), "--out",
                              str(tmp_path / "o"), "--quiet", *extra], capsys)
    assert code == 2 and message in err
    assert not (tmp_path / "o").exists()


def test_inspect_json_gives_real_off_fractions_and_pruned_widths(tiny_gates: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["inspect", "--gates", str(tiny_gates), "--num-layers", "4", "--pad-multiple", "8",
                            "--json"], capsys)
    assert code == 0
    reports = {r["variant"]: r for r in json.loads(out)["variants"]}
    assert sorted(reports) == ["chat_energy", "chat_energy_optA", "chat_energy_optB", "chat_mean"]
    v = load_variant(tiny_gates, "chat_energy_optB", num_layers=4)
    lam = (1 / (1 + np.exp(-v.logits.astype(np.float64)))).astype(np.float32)
    r = reports["chat_energy_optB"]
    assert r["num_neurons"] == 512 and r["scale_mode"] == "energy"
    assert r["sigmoid_mean"] == pytest.approx(float(lam.mean()))
    for row, t in zip(r["thresholds"], v.selected_thresholds):
        kept = [int((lam[i] >= np.float32(t)).sum()) for i in range(4)]
        assert row["kept_per_layer"] == kept
        assert row["off_fraction"] == (lam < np.float32(t)).sum() / 512
        assert row["pruned_width"] == -(-max(kept) // 8) * 8
        assert row["off_share_per_layer"] == [(128 - k) / 128 for k in kept]
        assert row["padding_neurons"] == 4 * row["pruned_width"] - sum(kept)
        assert row["padding_overhead"] == pytest.approx(row["padding_neurons"] / sum(kept))
    assert [round(row["off_fraction"], 2) for row in r["thresholds"]] == [0.05, 0.25, 0.5, 0.75, 0.95]
    assert r["lambda_quantiles"]["levels"] == [0.05, 0.25, 0.5, 0.75, 0.95]
    ranked = np.sort(np.asarray(lam, dtype=np.float64), axis=1)  # linear interpolation between order statistics
    pos = np.array([0.05, 0.25, 0.5, 0.75, 0.95]) * (ranked.shape[1] - 1)
    low, frac = np.floor(pos).astype(int), pos - np.floor(pos)
    expected = ranked[:, low] + frac * (ranked[:, np.minimum(low + 1, ranked.shape[1] - 1)] - ranked[:, low])
    assert np.allclose(r["lambda_quantiles"]["per_layer"], expected, rtol=1e-6, atol=0)


def test_inspect_variant_all_is_every_variant_and_a_name_is_one(tiny_gates: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    def variants(gates: Path, extra: list[str]) -> list[str]:
        code, out, err = run_cli(["inspect", "--gates", str(gates), "--num-layers", "4", "--json", *extra], capsys)
        assert code == 0, err
        return [v["variant"] for v in json.loads(out)["variants"]]

    every = ["chat_energy", "chat_energy_optA", "chat_energy_optB", "chat_mean"]
    assert variants(tiny_gates, ["--variant", "all"]) == every
    assert variants(tiny_gates, []) == every
    assert variants(tiny_gates, ["--variant", "chat_mean"]) == ["chat_mean"]
    assert variants(tiny_gates / "chat_energy", ["--variant", "all"]) == ["chat_energy"]
    only = write_gate_folder(tmp_path / "one" / "chat_mean", torch.zeros(4, 128), scale_mode="mean").parent
    assert variants(only, ["--variant", "all"]) == ["chat_mean"]
    code, _, err = run_cli(["inspect", "--gates", str(tmp_path), "--variant", "all"], capsys)
    assert code == 2 and f"no gate file in {tmp_path}" in err


def test_console_entry_point_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bake.cli", "bake", "--base", str(tmp_path / "missing"), "--gates",
                           str(tmp_path), "--threshold", "0.5", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr


def test_hooked_command_reply_equals_the_baked_checkpoint(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = ["--base", str(tiny_base), "--gates", str(tiny_gates), "--variant", "chat_energy", "--preset", "3",
            "--quiet"]
    assert main(["hooked", *args, "--prompt", "What is 2+2?", "--max-new-tokens", "12", "--json"]) == 0
    hooked = json.loads(capsys.readouterr().out)
    assert hooked["off_fraction"] == 0.5
    assert main(["bake", *args, "--out", str(tmp_path / "b")]) == 0
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "b"))
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], tokenize=False,
                                   add_generation_prompt=True, enable_thinking=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")
    out = AutoModelForCausalLM.from_pretrained(str(tmp_path / "b")).generate(**ids, max_new_tokens=12,
                                                                             do_sample=False)
    assert hooked["reply"] == tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert len(hooked["reply"]) > 0
