"""The evaluation figure: what each cut costs on each set, against its off-fraction.

``eval_series`` reads the report ``lambda-bake eval --json`` prints and returns every number the figure draws:
per set (a panel each) one line per (variant, layout/format) through its cuts, x the off-fraction, y the set's
``delta_nll`` against the reference (text sets; nll where there is no reference) or its exact match (QA sets).
``eval_figure`` draws nothing else; saving is ``bake.plots.figure``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bake.plots.figure import DPI, STYLE, require_matplotlib, write_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def eval_series(report: dict[str, Any]) -> dict[str, Any]:
    """{set name: {"metric": ..., "lines": {line label: [(off_fraction, value), ...] sorted by off}}}."""
    out: dict[str, Any] = {}
    for name, info in report["sets"].items():
        metric = ("delta_nll" if report.get("reference") else "nll") if info["kind"] == "text" else "exact_match"
        lines: dict[str, list[tuple[float, float]]] = {}
        for m in report["models"]:
            value = m["sets"].get(name, {}).get(metric)
            if value is None or m.get("off_fraction") is None:
                continue
            label = "reference" if m.get("is_reference") else \
                f"{m.get('variant') or m['kind']} / {m.get('layout') or '-'} / {m.get('format', m['kind'])}"
            lines.setdefault(label, []).append((float(m["off_fraction"]), float(value)))
        out[name] = {"metric": metric, "lines": {k: sorted(v) for k, v in lines.items()}}
    return out


def eval_figure(report: dict[str, Any], size: tuple[int, int] = (1200, 450)) -> Figure:
    require_matplotlib()
    import matplotlib
    from matplotlib.figure import Figure

    series = eval_series(report)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")
        axes = fig.subplots(1, max(len(series), 1), squeeze=False)[0]
        for ax, (name, s) in zip(axes, series.items()):
            for label, points in s["lines"].items():
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", label=label)
            ax.set_title(f"{name} ({report['sets'][name]['file']})")
            ax.set_xlabel("neurons off (share)")
            ax.set_ylabel({"delta_nll": "change in NLL vs reference (nats/token)", "nll": "NLL (nats/token)",
                           "exact_match": "exact match"}[s["metric"]])
            ax.grid(alpha=0.3)
            if s["lines"]:
                ax.legend()
    return fig


def draw_eval(report: dict[str, Any], path: Path) -> None:
    write_figure(eval_figure(report), Path(path))
