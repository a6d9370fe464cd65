"""Figures drawn headless with matplotlib (the optional ``[plot]`` extra) from the commands' JSON reports.

Each chart is one function ``<chart>_figure(report, size) -> Figure`` that reads nothing but the
report dict its command prints with ``--json`` (``bake.plots.inspect_plot.inspect_figure``,
``bake.plots.sweep_plot.sweep_figure``); ``write_figure`` here saves any of them as PNG or SVG,
byte for byte the same for the same report. matplotlib is imported when a figure is drawn, never
when this module is, so commands run without it until ``--plot`` is asked for. Figures are built
on ``matplotlib.figure.Figure`` directly (no pyplot, no GUI backend): PNG goes through Agg.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from bake.errors import PlotError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLOT_FORMATS = ("png", "svg")
DPI = 100  # pixels per inch: a PNG is exactly the requested pixels; an SVG declares them as inches x 72 pt
INSTALL_HINT = 'pip install "lambda-bake[plot]"'
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8.5,
         "svg.hashsalt": "lambda-bake", "svg.fonttype": "path"}
_METADATA = {"png": {"Software": "lambda-bake"}, "svg": {"Creator": "lambda-bake", "Date": None}}


def plot_format(path: Path, created: Path | None = None) -> str:
    """The file type of ``--plot PATH`` ('png' or 'svg'); refuses other suffixes and a missing folder
    (unless that folder is ``created``: one the command makes before it writes the figure)."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in PLOT_FORMATS:
        raise PlotError(f"--plot {path}: unknown figure type {path.suffix or '(no suffix)'!r}; "
                        f"name the file .png or .svg")
    if not path.parent.is_dir() and not (created is not None and path.parent.resolve() == Path(created).resolve()):
        raise PlotError(f"--plot {path}: folder {path.parent} does not exist; create it or choose another path")
    return fmt


def parse_size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` in pixels (each 300..20000), e.g. ``1600x1200``."""
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"expected WIDTHxHEIGHT in pixels, e.g. 1600x1200, got {text!r}") from None
    if not (300 <= w <= 20000 and 300 <= h <= 20000):
        raise ValueError(f"figure size {w}x{h} px is out of range; each side 300..20000 px")
    return w, h


def size_arg(text: str) -> tuple[int, int]:
    """argparse type of ``--plot-size``."""
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_plot_args(p: argparse.ArgumentParser, what: str, default_size: str) -> None:
    """``--plot FILE`` (draw ``what``) and ``--plot-size WxH`` (default as ``default_size`` says)."""
    p.add_argument("--plot", type=Path, metavar="FILE", help=f"also draw {what} as a figure (.png or .svg)")
    p.add_argument("--plot-size", type=size_arg, metavar="WxH", help=f"figure size in pixels (default: {default_size})")


def require_matplotlib() -> None:
    """Fail with the extra to install when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise PlotError(f"--plot needs matplotlib, which is not installed here; install the plot extra: "
                        f"{INSTALL_HINT}") from e


def write_figure(fig: Figure, path: Path) -> None:
    """Save ``fig`` to ``path`` (.png or .svg) in one rename; same figure, same bytes (no dates)."""
    import matplotlib

    path = Path(path)
    fmt = plot_format(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with matplotlib.rc_context(STYLE):
            fig.savefig(tmp, format=fmt, dpi=DPI, metadata=_METADATA[fmt])
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
