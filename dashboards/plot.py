"""Scale-against-bounds figures (matplotlib): one run's scales, or several runs side by side.

Each scale gets a panel (the scale against its min/max and warning lines, alerts
marked) and, under it, a gradient strip: the raw parameter's gradient on a
symlog axis, shaded where the raw parameter is outside the bounds. That is
where a hard clamp cuts the gradient to exactly zero, and the strip shows the
line lying flat on zero there.

Panels are laid out at fixed sizes (no tight_layout pass), so the end-of-fit
plot costs the same whatever the labels say.
"""
from __future__ import annotations

import math
import os
import textwrap
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import matplotlib

matplotlib.use("Agg")  # plots are files and logger images; never needs a screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullLocator  # noqa: E402

from scalewatch.dashboards.series import ScaleRanking, ScaleSeries, collect_series  # noqa: E402
from scalewatch.monitor.history import iter_history  # noqa: E402

if TYPE_CHECKING:
    from scalewatch.dashboards.compare import Comparison

#: points drawn per line at most; the record itself is never thinned
MAX_DRAWN_POINTS = 2000

HistorySource = Union[str, os.PathLike, Iterable[Dict[str, Any]]]

ALERT_STYLE = {"near_upper": ("^", "tab:red"), "near_lower": ("v", "tab:purple"),
               "pinned": ("X", "black"), "non_finite": ("*", "tab:orange")}
#: the shading of steps where the raw parameter is outside [min, max]
OUTSIDE_LABEL = "raw outside [min, max]"
OUTSIDE_COLOR = "tab:red"
GRADIENT_COLOR = "tab:green"

# Layout, in inches: [title, scale panel, gap, gradient strip, gap] per scale.
_WIDTH, _LEFT, _AXES_WIDTH = 10.8, 0.95, 6.9
_TITLE, _PANEL, _STRIP_GAP, _STRIP, _PAIR_GAP = 0.3, 2.3, 0.1, 0.95, 0.3
_TOP, _BOTTOM = 0.4, 0.6


def values(buffer: Any) -> np.ndarray:
    """A series column (``array("d")`` or numpy) as a float64 array, without a copy when it can."""
    return np.asarray(buffer, dtype=np.float64)


def envelope(x: np.ndarray, y: np.ndarray, max_points: int = MAX_DRAWN_POINTS) -> Tuple[np.ndarray, np.ndarray]:
    """Thin a line for drawing, keeping each bucket's min and max so spikes stay visible.

    Vectorised: the points are cut into equal buckets (the last one padded), so a
    200k-point line costs a few milliseconds.
    """
    n = len(x)
    if n <= max_points:
        return x, y
    buckets = max_points // 2
    size = -(-n // buckets)
    finite = np.isfinite(y)
    pad = buckets * size - n
    low = np.concatenate((np.where(finite, y, np.inf), np.full(pad, np.inf))).reshape(buckets, size)
    high = np.concatenate((np.where(finite, y, -np.inf), np.full(pad, -np.inf))).reshape(buckets, size)
    first = np.arange(buckets) * size  # a bucket with no finite value keeps its first point (a gap)
    idx = np.unique(np.concatenate((first + low.argmin(axis=1), first + high.argmax(axis=1))))
    idx = idx[idx < n]
    return x[idx], y[idx]


def outside_mask(s: ScaleSeries) -> np.ndarray:
    """Per reading, whether the raw parameter was outside its hard bounds (each judged by its own bounds).

    Soft bounds never cut the gradient: all False; so for series read without raw values.
    """
    if s.bound != "hard" or not s.has_gradient:
        return np.zeros(len(s), dtype=bool)
    raw = values(s.raw)
    outside = np.zeros(len(raw), dtype=bool)
    for first, end, lo, hi, _ in s.bound_spans():
        part = raw[first:end]
        outside[first:end] = (part > hi) | (part < lo)  # NaN compares False: unknown is not outside
    return outside


def outside_spans(s: ScaleSeries) -> np.ndarray:
    """Step ranges ``[[start, end], ...]`` where the raw parameter was outside its hard bounds.

    Each reading stands for the steps halfway to its neighbours, so one reading
    outside gives a span of one reading interval and a run of them one span.
    """
    outside = outside_mask(s)
    if not outside.any():
        return np.empty((0, 2))
    steps = values(s.steps)
    mid = (steps[1:] + steps[:-1]) / 2
    left, right = np.concatenate((steps[:1], mid)), np.concatenate((mid, steps[-1:]))
    change = np.diff(np.concatenate(([0], outside.astype(np.int8), [0])))
    return np.column_stack((left[change[:-1] == 1], right[np.flatnonzero(change == -1) - 1]))


def _merge_close(spans: np.ndarray, min_gap: float) -> np.ndarray:
    """Merge spans closer than ``min_gap`` (about a pixel): what is drawn, never what is counted."""
    if len(spans) < 2:
        return spans
    keep_gap = spans[1:, 0] - spans[:-1, 1] >= min_gap
    starts = np.concatenate(([0], np.flatnonzero(keep_gap) + 1))
    ends = np.concatenate((np.flatnonzero(keep_gap), [len(spans) - 1]))
    return np.column_stack((spans[starts, 0], spans[ends, 1]))


def load_series(source: HistorySource, max_panels: Optional[int] = None) -> Tuple[List[ScaleSeries], int]:
    """The series to draw (most at risk first) and how many scales were left out.

    One streaming pass collects and ranks; only when a file holds more scales
    than ``max_panels`` does a second pass collect just the chosen ones, so memory
    holds the drawn series, never the whole file.
    """
    path = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    records = iter_history(path) if path is not None else list(source)
    ranking = ScaleRanking()
    series: Optional[Dict[str, ScaleSeries]] = {}
    for rec in records:
        ranking.add(rec)
        if series is not None:
            if rec["name"] not in series and max_panels is not None and len(series) >= max_panels:
                series = None  # too many scales to keep them all: collect the chosen ones afterwards
            else:
                series.setdefault(rec["name"], ScaleSeries(name=rec["name"])).add(rec)
    names = ranking.ranked()
    chosen = names if max_panels is None else names[:max_panels]
    if series is None:
        series = collect_series(iter_history(path) if path is not None else records, chosen)
    return [series[n] for n in chosen if n in series], len(names) - len(chosen)


def plot_history(source: HistorySource, *, max_panels: Optional[int] = 6, title: Optional[str] = None,
                 max_points: int = MAX_DRAWN_POINTS, gradient: bool = True) -> Figure:
    """Draw each watched scale over optimizer steps against its bounds.

    One panel per scale: the effective scale, the raw parameter where it leaves
    the bounds, dashed min/max lines, dotted warning line(s), and markers where
    alerts fired; under it the gradient strip. With more scales than
    ``max_panels`` it draws the ones closest to a bound (or alerted) and says in
    the title how many it left out.

    Args:
        source: a history ``.jsonl`` path, or an iterable of records.
        max_panels: how many scales to draw at most (``None``: all).
        title: figure title; default names the run's scale count.
        max_points: points per line after min/max thinning (the record is untouched).
        gradient: draw the gradient strip under each panel.
    """
    series, left_out = load_series(source, max_panels)
    return plot_series(series, left_out, title=title, max_points=max_points, gradient=gradient)


def plot_series(series: List[ScaleSeries], left_out: int = 0, *, title: Optional[str] = None,
                max_points: int = MAX_DRAWN_POINTS, gradient: bool = True) -> Figure:
    """Draw series already loaded with :func:`load_series` (see :func:`plot_history`)."""
    head = title or "scalewatch: scale against its bounds"
    if left_out:
        head += f"\n{len(series)} closest to a bound shown, {left_out} more scale(s) left out"
    fig, pairs = _figure(max(1, len(series)), gradient, head)
    for (ax, strip), s in zip(pairs, series):
        _draw_scale(ax, s, max_points)
        if strip is not None:
            draw_gradient_strip(strip, [(s, GRADIENT_COLOR, "gradient")], max_points)
    if not series:
        pairs[0][0].text(0.5, 0.5, "no readings yet", ha="center", va="center", transform=pairs[0][0].transAxes)
    return fig


def _figure(panels: int, gradient: bool, title: str,
            footer: str = "") -> Tuple[Figure, List[Tuple[Axes, Optional[Axes]]]]:
    """A figure with a scale panel (and a gradient strip under it) per scale, all sharing the step axis."""
    top = _TOP + 0.2 * title.count("\n")
    bottom = _BOTTOM + 0.2 * (footer.count("\n") + 1 if footer else 0)
    block = _TITLE + _PANEL + (_STRIP_GAP + _STRIP if gradient else 0.0)
    height = top + panels * block + (panels - 1) * _PAIR_GAP + bottom
    fig = plt.figure(figsize=(_WIDTH, height))
    pairs: List[Tuple[Axes, Optional[Axes]]] = []
    first: Optional[Axes] = None
    y = height - top
    for _ in range(panels):
        y -= _TITLE + _PANEL
        ax = fig.add_axes(_box(y, _PANEL, height), sharex=first)
        first = first or ax
        strip = None
        if gradient:
            y -= _STRIP_GAP + _STRIP
            strip = fig.add_axes(_box(y, _STRIP, height), sharex=first)
        y -= _PAIR_GAP
        pairs.append((ax, strip))
    last = pairs[-1][1] or pairs[-1][0]
    for ax, strip in pairs:
        for a in (ax, strip):
            if a is not None and a is not last:
                a.tick_params(labelbottom=False)
    last.set_xlabel("optimizer step")
    fig.suptitle(title, fontsize=12, x=(_LEFT + _AXES_WIDTH / 2) / _WIDTH, y=1 - 0.12 / height, va="top")
    if footer:
        fig.text(_LEFT / _WIDTH, 0.08 / height, footer, fontsize=8, va="bottom", color="0.3")
    return fig, pairs


def _box(bottom: float, h: float, height: float) -> Tuple[float, float, float, float]:
    return _LEFT / _WIDTH, bottom / height, _AXES_WIDTH / _WIDTH, h / height


def _draw_scale(ax: Axes, s: ScaleSeries, max_points: int) -> None:
    steps, scale = values(s.steps), values(s.scale)
    x, y = envelope(steps, scale, max_points)
    ax.plot(x, y, color="tab:blue", lw=1.8, label="scale (effective)", zorder=3)
    shown = [scale, np.array([s.min, s.max])]
    outside = outside_mask(s)
    if outside.any():
        raw_outside = np.where(outside, values(s.raw), np.nan)
        rx, ry = envelope(steps, raw_outside, max_points)
        ax.plot(rx, ry, color="tab:orange", lw=1.2, label="raw parameter (outside bounds)", zorder=2)
        shown.append(raw_outside)
    _bound_lines(ax, s)
    _alert_markers(ax, s)
    everything = np.concatenate(shown)
    _y_range(ax, everything[np.isfinite(everything)], s.max - s.min)
    last = scale[-1] if len(scale) else math.nan
    ax.set_title(f"{s.name}   last = {last:.4g}   range [{s.min:g}, {s.max:g}]", fontsize=10, loc="left")
    ax.set_ylabel("scale")
    ax.grid(alpha=0.3)
    _legend(ax)


def _bound_lines(ax: Axes, s: ScaleSeries) -> None:
    """min/max (dashed) and the two warning lines (dotted); a bound not known yet draws nothing."""
    lines = [(s.max, dict(color="red", ls="--", lw=1.2), f"max_scale = {s.max:g}"),
             (s.min, dict(color="darkred", ls="--", lw=1.2), f"min_scale = {s.min:g}"),
             (s.upper_warning, dict(color="goldenrod", ls=":", lw=1.3),
              f"near_upper above {s.warn_fraction:g} x max = {s.upper_warning:.3g}"),
             (s.lower_warning, dict(color="mediumpurple", ls=":", lw=1.1), f"near_lower below {s.lower_warning:.3g}")]
    for value, style, label in lines:
        if math.isfinite(value):
            ax.axhline(value, label=label, **style)


def _alert_markers(ax: Axes, s: ScaleSeries, run_color: Any = None, transform: Any = None) -> None:
    """A marker per alert at its step and scale (a non-finite scale: at the upper bound).

    The marker's shape says the kind; its colour too for one run, the run's colour
    when runs are compared (then without a legend entry each).
    """
    for kind, (marker, kind_color) in ALERT_STYLE.items():
        pts = [(step, v if math.isfinite(v) else s.max) for step, k, v in s.alerts if k == kind]
        if pts:
            xs, ys = zip(*pts)
            ys = ys if transform is None else transform(np.asarray(ys))
            ax.scatter(xs, ys, marker=marker, s=90, zorder=5, linewidths=0.8,
                       color=kind_color if run_color is None else run_color,
                       edgecolors="white" if run_color is None else "black",
                       label=f"alert: {kind}" if run_color is None else None)


def _y_range(ax: Axes, shown: np.ndarray, span: float) -> None:
    """Room for everything shown, with a margin of 8% of the bounds' span."""
    if shown.size == 0:
        return
    pad = 0.08 * (span if math.isfinite(span) and span > 0 else max(1.0, float(np.ptp(shown))))
    ax.set_ylim(float(shown.min()) - pad, float(shown.max()) + pad)


def _legend(ax: Axes) -> None:
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)


# ---- the gradient strip ------------------------------------------------------------------


def draw_gradient_strip(ax: Axes, entries: Sequence[Tuple[ScaleSeries, Any, str]],
                        max_points: int = MAX_DRAWN_POINTS) -> None:
    """Each series' gradient on a symlog axis, its raw-outside-bounds steps shaded.

    With several series (runs compared), each gets its own band of the strip's
    height for its shading, in its colour, so the spans of different runs never
    overlap.

    Args:
        ax: the strip's axes.
        entries: ``(series, colour, label)`` per line; a series read without its
            gradient draws nothing (the strip says so).
        max_points: points per line after min/max thinning.
    """
    drawn = [(s, color, label) for s, color, label in entries if s.has_gradient and len(s)]
    grads = [values(s.grad) for s, _, _ in drawn]
    linthresh, top = _symlog_range(np.concatenate(grads) if grads else np.empty(0))
    ax.set_yscale("symlog", linthresh=linthresh, linscale=1.0)
    ax.set_ylim(-top, top)
    ax.axhline(0.0, color="0.35", lw=0.8, zorder=1)
    steps_all = [values(s.steps) for s, _, _ in drawn]
    x_span = max((float(st[-1] - st[0]) for st in steps_all), default=0.0)
    band = 1.0 / max(1, len(drawn))
    single = len(drawn) == 1
    shade_label = OUTSIDE_LABEL if single else OUTSIDE_LABEL + ", in the run's colour"
    zeros = []
    for i, ((s, color, label), g, steps) in enumerate(zip(drawn, grads, steps_all)):
        x, y = envelope(steps, g, max_points)
        zero = int(np.count_nonzero(g == 0.0))
        zeros += [f"{label} {zero}/{len(g)}"] if zero else []
        ax.plot(x, y, color=color, lw=1.3, zorder=3, label=f"{label} ({_zero_share(zero, len(g))})" if single else None)
        spans = _merge_close(outside_spans(s), x_span / max_points)
        if len(spans):
            ax.broken_barh([(a, b - a) for a, b in spans], (1.0 - (i + 1) * band, band),
                           transform=ax.get_xaxis_transform(), facecolors=OUTSIDE_COLOR if len(drawn) == 1 else color,
                           alpha=0.18, zorder=0, label=shade_label)
            shade_label = None  # one legend entry for all runs' shading
    if not single and drawn:  # a legend line per run would not fit the strip: the runs' colours are above
        ax.plot([], [], color="0.3", lw=1.3, label="gradient, in each run's colour")
        exact = "exactly 0: " + (", ".join(zeros) if zeros else "none")
        ax.plot([], [], " ", label="\n".join(textwrap.wrap(exact, 44, subsequent_indent="  ")))
    if not drawn:
        ax.text(0.5, 0.5, "no gradient readings", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_yticks([-top, 0.0, top])  # a short strip: more labels would collide
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(_short_number))
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylabel("gradient\n(symlog)", fontsize=8)
    ax.grid(alpha=0.25)
    _legend(ax)


def _zero_share(zero: int, n: int) -> str:
    """How many readings had a gradient of exactly zero, short enough for a legend line."""
    return f"exactly 0 at {zero} of {n} readings" if n < 1000 else f"exactly 0 at {100.0 * zero / n:.0f}% of readings"


def _symlog_range(g: np.ndarray) -> Tuple[float, float]:
    """``(linthresh, top)`` for a gradient axis: most non-zero gradients in the log part, exact 0 in the middle."""
    mag = np.abs(g[np.isfinite(g) & (g != 0.0)])
    if mag.size == 0:
        return 1e-8, 1e-6
    top = 10.0 ** math.ceil(math.log10(float(mag.max())))
    low = 10.0 ** math.floor(math.log10(float(np.percentile(mag, 5))))
    return max(low, top * 1e-6), top  # a strip this short shows six decades at most


def _short_number(value: float, _pos: Any = None) -> str:
    if value == 0:
        return "0"
    text = f"{value:.0e}"
    mantissa, exp = text.split("e")
    return f"{mantissa}e{int(exp)}"


# ---- several runs side by side -----------------------------------------------------------


def run_colors(count: int) -> List[Any]:
    """One colour per run: tab10, then tab20 for more runs."""
    cmap = plt.get_cmap("tab10" if count <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(count)]


def plot_compare(comparison: "Comparison", *, normalise: bool = False, gradient: bool = False,
                 max_panels: Optional[int] = 6, title: Optional[str] = None,
                 max_points: int = MAX_DRAWN_POINTS) -> Figure:
    """One panel per scale the runs share, each run in its own colour against its own bounds.

    Args:
        comparison: the runs, from :func:`scalewatch.dashboards.compare.compare_runs`.
        normalise: draw ``(scale - min) / (max - min)`` per run, so runs with
            different bounds compare fairly (0 at min, 1 at max).
        gradient: a gradient strip under each panel, a line per run (the runs must
            have been read with their gradients).
        max_panels: scales drawn at most, those most at risk in any run (``None``: all).
        title: figure title.
        max_points: points per line after min/max thinning.
    """
    runs, shared = comparison.runs, comparison.shared
    names = shared if max_panels is None else shared[:max_panels]
    head = title or f"scalewatch compare: {len(runs)} runs" + ("   (each normalised to its bounds)"
                                                               if normalise else "")
    notes = []
    if len(names) < len(shared):
        notes.append(f"{len(names)} of {len(shared)} shared scales shown (alerted or closest to a bound first)")
    unshared = comparison.unshared
    if unshared:
        listed = "; ".join(f"{n} ({', '.join(labels)})" for n, labels in list(unshared.items())[:4])
        more = f"; +{len(unshared) - 4} more" if len(unshared) > 4 else ""
        notes.append(f"not in every run, not drawn: {listed}{more}")
    fig, pairs = _figure(max(1, len(names)), gradient, head, footer="\n".join(notes))
    colors = run_colors(len(runs))
    for (ax, strip), name in zip(pairs, names):
        mine = [(r.series[name], color, r.label) for r, color in zip(runs, colors)]
        _draw_compare_panel(ax, name, mine, normalise, max_points)
        if strip is not None:
            draw_gradient_strip(strip, mine, max_points)
    if not names:
        pairs[0][0].text(0.5, 0.5, "no scale is in every run", ha="center", va="center",
                         transform=pairs[0][0].transAxes)
    return fig


def _draw_compare_panel(ax: Axes, name: str, entries: Sequence[Tuple[ScaleSeries, Any, str]], normalise: bool,
                        max_points: int) -> None:
    shown: List[np.ndarray] = []
    kinds = set()
    for s, color, label in entries:
        span = s.max - s.min
        to_y = (lambda v: (v - s.min) / span) if normalise else (lambda v: v)
        x, y = envelope(values(s.steps), to_y(values(s.scale)), max_points)
        last = values(s.scale)[-1]
        ax.plot(x, y, color=color, lw=1.7, zorder=3, label=f"{label}  [{s.min:g}, {s.max:g}]  last {last:.3g}")
        if not normalise:
            for bound in (s.min, s.max):
                if math.isfinite(bound):
                    ax.axhline(bound, color=color, ls="--", lw=1.1, alpha=0.75, zorder=2)
            shown.append(np.array([s.min, s.max]))
        shown.append(y[np.isfinite(y)])
        _alert_markers(ax, s, run_color=color, transform=to_y if normalise else None)
        kinds.update(k for _, k, _ in s.alerts)
    if normalise:
        for bound in (0.0, 1.0):
            ax.axhline(bound, color="black", ls="--", lw=1.1, label=None if bound else "bounds: min = 0, max = 1")
        shown.append(np.array([0.0, 1.0]))
        ax.set_ylabel("(scale - min) / (max - min)", fontsize=9)
    else:
        ax.plot([], [], color="0.3", ls="--", lw=1.1, label="each run's min / max (dashed)")
        ax.set_ylabel("scale")
    for kind in ALERT_STYLE:  # one legend entry per alert kind that fired, in neutral grey
        if kind in kinds:
            ax.scatter([], [], marker=ALERT_STYLE[kind][0], s=70, color="0.6", edgecolors="black", linewidths=0.8,
                       label=f"alert: {kind}")
    allv = np.concatenate(shown) if shown else np.empty(0)
    _y_range(ax, allv[np.isfinite(allv)], float(np.ptp(allv[np.isfinite(allv)])) if allv.size else math.nan)
    ax.set_title(name, fontsize=10, loc="left")
    ax.grid(alpha=0.3)
    _legend(ax)


# ---- files -------------------------------------------------------------------------------


def save_plot(source: HistorySource, path: str, **kwargs: Any) -> str:
    """Draw ``source`` (see :func:`plot_history`) and write it to ``path`` (PNG, or what the suffix says)."""
    return save_figure(plot_history(source, **kwargs), path)


def save_compare(comparison: "Comparison", path: str, **kwargs: Any) -> str:
    """Draw ``comparison`` (see :func:`plot_compare`) and write it to ``path``."""
    return save_figure(plot_compare(comparison, **kwargs), path)


def save_figure(fig: Figure, path: str) -> str:
    """Write ``fig`` to ``path`` and close it."""
    try:
        fig.savefig(path, dpi=110)
    finally:
        close(fig)
    return path


def close(fig: Figure) -> None:
    plt.close(fig)
