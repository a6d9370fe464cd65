"""``inspect --plot``: the figure file, the numbers it draws (the --json report), determinism, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import by_gid, png_size, svg_size

from bake.cli import main
from bake.plots import inspect_plot

REPO = Path(__file__).resolve().parents[2]
TINY_ARGS = ["--num-layers", "4", "--pad-multiple", "8"]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_figure_has_the_requested_size_and_the_same_bytes_every_time(tiny_gates: Path, tmp_path: Path, fmt: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    paths = [tmp_path / f"first.{fmt}", tmp_path / f"second.{fmt}"]
    for path in paths:
        code, out, err = run_cli(["inspect", "--gates", str(tiny_gates), *TINY_ARGS, "--plot", str(path),
                                  "--plot-size", "900x700"], capsys)
        assert code == 0 and out == "", err
        assert f"figure: {path} (900x700 px)" in err
    if fmt == "png":
        assert png_size(paths[0]) == (900, 700)
    else:  # 100 px per inch, 72 pt per inch
        assert svg_size(paths[0]) == ("648pt", "504pt")
        assert b"<dc:date>" not in paths[0].read_bytes()
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)  # no temporary left


def test_default_size_is_a_column_per_variant_at_the_real_gate_shape(full_gates: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["inspect", "--gates", str(full_gates), "--variant", "all", "--num-layers", "28", "--plot",
                            str(tmp_path / "f.png")], capsys)
    assert code == 0, err
    assert png_size(tmp_path / "f.png") == (120 + 4 * 420, 1300)


def test_the_plotted_numbers_are_the_json_report(tiny_gates: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    drawn: list[tuple[dict[str, Any], Any]] = []

    def spy(report: dict[str, Any], size: tuple[int, int]) -> Any:
        fig = real(report, size)
        drawn.append((report, fig))
        return fig

    real = inspect_plot.inspect_figure
    monkeypatch.setattr(inspect_plot, "inspect_figure", spy)
    code, out, err = run_cli(["inspect", "--gates", str(tiny_gates), *TINY_ARGS, "--thresholds", "0.5",
                              "--plot", str(tmp_path / "f.svg"), "--json"], capsys)
    assert code == 0, err
    (report, fig), = drawn
    assert report == json.loads(out)  # the plotting code gets exactly what --json prints
    assert [v["variant"] for v in report["variants"]] == ["chat_energy", "chat_energy_optA", "chat_energy_optB",
                                                          "chat_mean"]
    artists = by_gid(fig)
    assert len(artists) == 4 * (4 + 4 * 6)  # per variant: 4 lambda/width series, 4 per threshold
    for v in report["variants"]:
        name = v["variant"]
        quantiles = v["lambda_quantiles"]["per_layer"]
        assert list(artists[f"{name}/lambda_median"].get_ydata()) == [q[2] for q in quantiles]
        for band, (lo, hi) in {"outer": (0, 4), "inner": (1, 3)}.items():
            ys = artists[f"{name}/lambda_band/{band}"].get_paths()[0].vertices[:, 1]
            assert set(ys) == {q[lo] for q in quantiles} | {q[hi] for q in quantiles}
        assert list(artists[f"{name}/dense_width"].get_ydata()) == [128, 128]
        assert [row["label"] for row in v["thresholds"]] == [f"preset {k}" for k in range(1, 6)] + ["threshold 0.5"]
        for i, row in enumerate(v["thresholds"]):
            assert list(artists[f"{name}/off_share/{i}"].get_xdata()) == [0, 1, 2, 3]
            assert list(artists[f"{name}/off_share/{i}"].get_ydata()) == row["off_share_per_layer"]
            assert list(artists[f"{name}/kept/{i}"].get_ydata()) == row["kept_per_layer"]
            assert list(artists[f"{name}/pruned_width/{i}"].get_ydata()) == [row["pruned_width"]] * 2
            assert list(artists[f"{name}/threshold/{i}"].get_ydata()) == [row["threshold"]] * 2


def test_a_variant_without_thresholds_still_draws_its_lambda(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "bare"
    folder.mkdir()
    torch.save(torch.randn(4 * 32, generator=torch.Generator().manual_seed(3)), folder / "lambda_logits.pt")
    code, out, err = run_cli(["inspect", "--gates", str(folder), "--num-layers", "4", "--plot",
                              str(tmp_path / "f.png"), "--json"], capsys)
    assert code == 0, err
    (v,) = json.loads(out)["variants"]
    assert v["thresholds"] == [] and len(v["lambda_quantiles"]["per_layer"]) == 4
    assert png_size(tmp_path / "f.png") == (800, 1300)


def test_without_matplotlib_plot_names_the_extra(tiny_gates: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    code, out, err = run_cli(["inspect", "--gates", str(tiny_gates), *TINY_ARGS, "--plot", str(tmp_path / "f.png")],
                             capsys)
    assert code == 2 and out == ""
    assert 'install the plot extra: pip install "lambda-bake[plot]"' in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name,message", [
    ("f.jpg", "unknown figure type '.jpg'; name the file .png or .svg"),
    ("f", "unknown figure type '(no suffix)'"),
    ("missing/f.png", "does not exist; create it or choose another path"),
])
def test_bad_plot_path_is_a_user_error(tiny_gates: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       name: str, message: str) -> None:
    code, out, err = run_cli(["inspect", "--gates", str(tiny_gates), *TINY_ARGS, "--plot", str(tmp_path / name)],
                             capsys)
    assert code == 2 and out == "" and message in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("size", ["900", "10x700", "axb"])
def test_bad_plot_size_is_a_usage_error(tiny_gates: Path, tmp_path: Path, size: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["inspect", "--gates", str(tiny_gates), "--plot", str(tmp_path / "f.png"), "--plot-size", size])
    assert e.value.code == 2 and "--plot-size" in capsys.readouterr().err


def test_inspect_without_plot_does_not_import_matplotlib(tiny_gates: Path) -> None:
    code = ("import sys; from bake.cli import main; "
            f"main(['inspect', '--gates', {str(tiny_gates)!r}, '--num-layers', '4', '--json']); "
            "sys.exit(3 if 'matplotlib' in sys.modules else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["variants"]) == 4
