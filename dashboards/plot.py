"""Scale-against-bounds figures (matplotlib): one run's scales, or several runs side by side.

Each scale gets a panel (the scale against its min/max and warning lines, alerts
marked) and, under it, a gradient strip: the raw parameter's gradient on a
symlog axis, shaded where the raw parameter is outside the bounds. That is
where a hard clamp cuts the gradient to exactly zero, and the strip shows the
line lying flat on zero there.

A per-head scale (elements ``TENSOR[i]``) gets one panel per tensor: the band its
heads span (min..max across heads at each step), the heads that alerted drawn on
their own and named in the legend; its strip shows the band of their gradients.
A one-sided scale draws only the bound it has; a scale watched with
``display="exp"`` is drawn as exp(value), its bounds and warning lines too, while
the gradient stays in raw units.

Panels are laid out at fixed sizes (no tight_layout pass), so the end-of-fit
plot costs the same whatever the labels say.
"""
from __future__ import annotations

import math
import os
import textwrap
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import matplotlib

matplotlib.use("Agg")  # plots are files and logger images; never needs a screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullLocator  # noqa: E402

from scalewatch.dashboards.history_columns import HistoryColumns  # noqa: E402
from scalewatch.dashboards.series import (ScaleBounds, ScaleSeries, attention_label, collect_series,  # noqa: E402
                                          never_negative)
from scalewatch.dashboards.thinning import MAX_DRAWN_POINTS, band_envelope, envelope  # noqa: E402,F401
from scalewatch.dashboards.tensor_series import (TensorSeries, element_label, group_series,  # noqa: E402
                                                 outside_mask, rank, shown_values, values)
from scalewatch.monitor.display import IDENTITY  # noqa: E402
from scalewatch.monitor.rules import DEFAULT_MAX_PLOT_PANELS  # noqa: E402

if TYPE_CHECKING:
    from scalewatch.dashboards.compare import Comparison

#: alerted elements of a per-head tensor drawn (and named) on their own, at most
MAX_NAMED_ELEMENTS = 8

HistorySource = Union[str, os.PathLike, Iterable[Dict[str, Any]]]

ALERT_STYLE = {"near_upper": ("^", "tab:red"), "near_lower": ("v", "tab:purple"),
               "pinned": ("X", "black"), "non_finite": ("*", "tab:orange")}
#: the shading of steps where the raw parameter is outside [min, max]
OUTSIDE_LABEL = "raw outside [min, max]"
#: the same for a per-head tensor: any of its elements
OUTSIDE_ANY_LABEL = "raw of any element outside [min, max]"
OUTSIDE_COLOR = "tab:red"
GRADIENT_COLOR = "tab:green"

# Layout, in inches: [title, scale panel, gap, gradient strip, gap] per scale.
_WIDTH, _LEFT, _AXES_WIDTH = 10.8, 0.95, 6.9
_TITLE, _PANEL, _STRIP_GAP, _STRIP, _PAIR_GAP = 0.3, 2.3, 0.1, 0.95, 0.3
_TOP, _BOTTOM = 0.4, 0.6


def outside_spans(s: Union[ScaleSeries, TensorSeries]) -> np.ndarray:
    """Step ranges ``[[start, end], ...]`` where the raw parameter was outside its hard bounds.

    Each reading stands for the steps halfway to its neighbours, so one reading
    outside gives a span of one reading interval and a run of them one span. For a
    tensor: where any of its elements was outside.
    """
    if isinstance(s, TensorSeries):
        outside, steps = s.outside_any(), s.steps
    else:
        outside, steps = outside_mask(s), values(s.steps)
    if not outside.any():
        return np.empty((0, 2))
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


def load_series(source: HistorySource, max_panels: Optional[int] = None) -> Tuple[List[TensorSeries], int]:
    """The tensors to draw (most at risk first) and how many were left out.

    A single-value scale is a tensor of one element. A history file is read with
    the column reader without gradients (:class:`HistoryColumns`); only the drawn
    tensors' gradients are read afterwards, so a thousand per-head tensors cost
    one pass over the file and the six drawn ones a few thousand lines.

    Args:
        source: a history ``.jsonl`` path, or an iterable of records.
        max_panels: how many tensors to keep (``None``: all).
    """
    columns: Optional[HistoryColumns] = None
    if isinstance(source, (str, os.PathLike)):
        columns = HistoryColumns(os.fspath(source), gradient=False)
        series = columns.series
    else:
        series = collect_series(source)
    ranked = rank(group_series(series.values()))
    chosen = ranked if max_panels is None else ranked[:max_panels]
    if columns is not None:
        columns.fill_gradient(e for t in chosen for e in t.elements)
    return chosen, len(ranked) - len(chosen)


def plot_history(source: HistorySource, *, max_panels: Optional[int] = DEFAULT_MAX_PLOT_PANELS, title: Optional[str] = None,
                 max_points: int = MAX_DRAWN_POINTS, gradient: bool = True) -> Figure:
    """Draw each watched scale over optimizer steps against its bounds.

    One panel per scale (per tensor for per-head scales): the effective scale, the
    raw parameter where it leaves the bounds, dashed min/max lines, dotted warning
    line(s), and markers where alerts fired; under it the gradient strip. With more
    tensors than ``max_panels`` it draws the ones closest to a bound (or alerted)
    and says in the title how many it left out.

    Args:
        source: a history ``.jsonl`` path, or an iterable of records.
        max_panels: how many tensors to draw at most (``None``: all).
        title: figure title; default names the run's scale count.
        max_points: points per line after min/max thinning (the record is untouched).
        gradient: draw the gradient strip under each panel.
    """
    series, left_out = load_series(source, max_panels)
    return plot_series(series, left_out, title=title, max_points=max_points, gradient=gradient)


def plot_series(series: Sequence[TensorSeries], left_out: int = 0, *, title: Optional[str] = None,
                max_points: int = MAX_DRAWN_POINTS, gradient: bool = True) -> Figure:
    """Draw tensors already loaded with :func:`load_series` (see :func:`plot_history`)."""
    head = title or "scalewatch: scale against its bounds"
    if left_out:
        head += f"\n{len(series)} closest to a bound shown, {left_out} more scale(s) left out"
    # no strip under a tensor that never had a gradient (attention statistics): it would stay empty
    strips = [gradient and not never_had_gradient(t) for t in series] or [gradient]
    fig, pairs = _figure(max(1, len(series)), strips, head)
    for (ax, strip), t in zip(pairs, series):
        if t.single:
            _draw_scale(ax, t.elements[0], max_points)
        else:
            _draw_tensor(ax, t, max_points)
        if strip is not None:
            draw_gradient_strip(strip, [(t, GRADIENT_COLOR, "gradient")], max_points)
    if not series:
        pairs[0][0].text(0.5, 0.5, "no readings yet", ha="center", va="center", transform=pairs[0][0].transAxes)
    return fig


def never_had_gradient(t: Union[ScaleSeries, TensorSeries]) -> bool:
    """True when every reading of ``t`` was recorded without a gradient (an attention statistic's)."""
    elements = t.elements if isinstance(t, TensorSeries) else [t]
    return bool(elements) and all(len(e) and len(e.no_grad) == len(e) and all(e.no_grad) for e in elements)


def _figure(panels: int, gradient: Union[bool, Sequence[bool]], title: str,
            footer: str = "") -> Tuple[Figure, List[Tuple[Axes, Optional[Axes]]]]:
    """A figure with a scale panel (and a gradient strip under it) per scale, all sharing the step axis.

    ``gradient``: whether the panels get a strip, for all at once or per panel.
    """
    strips = [gradient] * panels if isinstance(gradient, bool) else list(gradient)
    if len(strips) != panels:
        raise ValueError(f"`gradient` must say for each of the {panels} panels, got {len(strips)} values")
    top = _TOP + 0.2 * title.count("\n")
    bottom = _BOTTOM + 0.2 * (footer.count("\n") + 1 if footer else 0)
    height = (top + panels * (_TITLE + _PANEL) + sum(strips) * (_STRIP_GAP + _STRIP) + (panels - 1) * _PAIR_GAP
              + bottom)
    fig = plt.figure(figsize=(_WIDTH, height))
    pairs: List[Tuple[Axes, Optional[Axes]]] = []
    first: Optional[Axes] = None
    y = height - top
    for with_strip in strips:
        y -= _TITLE + _PANEL
        ax = fig.add_axes(_box(y, _PANEL, height), sharex=first)
        first = first or ax
        strip = None
        if with_strip:
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
    steps, scale = values(s.steps), shown_values(s, values(s.scale))
    x, y = envelope(steps, scale, max_points)
    ax.plot(x, y, color="tab:blue", lw=1.8, label=_shown_label(s, "scale") + " (effective)", zorder=3)
    shown = [scale, shown_values(s, np.array([s.min, s.max]))]
    outside = outside_mask(s)
    if outside.any():
        raw_outside = shown_values(s, np.where(outside, values(s.raw), np.nan))
        rx, ry = envelope(steps, raw_outside, max_points)
        ax.plot(rx, ry, color="tab:orange", lw=1.2, label=_shown_label(s, "raw parameter") + " (outside bounds)",
                zorder=2)
        shown.append(raw_outside)
    _bound_lines(ax, s)
    _alert_markers(ax, s, transform=lambda v: shown_values(s, v))
    everything = np.concatenate(shown)
    last = values(s.scale)[-1] if len(scale) else math.nan
    _finish_panel(ax, s, everything, f"{s.name}   last = {_last_text(s, last)}")


def _draw_tensor(ax: Axes, t: TensorSeries, max_points: int) -> None:
    """A per-head tensor: the band of its elements, the alerted ones on their own, bounds and alerts."""
    alerted = t.alerted
    n, named = t.element_count, min(len(alerted), MAX_NAMED_ELEMENTS)
    # the band of the elements not drawn on their own, so the alerted ones do not hide the rest
    steps, low, high = t.band("scale", leave_out=named)
    x, lo, hi = band_envelope(steps, shown_values(t, low), shown_values(t, high), max_points)
    ax.fill_between(x, lo, hi, color="tab:blue", alpha=0.22, lw=0, zorder=2,
                    label=_value_label(t) + f", min..max\nof {_band_members(n, named, t.members)}")
    for edge in (lo, hi):
        ax.plot(x, edge, color="tab:blue", lw=0.8, alpha=0.8, zorder=2)
    shown = [lo, hi, shown_values(t, np.array([t.min, t.max]))]
    for e, color in zip(alerted[:MAX_NAMED_ELEMENTS], element_colors()):
        ex, ey = envelope(values(e.steps), shown_values(t, values(e.scale)), max_points)
        kinds = ", ".join(dict.fromkeys(k for _, k, _ in e.alerts))
        ax.plot(ex, ey, color=color, lw=1.6, zorder=4, label=f"{element_label(e)}  {kinds}")
        outside = outside_mask(e)
        if outside.any():
            raw_outside = shown_values(t, np.where(outside, values(e.raw), np.nan))
            rx, ry = envelope(values(e.steps), raw_outside, max_points)
            ax.plot(rx, ry, color=color, lw=1.1, ls=(0, (1, 1.5)), zorder=3)
            shown.append(raw_outside)
        _alert_markers(ax, e, transform=lambda v: shown_values(t, v), legend=False)
        shown.append(ey)
    if any(outside_mask(e).any() for e in alerted[:MAX_NAMED_ELEMENTS]):
        ax.plot([], [], color="0.3", lw=1.1, ls=(0, (1, 1.5)),
                label=_shown_label(t, "raw") + " outside bounds (dotted)")
    if len(alerted) > MAX_NAMED_ELEMENTS:
        ax.plot([], [], " ", label=f"+{len(alerted) - MAX_NAMED_ELEMENTS} more alerted (scalewatch report)")
    _bound_lines(ax, t)
    for kind, (marker, color) in ALERT_STYLE.items():  # one legend entry per kind that fired
        if any(k == kind for e in alerted[:MAX_NAMED_ELEMENTS] for _, k, _ in e.alerts):
            ax.scatter([], [], marker=marker, s=90, color=color, edgecolors="white", linewidths=0.8,
                       label=f"alert: {kind}")
    _, low_all, high_all = t.band("scale")
    last = f"{t.shown(low_all[-1]):.4g}..{t.shown(high_all[-1]):.4g}"
    head = f"{t.name}   {n} {t.members}, {len(alerted)} alerted   last {last}"
    _finish_panel(ax, t, np.concatenate(shown), head)


def _band_members(n: int, named: int, members: str = "elements") -> str:
    """Which elements (or heads) a band spans: all ``n``, or the ones not drawn on their own."""
    return f"all {n} {members}" if named == 0 or named == n else f"the other {n - named} {members}"


def _value_label(b: ScaleBounds) -> str:
    """The y axis: the scale (as shown), or the softmax statistic an attention record holds."""
    if b.attention is not None:
        return attention_label(b.attention)
    return "scale" if b.display == IDENTITY else f"{b.display}(scale)"


def _finish_panel(ax: Axes, b: ScaleBounds, shown: np.ndarray, head: str) -> None:
    """Y range, title (with the range and display), axis label, grid, legend."""
    lo_hi = shown_values(b, np.array([b.min, b.max]))
    _y_range(ax, shown[np.isfinite(shown)], float(lo_hi[1] - lo_hi[0]))
    if never_negative(b.attention):  # the y axis starts just below 0
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, -0.04 * high), high)
    shown_as = "" if b.display == IDENTITY else f"   ({b.display} shown)"
    ax.set_title(f"{head}   {b.bounds_phrase()}{shown_as}", fontsize=10, loc="left")
    ax.set_ylabel(_value_label(b))
    ax.grid(alpha=0.3)
    _legend(ax)


def _shown_label(b: ScaleBounds, what: str) -> str:
    return what if b.display == IDENTITY else f"{b.display}({what})"


def _last_text(b: ScaleBounds, raw_value: float) -> str:
    """The last value as shown; with a display transform, its raw value after it."""
    if b.display == IDENTITY:
        return f"{raw_value:.4g}"
    return f"{b.shown(raw_value):.4g} (raw {raw_value:.4g})"


def element_colors() -> List[Any]:
    """Colours for the alerted elements drawn on their own: tab10 without the band's blue."""
    cmap = plt.get_cmap("tab10")
    return [cmap(i) for i in (3, 1, 2, 4, 5, 6, 8, 9)]


def _bound_lines(ax: Axes, s: ScaleBounds) -> None:
    """min/max (dashed) and the warning lines (dotted) that exist; a missing bound draws nothing.

    With a display transform the lines sit at the transformed values and their
    labels give the raw value too.
    """
    if s.display == IDENTITY:
        top = "threshold" if s.attention is not None else "max_scale"  # max_logit's bound is its threshold
        lines = [(s.max, dict(color="red", ls="--", lw=1.2), f"{top} = {s.max:g}"),
                 (s.min, dict(color="darkred", ls="--", lw=1.2), f"min_scale = {s.min:g}"),
                 (s.upper_warning, dict(color="goldenrod", ls=":", lw=1.3),
                  f"near_upper above {s.warn_fraction:g} x {'threshold' if s.attention else 'max'}"
                  f" = {s.upper_warning:.3g}"),
                 (s.lower_warning, dict(color="mediumpurple", ls=":", lw=1.1),
                  f"near_lower below {s.lower_warning:.3g}")]
    else:
        d = s.display
        lines = [(s.shown(s.max), dict(color="red", ls="--", lw=1.2),
                  f"max = {d}({s.max:.4g}) = {s.shown(s.max):.4g}"),
                 (s.shown(s.min), dict(color="darkred", ls="--", lw=1.2),
                  f"min = {d}({s.min:.4g}) = {s.shown(s.min):.4g}"),
                 (s.shown(s.upper_warning), dict(color="goldenrod", ls=":", lw=1.3),
                  f"near_upper above {d}({s.warn_fraction:g} x max) = {s.shown(s.upper_warning):.3g}"),
                 (s.shown(s.lower_warning), dict(color="mediumpurple", ls=":", lw=1.1),
                  f"near_lower below {d}({s.lower_warning:.3g}) = {s.shown(s.lower_warning):.3g}")]
    for value, style, label in lines:
        if math.isfinite(value):
            ax.axhline(value, label=label, **style)


def _alert_markers(ax: Axes, s: ScaleSeries, run_color: Any = None, transform: Optional[Callable[..., Any]] = None,
                   legend: bool = True) -> None:
    """A marker per alert at its step and scale (a non-finite scale: at the upper bound, or the top).

    The marker's shape says the kind; its colour too for one run, the run's colour
    when runs are compared (then without a legend entry each).
    """
    top = s.max if math.isfinite(s.max) else float(np.nanmax(np.where(np.isfinite(values(s.scale)),
                                                                       values(s.scale), np.nan), initial=-np.inf))
    for kind, (marker, kind_color) in ALERT_STYLE.items():
        pts = [(step, v if math.isfinite(v) else top) for step, k, v in s.alerts if k == kind]
        if pts:
            xs, ys = zip(*pts)
            ys = ys if transform is None else transform(np.asarray(ys))
            ax.scatter(xs, ys, marker=marker, s=90, zorder=5, linewidths=0.8,
                       color=kind_color if run_color is None else run_color,
                       edgecolors="white" if run_color is None else "black",
                       label=f"alert: {kind}" if run_color is None and legend else None)


def _y_range(ax: Axes, shown: np.ndarray, span: float) -> None:
    """Room for everything shown, with a margin of 8% of the bounds' span."""
    if shown.size == 0:
        return
    pad = 0.08 * (span if math.isfinite(span) and span > 0 else max(1.0, float(np.ptp(shown))))
    ax.set_ylim(float(shown.min()) - pad, float(shown.max()) + pad)


def _legend(ax: Axes) -> None:
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)


# ---- the gradient strip ------------------------------------------------------------------


def draw_gradient_strip(ax: Axes, entries: Sequence[Tuple[Union[ScaleSeries, TensorSeries], Any, str]],
                        max_points: int = MAX_DRAWN_POINTS) -> None:
    """Each series' gradient on a symlog axis, its raw-outside-bounds steps shaded.

    A per-head tensor draws the band of its elements' gradients (min..max across
    them), its alerted elements' gradients as lines when it is alone on the strip,
    and shades where any element's raw parameter is outside the bounds. With
    several series (runs compared), each gets its own band of the strip's height
    for its shading, in its colour, so the spans of different runs never overlap.
    Gradients are always in raw (optimizer) units, whatever the panel's display.

    Args:
        ax: the strip's axes.
        entries: ``(series, colour, label)`` per run; a series read without its
            gradient draws nothing (the strip says so).
        max_points: points per line after min/max thinning.
    """
    def as_tensor(s: Union[ScaleSeries, TensorSeries]) -> TensorSeries:
        return s if isinstance(s, TensorSeries) else TensorSeries.of(s.name, [s])

    drawn = [(as_tensor(s), color, label) for s, color, label in entries]
    drawn = [(t, color, label) for t, color, label in drawn if t.has_gradient and len(t)]
    grads = [np.concatenate([values(e.grad) for e in t.elements]) for t, _, _ in drawn]
    linthresh, top = _symlog_range(np.concatenate(grads) if grads else np.empty(0))
    ax.set_yscale("symlog", linthresh=linthresh, linscale=1.0)
    ax.set_ylim(-top, top)
    ax.axhline(0.0, color="0.35", lw=0.8, zorder=1)
    x_span = max((float(t.steps[-1] - t.steps[0]) for t, _, _ in drawn), default=0.0)
    band = 1.0 / max(1, len(drawn))
    single = len(drawn) == 1
    shade_label = OUTSIDE_LABEL if single else OUTSIDE_LABEL + ", in the run's colour"
    zeros = []
    for i, ((t, color, label), g) in enumerate(zip(drawn, grads)):
        zero = int(np.count_nonzero(g == 0.0))
        zeros += [f"{label} {zero}/{len(g)}"] if zero else []
        if t.single:
            x, y = envelope(values(t.elements[0].steps), g, max_points)
            ax.plot(x, y, color=color, lw=1.3, zorder=3,
                    label=f"{label} ({_zero_share(zero, len(g))})" if single else None)
        else:
            named = min(len(t.alerted), MAX_NAMED_ELEMENTS)
            _gradient_band(ax, t, color, max_points,
                           f"{label}, min..max of\n{_band_members(t.element_count, named)}\n"
                           f"(all: {_zero_share(zero, len(g))})" if single else None)
        spans = _merge_close(outside_spans(t), x_span / max_points)
        if len(spans):
            what = OUTSIDE_ANY_LABEL if single and not t.single else shade_label
            ax.broken_barh([(a, b - a) for a, b in spans], (1.0 - (i + 1) * band, band),
                           transform=ax.get_xaxis_transform(), facecolors=OUTSIDE_COLOR if len(drawn) == 1 else color,
                           alpha=0.18, zorder=0, label=what)
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
    transformed = any(t.display != IDENTITY for t, _, _ in drawn)
    ax.set_ylabel("gradient, raw\nunits (symlog)" if transformed else "gradient\n(symlog)", fontsize=8)
    ax.grid(alpha=0.25)
    _legend(ax)


def _gradient_band(ax: Axes, t: TensorSeries, color: Any, max_points: int, label: Optional[str]) -> None:
    """A tensor's gradients: the band across its elements; alone on the strip, its alerted elements as lines."""
    named = min(len(t.alerted), MAX_NAMED_ELEMENTS) if label is not None else 0
    steps, low, high = t.band("grad", leave_out=named)
    x, lo, hi = band_envelope(steps, low, high, max_points)
    ax.fill_between(x, lo, hi, color=color, alpha=0.3, lw=0, zorder=2, label=label)
    if label is not None:
        for e, c in zip(t.alerted[:named], element_colors()):
            ex, ey = envelope(values(e.steps), values(e.grad), max_points)
            ax.plot(ex, ey, color=c, lw=1.2, zorder=3)


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
                 max_panels: Optional[int] = DEFAULT_MAX_PLOT_PANELS, title: Optional[str] = None,
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
    colors = run_colors(len(runs))
    panels = [[(TensorSeries.of(name, r.tensor_series(name)), color, r.label) for r, color in zip(runs, colors)]
              for name in names]
    strips = [gradient and not all(never_had_gradient(t) for t, _, _ in mine) for mine in panels] or [gradient]
    fig, pairs = _figure(max(1, len(names)), strips, head, footer="\n".join(notes))
    for (ax, strip), name, mine in zip(pairs, names, panels):
        _draw_compare_panel(ax, name, mine, normalise, max_points)
        if strip is not None:
            draw_gradient_strip(strip, mine, max_points)
    if not names:
        pairs[0][0].text(0.5, 0.5, "no scale is in every run", ha="center", va="center",
                         transform=pairs[0][0].transAxes)
    return fig


def _draw_compare_panel(ax: Axes, name: str, entries: Sequence[Tuple[TensorSeries, Any, str]], normalise: bool,
                        max_points: int) -> None:
    """Each run's scale (a per-head tensor: the band of its elements, its alerted ones dashed) in the run's colour."""
    shown: List[np.ndarray] = []
    kinds = set()
    for t, color, label in entries:
        to_y = normaliser(t) if normalise else (lambda v, t=t: shown_values(t, v))
        if t.single:
            s = t.elements[0]
            x, y = envelope(values(s.steps), to_y(values(s.scale)), max_points)
            last = f"{t.shown(values(s.scale)[-1]):.3g}"
            ax.plot(x, y, color=color, lw=1.7, zorder=3, label=f"{label}  {t.bounds_text()}  last {last}")
            shown.append(y[np.isfinite(y)])
        else:
            _, low_all, high_all = t.band("scale")
            last = f"{t.shown(low_all[-1]):.3g}..{t.shown(high_all[-1]):.3g}"
            named = min(len(t.alerted), MAX_NAMED_ELEMENTS)
            steps, low, high = t.band("scale", leave_out=named)  # the alerted ones are drawn on their own
            x, lo, hi = band_envelope(steps, to_y(low), to_y(high), max_points)
            ax.fill_between(x, lo, hi, color=color, alpha=0.25, lw=0, zorder=2,
                            label=f"{label}  {t.bounds_text()}  last {last}\n"
                                  f"  band: {_band_members(t.element_count, named, t.members)}")
            for edge in (lo, hi):  # a band of no height still shows
                ax.plot(x, edge, color=color, lw=1.0, zorder=2)
            shown += [lo[np.isfinite(lo)], hi[np.isfinite(hi)]]
            for e in t.alerted[:named]:
                ex, ey = envelope(values(e.steps), to_y(values(e.scale)), max_points)
                ax.plot(ex, ey, color=color, lw=1.4, ls="--", zorder=3)
        if not normalise:
            for bound in shown_values(t, np.array([t.min, t.max])):
                if math.isfinite(bound):
                    ax.axhline(bound, color=color, ls="--", lw=1.1, alpha=0.75, zorder=2)
            shown.append(shown_values(t, np.array([t.min, t.max])))
        for e in t.elements:
            _alert_markers(ax, e, run_color=color, transform=to_y)
            kinds.update(k for _, k, _ in e.alerts)
    if any(not t.single and t.alerted for t, _, _ in entries):
        ax.plot([], [], color="0.3", lw=1.4, ls="--", label="alerted elements (dashed, run's colour)")
    if normalise:
        for bound in (0.0, 1.0):
            ax.axhline(bound, color="black", ls="--", lw=1.1, label=None if bound else "bounds: min = 0, max = 1")
        shown.append(np.array([0.0, 1.0]))
        ax.set_ylabel("(scale - min) / (max - min)", fontsize=9)
    else:
        ax.plot([], [], color="0.3", ls="--", lw=1.1, label="each run's min / max (dashed)")
        displays = {t.display for t, _, _ in entries}
        ax.set_ylabel("scale" if displays == {IDENTITY} else f"{'/'.join(sorted(displays))}(scale)")
    for kind in ALERT_STYLE:  # one legend entry per alert kind that fired, in neutral grey
        if kind in kinds:
            ax.scatter([], [], marker=ALERT_STYLE[kind][0], s=70, color="0.6", edgecolors="black", linewidths=0.8,
                       label=f"alert: {kind}")
    allv = np.concatenate(shown) if shown else np.empty(0)
    _y_range(ax, allv[np.isfinite(allv)], float(np.ptp(allv[np.isfinite(allv)])) if allv.size else math.nan)
    ax.set_title(name + ("" if entries[0][0].single else f"   ({entries[0][0].element_count} elements)"),
                 fontsize=10, loc="left")
    ax.grid(alpha=0.3)
    _legend(ax)


def normaliser(b: ScaleBounds) -> Callable[[np.ndarray], np.ndarray]:
    """Raw-unit values to a share of the bounds: 0 at min, 1 at max.

    One-sided: 1 at the upper bound, ``1 - distance / max(|max|, 1)`` below it; or
    0 at the lower bound, ``distance / max(|min|, 1)`` above it (the distance
    measure of :func:`~scalewatch.dashboards.series.closeness`).
    """
    lo, hi = b.min, b.max
    if math.isfinite(lo) and math.isfinite(hi):
        return lambda v: (v - lo) / (hi - lo)
    if math.isfinite(hi):
        return lambda v: 1.0 - (hi - v) / max(abs(hi), 1.0)
    return lambda v: (v - lo) / max(abs(lo), 1.0)


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
