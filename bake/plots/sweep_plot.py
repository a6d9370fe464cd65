"""The sweep figure: what each baked cut costs (parameters, MLP FLOPs per token) and how it verified.

``sweep_series`` reads the sweep report (the dict ``bake ... --json`` prints for a sweep) and returns
every number the figure draws; ``sweep_figure`` draws nothing else, so the picture and the JSON
cannot disagree. Saving, determinism and the ``[plot]`` extra are ``bake.plots.figure``'.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from bake.plots.figure import DPI, STYLE, require_matplotlib

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

LAYOUTS = ("dense", "pruned", "ragged")
SIZE_METRICS = ("params", "mlp_flops_per_token")
VERIFY_METRICS = ("max_rel_diff", "top1_agreement")
_LAYOUT_STYLE = {"dense": ":", "pruned": "--", "ragged": "-"}
_LAYOUT_LABEL = {"dense": "dense (every neuron, off ones zero)", "pruned": "pruned (padded common width)",
                 "ragged": "ragged (each layer its own width)"}
_SHARED = "0.45"  # dense sizes do not depend on the cut: one grey line for every variant
_MAX_NAMED = 6  # failed cuts named next to their marks; more are counted in the title
_CANDIDATE_MARKERS = ("o", "s", "^", "D", "v")
_TITLES = {
    "params": ("Parameters of the model, by layout", "parameters"),
    "mlp_flops_per_token": ("MLP FLOPs per token, by layout", "MLP FLOPs per token\n(2 x 3 x hidden x kept width)"),
    "max_rel_diff": ("Verification: largest logit difference from the hooked model",
                     "max |logit diff| / max |logit|\n(log scale)"),
    "top1_agreement": ("Verification: top-1 token agreement with the hooked model", "top-1 agreement\n(share of positions)"),
}


def sweep_series(report: dict[str, Any]) -> dict[str, Any]:
    """Every number the sweep figure draws, taken from the sweep report.

    ``variants``: per variant (in report order) its written cuts by off-fraction, with each layout's
    ``params`` and ``mlp_flops_per_token``, and per verifier candidate the ``max_rel_diff``,
    ``top1_agreement`` and ``passed`` of every cut it was run on (a cut whose verification failed
    included). ``failed``: each cut that was not written, at its planned off-fraction and the sizes
    of the layout it was to be baked in. ``baked_layouts``: the layouts the sweep wrote.
    """
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for o in report["outputs"]:
        by_variant.setdefault(o["variant"], []).append(o)
    variants = []
    for name, outputs in by_variant.items():
        outputs = sorted(outputs, key=lambda o: o["off_fraction"])
        written = [o for o in outputs if o["ok"]]
        variants.append({"variant": name, "cuts": [o["name"] for o in written],
                         "off_fraction": [o["off_fraction"] for o in written],
                         **{m: {lay: [o["sizes"][lay][m] for o in written] for lay in LAYOUTS} for m in SIZE_METRICS},
                         "verification": _verification_series(outputs)})
    failed = [{"name": o["name"], "variant": o["variant"], "off_fraction": o["off_fraction"],
               "exit_code": o["exit_code"], "error": o["error"],
               **{m: o["sizes"][o["layout"]][m] for m in SIZE_METRICS}}
              for o in report["outputs"] if not o["ok"]]
    return {"variants": variants, "failed": failed,
            "baked_layouts": sorted({o["layout"] for o in report["outputs"]})}


def _verification_series(outputs: list[dict[str, Any]]) -> dict[str, dict[str, list[Any]]]:
    """Per candidate name: the cuts it was verified on, their off-fractions and its figures on each."""
    series: dict[str, dict[str, list[Any]]] = {}
    for o in outputs:
        for c in (o["verification"] or {}).get("candidates", []):
            s = series.setdefault(c["name"], {"cuts": [], "off_fraction": [], **{m: [] for m in VERIFY_METRICS},
                                              "passed": []})
            s["cuts"].append(o["name"])
            s["off_fraction"].append(o["off_fraction"])
            for m in (*VERIFY_METRICS, "passed"):
                s[m].append(c[m])
    return series


def sweep_size(report: dict[str, Any]) -> tuple[int, int]:
    """Default pixel size: two panels side by side, a second row when the sweep was verified."""
    verified = any(o["verification"] for o in report["outputs"])
    return 1400, 1150 if verified else 650


def sweep_figure(report: dict[str, Any], size: tuple[int, int]) -> Figure:
    """The sweep report as one figure: sizes per layout against the off-fraction, a colour per variant.

    Top row: parameters and MLP FLOPs per token of the dense, pruned and ragged layouts (markers on
    the layout baked); a second row where ``--verify`` ran: max relative logit difference (log) and
    top-1 agreement per candidate (hollow red: outside its budget). A cut that was not written is a
    red cross with its name. Every drawn series carries a gid for tests: ``<variant>/<metric>/<layout
    or candidate>``, ``.../failed`` for points outside the budget, ``failed/<cut>/<metric>``.
    """
    require_matplotlib()
    import matplotlib
    from matplotlib.figure import Figure

    series = sweep_series(report)
    verified = any(v["verification"] for v in series["variants"])
    cmap = matplotlib.colormaps["tab10"]
    colour = {v["variant"]: cmap(i % 10) for i, v in enumerate(series["variants"])}
    candidates = list(dict.fromkeys(c for v in series["variants"] for c in v["verification"]))
    marker = {c: _CANDIDATE_MARKERS[i % len(_CANDIDATE_MARKERS)] for i, c in enumerate(candidates)}
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")
        grid = fig.subplots(2 if verified else 1, 2, squeeze=False, sharex=True)
        for ax, metric in zip(grid[0], SIZE_METRICS):
            _draw_sizes(ax, metric, series, colour)
        if verified:
            for ax, metric in zip(grid[1], VERIFY_METRICS):
                _draw_verification(ax, metric, series, colour, marker)
        for ax in grid[-1]:
            ax.set_xlabel("neurons switched off (achieved off-fraction)")
        fig.suptitle(_suptitle(report, series), fontsize=12)
        fig.legend(handles=_legend(series, colour, marker), loc="outside lower center",
                   ncols=max(1, min(4, size[0] // 300)), frameon=False)
    return fig


def _suptitle(report: dict[str, Any], series: dict[str, Any]) -> str:
    total, failed = len(report["outputs"]), series["failed"]
    head = (f"Sweep into {Path(report['out']).name}/: {total - len(failed)} of {total} cuts written "
            f"(layout {', '.join(series['baked_layouts'])}), {len(series['variants'])} variant(s)")
    if not failed:
        return head
    names = ", ".join(f"{f['name']} (exit {f['exit_code']})" for f in failed[:_MAX_NAMED])
    more = len(failed) - _MAX_NAMED
    return f"{head}\nFAILED: {names}{f' and {more} more' if more > 0 else ''}"


def _axes_style(ax: Axes, metric: str) -> None:
    from matplotlib.ticker import EngFormatter, PercentFormatter

    title, ylabel = _TITLES[metric]
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    if metric in SIZE_METRICS:
        ax.yaxis.set_major_formatter(EngFormatter())
    elif metric == "top1_agreement":
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    else:
        ax.set_yscale("log", nonpositive="mask")


def _draw_sizes(ax: Axes, metric: str, series: dict[str, Any], colour: dict[str, Any]) -> None:
    _axes_style(ax, metric)
    for v in series["variants"]:
        for lay in LAYOUTS:
            baked, c = lay in series["baked_layouts"], colour[v["variant"]]
            ax.plot(v["off_fraction"], v[metric][lay], color=_SHARED if lay == "dense" else c, ls=_LAYOUT_STYLE[lay],
                    lw=1.6 if baked else 1.1, marker="o" if baked else None, ms=4, mfc=c, mec=c,
                    gid=f"{v['variant']}/{metric}/{lay}")
    for f in series["failed"]:
        ax.plot([f["off_fraction"]], [f[metric]], ls="none", marker="X", ms=11, mfc=colour[f["variant"]], mec="red",
                mew=1.5, gid=f"failed/{f['name']}/{metric}")
        if len(series["failed"]) <= _MAX_NAMED:
            ax.annotate(f"{f['name']}\nfailed (exit {f['exit_code']})", (f["off_fraction"], f[metric]), fontsize=7,
                        color="red", xytext=(7, 5), textcoords="offset points")


def _draw_verification(ax: Axes, metric: str, series: dict[str, Any], colour: dict[str, Any],
                       marker: dict[str, str]) -> None:
    _axes_style(ax, metric)
    for v in series["variants"]:
        for name, s in v["verification"].items():
            ax.plot(s["off_fraction"], s[metric], color=colour[v["variant"]], marker=marker[name], ms=5, lw=1.1,
                    gid=f"{v['variant']}/{metric}/{name}")
            bad = [(x, y) for x, y, ok in zip(s["off_fraction"], s[metric], s["passed"]) if not ok]
            if bad:
                xs, ys = zip(*bad)
                ax.plot(xs, ys, ls="none", marker=marker[name], ms=11, mfc="none", mec="red", mew=1.5,
                        gid=f"{v['variant']}/{metric}/{name}/failed")
    if metric == "top1_agreement":
        ax.set_ylim(top=1.01)  # nothing above 100 %: the data set the bottom


def _legend(series: dict[str, Any], colour: dict[str, Any], marker: dict[str, str]) -> list[Any]:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, lw=2.5, label=name) for name, c in colour.items()]
    handles += [Line2D([], [], color=_SHARED, ls=_LAYOUT_STYLE[lay],
                       marker="o" if lay in series["baked_layouts"] else None, ms=4,
                       label=_LAYOUT_LABEL[lay] + (" - baked" if lay in series["baked_layouts"] else ""))
                for lay in LAYOUTS]
    handles += [Line2D([], [], color="0.3", ls="none", marker=m, label=f"verified: {name}") for name, m in marker.items()]
    if marker:
        handles.append(Line2D([], [], ls="none", marker="o", ms=11, mfc="none", mec="red", mew=1.5,
                              label="outside the verification budget"))
    if series["failed"]:
        handles.append(Line2D([], [], ls="none", marker="X", ms=11, mfc=_SHARED, mec="red", mew=1.5,
                              label="cut failed, not written (filled in its variant's colour)"))
    return handles
