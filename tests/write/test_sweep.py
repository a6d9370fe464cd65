"""Sweeps: every cut in one call, each output complete on its own, failures reported and contained."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

import bake.commands.common as common
import bake.write.sweep as sweep
from bake.cli import main
from bake.errors import EXIT_USER, EXIT_VERIFY, VerificationFailed
from bake.gates.gate_math import Cut, GateSettings
from bake.gates.variant import load_variant
from bake.io.tensor_io import CheckpointReader
from bake.write.manifest import read_manifest
from bake.write.pipeline import BakeOptions, bake_checkpoint

VARIANTS = ["chat_energy", "chat_energy_optA", "chat_energy_optB", "chat_mean"]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any] | None, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def sweep_args(base: Path, gates: Path, out: Path, *extra: str) -> list[str]:
    return ["bake", "--base", str(base), "--gates", str(gates), "--out", str(out), "--quiet", "--json", *extra]


def test_preset_all_writes_every_cut_each_equal_to_its_single_bake(
        tiny_base: Path, tiny_gates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    opened = []
    real_open = common.open_base_model
    monkeypatch.setattr(common, "open_base_model", lambda folder: opened.append(folder) or real_open(folder))
    code, report, err = run(sweep_args(tiny_base, tiny_gates, tmp_path / "sweep", "--variant", "chat_energy",
                                       "--preset", "all", "--layout", "pruned", "--pad-multiple", "8"), capsys)
    assert code == 0, err
    assert opened == [tiny_base]  # the base is opened once for all five cuts
    names = [f"chat_energy-p{k}" for k in range(1, 6)]
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == names
    assert report["ok"] and report["failed"] == [] and [o["name"] for o in report["outputs"]] == names
    v = load_variant(tiny_gates, "chat_energy", num_layers=4, intermediate_size=128)
    for k, o in enumerate(report["outputs"], 1):
        folder = tmp_path / "sweep" / o["name"]
        manifest = read_manifest(folder)
        assert o["ok"] and o["out"] == str(folder) and o["manifest"] == manifest
        assert manifest["cut"] == {"kind": "preset", "value": k, "threshold": v.selected_thresholds[k - 1],
                                   "rule": "threshold", "target_off_fraction": None}
        assert (o["threshold"], o["off_fraction"], o["intermediate_size"], o["layout"]) == (
            v.selected_thresholds[k - 1], manifest["off_fraction"], manifest["intermediate_size"], "pruned")
        assert o["params"] == manifest["sizes"]["pruned"]["params"] and o["verified"] is None
        single = tmp_path / f"single-{k}"
        bake_checkpoint(tiny_base, v, GateSettings(Cut("preset", k), "hard", "energy"), single,
                        BakeOptions(layout="pruned", pad_multiple=8, progress=False))
        assert (single / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert [round(o["off_fraction"], 2) for o in report["outputs"]] == [0.05, 0.25, 0.5, 0.75, 0.95]


def test_every_variant_and_several_thresholds(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, report, _ = run(sweep_args(tiny_base, tiny_gates, tmp_path / "s", "--variant", "all",
                                     "--threshold", "0.45", "0.5"), capsys)
    assert code == 0
    expected = [f"{v}-t{t}" for v in VARIANTS for t in ("0.45", "0.5")]
    assert [o["name"] for o in report["outputs"]] == expected
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(expected)
    for o in report["outputs"]:
        m = read_manifest(tmp_path / "s" / o["name"])
        assert m["gates"]["variant"] == o["variant"] and m["cut"]["threshold"] == float(o["name"].split("-t")[1])
        assert m["scale_mode"] == ("mean" if o["variant"] == "chat_mean" else "energy")


def test_off_fractions_name_their_folders_by_the_fraction(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, report, _ = run(sweep_args(tiny_base, tiny_gates / "chat_mean", tmp_path / "s", "--off-fraction",
                                     "0.25", "0.5"), capsys)
    assert code == 0
    assert [(o["name"], o["off_fraction"]) for o in report["outputs"]] == [("chat_mean-f0.25", 0.25),
                                                                           ("chat_mean-f0.5", 0.5)]


def test_verify_and_onnx_apply_to_each_output(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, report, _ = run(sweep_args(tiny_base, tiny_gates, tmp_path / "s", "--variant", "chat_mean", "--preset",
                                     "2", "4", "--verify", "--onnx", "--greedy-tokens", "2"), capsys)
    assert code == 0
    for o in report["outputs"]:
        folder = tmp_path / "s" / o["name"]
        assert o["verified"] is True and (folder / "onnx" / "model.onnx").is_file()
        assert [c["passed"] for c in read_manifest(folder)["verification"]["candidates"]] == [True, True]


@pytest.mark.parametrize("extra,message", [
    (["--preset", "all", "--push-to", "me/model"], "--push-to uploads one model folder"),
    (["--preset", "1", "9"], "chat_mean-p9: --preset 9 is out of range"),
    (["--threshold", "0.5", "0.50"], "asks for chat_mean-t0.5 more than once"),
    (["--preset", "all", "3"], "give 'all' or numbers, not both"),
    (["--preset", "2", "--variant", "all", "--threshold", "0.5"], "not allowed with argument"),
])
def test_bad_sweeps_exit_2_before_writing_anything(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str], extra: list[str],
                                                  message: str) -> None:
    args = sweep_args(tiny_base, tiny_gates / "chat_mean", tmp_path / "s", *extra)
    if "--variant" in extra:
        args[4] = str(tiny_gates)
    try:
        code = main(args)
    except SystemExit as e:  # argparse refuses the usage itself
        code = e.code
    assert code == EXIT_USER and message in capsys.readouterr().err
    assert not (tmp_path / "s").exists() or list((tmp_path / "s").iterdir()) == []


def test_an_existing_output_is_refused_up_front(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "s" / "chat_mean-p3").mkdir(parents=True)
    (tmp_path / "s" / "chat_mean-p3" / "theirs.txt").write_text("an earlier output")  # an empty folder would be used
    code, _, err = run(sweep_args(tiny_base, tiny_gates / "chat_mean", tmp_path / "s", "--preset", "all"), capsys)
    assert code == EXIT_USER and "chat_mean-p3: output folder" in err and "--overwrite" in err
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["chat_mean-p3"]


@pytest.mark.parametrize("failure,exit_code", [
    (VerificationFailed("top-1 agreement 0.5 < 0.99"), EXIT_VERIFY),
    (OSError(errno.ENOSPC, "No space left on device"), EXIT_USER),
])
def test_a_failed_cut_keeps_the_others_and_is_named(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                                   failure: Exception, exit_code: int) -> None:
    real_write = sweep.write_bake

    def write(plan: Any, out: Path, *args: Any) -> dict[str, Any]:
        if out.name == "chat_mean-p2":
            raise failure
        return real_write(plan, out, *args)

    monkeypatch.setattr(sweep, "write_bake", write)
    code, report, err = run(sweep_args(tiny_base, tiny_gates / "chat_mean", tmp_path / "s", "--preset", "1", "2",
                                       "3"), capsys)
    assert code == exit_code
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["chat_mean-p1", "chat_mean-p3"]
    assert report["failed"] == ["chat_mean-p2"] and not report["ok"]
    failed = report["outputs"][1]
    assert not failed["ok"] and failed["exit_code"] == exit_code and failed["manifest"] is None
    assert str(failure.args[-1]) in failed["error"]
    assert f"FAILED: chat_mean-p2 (exit {exit_code})" in err
    for name in ("chat_mean-p1", "chat_mean-p3"):
        assert CheckpointReader(tmp_path / "s" / name).names()  # complete and readable on its own
