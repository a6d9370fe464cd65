"""``bake ... --plot`` on a sweep: the figure file, the numbers it draws (the --json report), failures marked."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import by_gid, png_size, svg_size

import bake.commands.bake_cmd as bake_cmd
import bake.write.sweep as sweep
from bake.cli import main
from bake.gates.gate_math import Cut, GateSettings
from bake.gates.variant import load_variant
from bake.io.tensor_io import CheckpointReader, numel
from bake.plots import sweep_plot
from bake.write.manifest import read_manifest
from bake.write.pipeline import BakeOptions, bake_checkpoint

VARIANTS = ["chat_energy", "chat_energy_optA", "chat_energy_optB", "chat_mean"]
HIDDEN, LAYERS, WIDTH = 64, 4, 128  # the tiny base


def sweep_args(base: Path, gates: Path, out: Path, *extra: str) -> list[str]:
    return ["bake", "--base", str(base), "--gates", str(gates), "--out", str(out), "--layout", "pruned",
            "--pad-multiple", "8", "--quiet", *extra]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dict[str, Any], Any]]:
    """Each (report, figure) the sweep hands to the plotting code."""
    calls: list[tuple[dict[str, Any], Any]] = []
    real = sweep_plot.sweep_figure

    def spy(report: dict[str, Any], size: tuple[int, int]) -> Any:
        calls.append((report, real(report, size)))
        return calls[-1][1]

    monkeypatch.setattr(sweep_plot, "sweep_figure", spy)
    return calls


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_figure_has_the_requested_size_and_the_same_bytes_every_time(
        tiny_base: Path, tiny_gates: Path, tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    figures = tmp_path / "figures"
    figures.mkdir()
    paths = [figures / f"first.{fmt}", figures / f"second.{fmt}"]
    for path in paths:  # the second sweep bakes again (new dates and timings in the report): same figure
        code, out, err = run_cli(sweep_args(tiny_base, tiny_gates / "chat_mean", tmp_path / "s", "--preset", "all",
                                            "--overwrite", "--plot", str(path), "--plot-size", "900x700"), capsys)
        assert code == 0 and out == "", err
        assert f"figure: {path} (900x700 px)" in err
    if fmt == "png":
        assert png_size(paths[0]) == (900, 700)
    else:
        assert svg_size(paths[0]) == ("648pt", "504pt")
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert sorted(p.name for p in figures.iterdir()) == sorted(p.name for p in paths)  # no temporary left


def expected_sizes(manifest: dict[str, Any], total_params: int) -> dict[str, dict[str, int]]:
    """Parameters and MLP FLOPs per token of each layout, from a manifest's kept widths (the ragged layout: each
    layer's rounded up to the pad multiple, one block at least)."""
    pad = manifest["pad_multiple"]
    widths = {"dense": LAYERS * WIDTH, "pruned": LAYERS * manifest["intermediate_size"],
              "ragged": sum(max(pad, -(-k // pad) * pad) for k in manifest["kept_per_layer"])}
    return {lay: {"params": total_params - 3 * HIDDEN * (LAYERS * WIDTH - w), "mlp_flops_per_token": 6 * HIDDEN * w}
            for lay, w in widths.items()}


def test_the_plotted_numbers_are_the_json_report(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                 drawn: list[tuple[dict[str, Any], Any]],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(sweep_args(tiny_base, tiny_gates, tmp_path / "s", "--variant", "all", "--threshold",
                                        "0.5", "0.45", "--json", "--plot", str(tmp_path / "f.png")), capsys)
    assert code == 0, err
    (report, fig), = drawn
    assert report == json.loads(out)  # the plotting code gets exactly what --json prints
    assert png_size(tmp_path / "f.png") == (1400, 650)  # no --verify: one row
    series = sweep_plot.sweep_series(report)
    assert [v["variant"] for v in series["variants"]] == VARIANTS
    assert series["failed"] == [] and series["baked_layouts"] == ["pruned"]
    artists = by_gid(fig)
    assert len(artists) == 4 * 2 * 3  # per variant: params and FLOPs of 3 layouts
    total = sum(numel(t.shape) for t in CheckpointReader(tiny_base).tensors.values())
    for name in VARIANTS:
        manifests = sorted((read_manifest(tmp_path / "s" / f"{name}-t{t}") for t in ("0.45", "0.5")),
                           key=lambda m: m["off_fraction"])
        assert [m["cut"]["threshold"] for m in manifests] == [0.45, 0.5]  # drawn left to right
        for metric in ("params", "mlp_flops_per_token"):
            for lay in ("dense", "pruned", "ragged"):
                line = artists[f"{name}/{metric}/{lay}"]
                assert list(line.get_xdata()) == [m["off_fraction"] for m in manifests]
                assert list(line.get_ydata()) == [expected_sizes(m, total)[lay][metric] for m in manifests]
                assert line.get_marker() == ("o" if lay == "pruned" else "None")  # the baked layout is marked


def strict_on_second_cut(real: Any) -> Any:
    """``verify_check`` whose second verification is judged failed (its measured figures unchanged)."""
    def make(args: Any) -> Any:
        check, calls = real(args), []

        def judged(folder: Path) -> dict[str, Any]:
            report = check(folder)
            calls.append(folder)
            if len(calls) == 2:
                c = report["candidates"][0]
                report["passed"], c["passed"], c["failures"] = False, False, ["made to fail by the test"]
            return report

        return judged

    return make


def test_verification_figures_and_a_failed_verification_are_drawn(
        tiny_base: Path, tiny_gates: Path, tmp_path: Path, drawn: list[tuple[dict[str, Any], Any]],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bake_cmd, "verify_check", strict_on_second_cut(bake_cmd.verify_check))
    code, out, err = run_cli(sweep_args(tiny_base, tiny_gates / "chat_mean", tmp_path / "s", "--preset", "2", "4",
                                        "--verify", "--greedy-tokens", "2", "--json", "--plot",
                                        str(tmp_path / "f.png")), capsys)
    assert code == 3, err
    (report, fig), = drawn
    assert report == json.loads(out)
    assert png_size(tmp_path / "f.png") == (1400, 1150)  # a second row for the verification
    ok, bad = report["outputs"]
    assert (ok["ok"], ok["verified"], bad["ok"], bad["verified"], bad["manifest"]) == (True, True, False, False, None)
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["chat_mean-p2"]
    artists = by_gid(fig)
    candidate = "checkpoint (pruned)"
    rel = artists[f"chat_mean/max_rel_diff/{candidate}"]
    assert list(rel.get_xdata()) == [ok["off_fraction"], bad["off_fraction"]] and rel.axes.get_yscale() == "log"
    measured = [o["verification"]["candidates"][0] for o in (ok, bad)]
    assert list(rel.get_ydata()) == [c["max_rel_diff"] for c in measured]
    assert all(0 < y < 1e-4 for y in rel.get_ydata())  # float32 bakes: float rounding only
    assert list(artists[f"chat_mean/top1_agreement/{candidate}"].get_ydata()) == [c["top1_agreement"]
                                                                               for c in measured] == [1.0, 1.0]
    outside = artists[f"chat_mean/max_rel_diff/{candidate}/failed"]
    assert (list(outside.get_xdata()), list(outside.get_ydata())) == ([bad["off_fraction"]],
                                                                      [measured[1]["max_rel_diff"]])
    cross = artists["failed/chat_mean-p4/params"]
    assert (list(cross.get_xdata()), list(cross.get_ydata())) == ([bad["off_fraction"]], [bad["params"]])
    assert list(artists["chat_mean/params/pruned"].get_xdata()) == [ok["off_fraction"]]  # lines: written cuts only
    assert "FAILED: chat_mean-p4 (exit 3)" in fig.get_suptitle()


def test_a_cut_that_failed_is_marked_at_its_planned_figures(
        tiny_base: Path, tiny_gates: Path, tmp_path: Path, drawn: list[tuple[dict[str, Any], Any]],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real_write = sweep.write_bake

    def write(plan: Any, out: Path, *args: Any) -> dict[str, Any]:
        if out.name == "chat_mean-p2":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(plan, out, *args)

    monkeypatch.setattr(sweep, "write_bake", write)
    code, out, err = run_cli(sweep_args(tiny_base, tiny_gates / "chat_mean", tmp_path / "s", "--preset", "1", "2", "3",
                                        "--json", "--plot", str(tmp_path / "f.svg")), capsys)
    assert code == 2 and (tmp_path / "f.svg").is_file(), err
    (report, fig), = drawn
    failed = report["outputs"][1]
    single = bake_checkpoint(tiny_base, load_variant(tiny_gates / "chat_mean", num_layers=4, intermediate_size=128),
                             GateSettings(Cut("preset", 2), "hard", "mean"), tmp_path / "single",
                             BakeOptions(layout="pruned", pad_multiple=8, progress=False))
    assert (failed["off_fraction"], failed["sizes"], failed["params"]) == (
        single["off_fraction"], single["sizes"], single["sizes"]["pruned"]["params"])  # what it would have been
    artists = by_gid(fig)
    for metric in ("params", "mlp_flops_per_token"):
        cross = artists[f"failed/chat_mean-p2/{metric}"]
        assert (list(cross.get_xdata()), list(cross.get_ydata())) == ([single["off_fraction"]],
                                                                      [single["sizes"]["pruned"][metric]])
    assert [o["off_fraction"] for o in report["outputs"] if o["ok"]] == list(
        artists["chat_mean/params/pruned"].get_xdata())
    assert "chat_mean-p2\nfailed (exit 2)" in [t.get_text() for t in fig.axes[0].texts]
    assert not any(k.startswith("chat_mean/max_rel_diff") for k in artists)  # no --verify: no verification row


def test_the_figure_may_go_into_the_sweep_folder_beside_the_outputs(
        tiny_base: Path, tiny_gates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s"  # does not exist yet: the sweep creates it
    code, _, err = run_cli(sweep_args(tiny_base, tiny_gates / "chat_mean", out, "--preset", "1", "5", "--plot",
                                      str(out / "sweep.png")), capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["chat_mean-p1", "chat_mean-p5", "sweep.png"]
    for name in ("chat_mean-p1", "chat_mean-p5"):  # each output holds exactly its own files
        assert sorted(p.name for p in (out / name).iterdir()) == read_manifest(out / name)["files"]


@pytest.mark.parametrize("extra,plot,message", [
    (["--preset", "2"], "f.png", "this bake is one cut; give several cuts (e.g. --preset all) or drop --plot"),
    (["--preset", "all", "--overwrite"], "s/chat_mean-p1/f.png", "points into the sweep's output folder"),
    (["--preset", "all"], "f.jpg", "unknown figure type '.jpg'"),
])
def test_a_plot_that_cannot_be_written_is_refused_before_any_work(
        tiny_base: Path, tiny_gates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
        plot: str, message: str) -> None:
    (tmp_path / "s" / "chat_mean-p1").mkdir(parents=True)
    (tmp_path / "s" / "chat_mean-p1" / "earlier.txt").write_text("an earlier output")
    code, out, err = run_cli(sweep_args(tiny_base, tiny_gates / "chat_mean", tmp_path / "s", *extra, "--plot",
                                        str(tmp_path / plot)), capsys)
    assert code == 2 and out == "" and message in err
    assert [str(p.relative_to(tmp_path)) for p in sorted(tmp_path.rglob("*"))] == [
        "s", "s/chat_mean-p1", "s/chat_mean-p1/earlier.txt"]


def test_without_matplotlib_plot_names_the_extra(tiny_base: Path, tiny_gates: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    code, out, err = run_cli(sweep_args(tiny_base, tiny_gates / "chat_mean", tmp_path / "s", "--preset", "all",
                                        "--plot", str(tmp_path / "f.png")), capsys)
    assert code == 2 and out == ""
    assert 'install the plot extra: pip install "lambda-bake[plot]"' in err
    assert list(tmp_path.iterdir()) == []  # refused before the sweep: nothing baked
