"""The figure of ``inspect --plot``: per variant, the share of each layer's neurons each threshold switches off,
lambda per layer, and the neurons each layer keeps against the pruned layout's padded width. It draws exactly
the dict ``inspect --json`` prints (``bake.gates.report``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bake.plots.figure import DPI, STYLE, require_matplotlib

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def inspect_size(report: dict[str, Any]) -> tuple[int, int]:
    """Default pixel size of the inspect figure: one 420 px column per variant."""
    return max(800, 120 + 420 * len(report["variants"])), 1300


def inspect_figure(report: dict[str, Any], size: tuple[int, int]) -> Figure:
    """The ``inspect --json`` report as one figure: a column per variant, a colour per threshold.

    Rows: share of each layer's neurons switched off; lambda quantiles per layer with the
    thresholds; kept neurons per layer against the pruned layout's padded width (shaded: the
    padding); a table of each cut's threshold, off-fraction, width and padding overhead.
    Every drawn series carries a gid ``<variant>/<series>/<threshold index>`` for tests.
    """
    require_matplotlib()
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    variants = report["variants"]
    levels = variants[0]["lambda_quantiles"]["levels"]
    labels = _labels_by_off_fraction(variants)
    cmap = matplotlib.colormaps["viridis"]
    colour = {lab: cmap(0.85 * (1 - i / max(1, len(labels) - 1))) for i, lab in enumerate(labels)}
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")
        grid = fig.subplots(4, len(variants), squeeze=False, gridspec_kw={"height_ratios": [3, 3, 3, 1.6]})
        for col, v in enumerate(variants):
            axes = [grid[r][col] for r in range(4)]
            for r in range(3):
                if col:
                    axes[r].sharey(grid[r][0])
                if r:
                    axes[r].sharex(axes[0])
            _draw_off_share(axes[0], v, colour)
            _draw_lambda(axes[1], v, colour)
            _draw_widths(axes[2], v, colour)
            _draw_table(axes[3], v, colour)
            axes[0].set_title(f"{v['variant']}\nscale {v['scale_mode'] or 'unknown'}, "
                              f"{v['num_layers']} layers x {v['intermediate_size']} neurons")
        for r, text in enumerate(("neurons switched off\n(share of the layer)", "lambda = sigmoid(logit)\n(per neuron)",
                                  "MLP width (neurons)")):
            grid[r][0].set_ylabel(text)
        fig.suptitle("Where each cut switches MLP neurons off, layer by layer", fontsize=12)
        handles = [Line2D([], [], color=colour[lab], lw=2, label=lab) for lab in labels] + [
            Patch(color="0.85", label=f"lambda {levels[0]:.0%}-{levels[4]:.0%}"),
            Patch(color="0.6", label=f"lambda {levels[1]:.0%}-{levels[3]:.0%}"),
            Line2D([], [], color="black", lw=1, label="lambda median"),
            Line2D([], [], color="0.3", ls="--", label="threshold / pruned width"),
            Patch(color="0.3", alpha=0.2, label="padding (zero neurons)"),
            Line2D([], [], color="0.5", ls=":", label="dense width"),
        ]
        if any("uniform_cut" in row for v in report["variants"] for row in v["thresholds"]):
            handles.append(Line2D([], [], color="0.3", ls="-.", lw=1.6, label="uniform width (every layer)"))
        fig.legend(handles=handles, loc="outside lower center", ncols=max(1, min(len(handles), size[0] // 200)),
                   frameon=False)
    return fig


def _labels_by_off_fraction(variants: list[dict[str, Any]]) -> list[str]:
    """Threshold labels ordered by their mean off-fraction over the variants: the colour scale is the cut."""
    seen: dict[str, list[float]] = {}
    for v in variants:
        for row in v["thresholds"]:
            seen.setdefault(row["label"], []).append(row["off_fraction"])
    return sorted(seen, key=lambda label: sum(seen[label]) / len(seen[label]))


def _draw_off_share(ax: Axes, v: dict[str, Any], colour: dict[str, Any]) -> None:
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    layers = range(v["num_layers"])
    for i, row in enumerate(v["thresholds"]):
        ax.plot(layers, row["off_share_per_layer"], color=colour[row["label"]], marker="o", ms=2.5, lw=1.2,
                gid=f"{v['variant']}/off_share/{i}")
    ax.set_ylim(0, 1)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(-0.5, v["num_layers"] - 0.5)
    ax.grid(alpha=0.3)


def _draw_lambda(ax: Axes, v: dict[str, Any], colour: dict[str, Any]) -> None:
    lo, q1, median, q3, hi = zip(*v["lambda_quantiles"]["per_layer"])  # levels 5, 25, 50, 75, 95 %
    layers = range(v["num_layers"])
    ax.fill_between(layers, lo, hi, color="0.85", lw=0, gid=f"{v['variant']}/lambda_band/outer")
    ax.fill_between(layers, q1, q3, color="0.6", lw=0, gid=f"{v['variant']}/lambda_band/inner")
    ax.plot(layers, median, color="black", lw=1, gid=f"{v['variant']}/lambda_median")
    for i, row in enumerate(v["thresholds"]):
        ax.axhline(row["threshold"], color=colour[row["label"]], ls="--", lw=1, gid=f"{v['variant']}/threshold/{i}")
    ax.grid(alpha=0.3)


def _draw_widths(ax: Axes, v: dict[str, Any], colour: dict[str, Any]) -> None:
    layers = range(v["num_layers"])
    ax.axhline(v["intermediate_size"], color="0.5", ls=":", lw=1, gid=f"{v['variant']}/dense_width")
    for i, row in enumerate(v["thresholds"]):
        c = colour[row["label"]]
        ax.plot(layers, row["kept_per_layer"], color=c, marker="o", ms=2.5, lw=1.2, gid=f"{v['variant']}/kept/{i}")
        ax.axhline(row["pruned_width"], color=c, ls="--", lw=1, gid=f"{v['variant']}/pruned_width/{i}")
        ax.fill_between(layers, row["kept_per_layer"], row["pruned_width"], color=c, alpha=0.2, lw=0)
        if "uniform_cut" in row:  # the uniform-width cut at the same off-fraction: one width, no padding
            ax.plot(layers, row["uniform_cut"]["kept_per_layer"], color=c, ls="-.", lw=1.6,
                    gid=f"{v['variant']}/uniform/{i}")
    ax.set_ylim(0, v["intermediate_size"] * 1.04)
    ax.set_xlabel("layer")
    ax.grid(alpha=0.3)


def _draw_table(ax: Axes, v: dict[str, Any], colour: dict[str, Any]) -> None:
    ax.axis("off")
    if not v["thresholds"]:
        ax.text(0.5, 0.5, "no selected thresholds: pass --thresholds", ha="center", va="center")
        return
    uniform = any("uniform_cut" in row for row in v["thresholds"])
    cells = [[row["label"], f"{row['threshold']:.4f}", f"{row['off_fraction']:.1%}", str(row["pruned_width"]),
              "-" if row["padding_overhead"] is None else f"+{row['padding_overhead']:.1%}"]
             + ([f"{row['uniform_cut']['pruned_width']} ({row['uniform_cut']['on_to_off']:,} moved)"] if uniform else [])
             for row in v["thresholds"]]
    labels = ["cut", "threshold", "off", "pruned width", "padding"] + (["uniform width"] if uniform else [])
    table = ax.table(cellText=cells, colLabels=labels,
                     loc="upper center", cellLoc="center", edges="horizontal")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    for i, row in enumerate(v["thresholds"]):
        table[i + 1, 0].get_text().set_color(colour[row["label"]])
        table[i + 1, 0].get_text().set_fontweight("bold")
