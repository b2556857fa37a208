"""Scale-against-bounds plots (matplotlib) from a history file or records."""
from __future__ import annotations

import math
import os
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import matplotlib

matplotlib.use("Agg")  # plots are files and logger images; never needs a screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from scalewatch.dashboards.series import ScaleRanking, ScaleSeries, collect_series  # noqa: E402
from scalewatch.monitor.history import iter_history  # noqa: E402

#: points drawn per line at most; the record itself is never thinned
MAX_DRAWN_POINTS = 2000

HistorySource = Union[str, os.PathLike, Iterable[Dict[str, Any]]]

_ALERT_STYLE = {"near_upper": ("^", "tab:red"), "near_lower": ("v", "tab:purple"),
                "pinned": ("X", "black"), "non_finite": ("*", "tab:orange")}


def envelope(x: np.ndarray, y: np.ndarray, max_points: int = MAX_DRAWN_POINTS) -> Tuple[np.ndarray, np.ndarray]:
    """Thin a line for drawing, keeping each bucket's min and max so spikes stay visible."""
    n = len(x)
    if n <= max_points:
        return x, y
    buckets = max_points // 2
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)
    starts = edges[:-1]
    idx_min = np.empty(buckets, dtype=np.int64)
    idx_max = np.empty(buckets, dtype=np.int64)
    yy = np.where(np.isfinite(y), y, np.nan)
    for b, (s, e) in enumerate(zip(starts, edges[1:])):
        seg = yy[s:e]
        if np.all(np.isnan(seg)):
            idx_min[b] = idx_max[b] = s
        else:
            idx_min[b] = s + int(np.nanargmin(seg))
            idx_max[b] = s + int(np.nanargmax(seg))
    idx = np.unique(np.concatenate([idx_min, idx_max]))
    return x[idx], y[idx]


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
                 max_points: int = MAX_DRAWN_POINTS) -> Figure:
    """Draw each watched scale over optimizer steps against its bounds.

    One panel per scale: the effective scale, the raw parameter where it leaves
    the bounds, dashed min/max lines, dotted warning line(s), and markers where
    alerts fired. With more scales than ``max_panels`` it draws the ones closest
    to a bound (or alerted) and says in the title how many it left out.

    Args:
        source: a history ``.jsonl`` path, or an iterable of records.
        max_panels: how many scales to draw at most (``None``: all).
        title: figure title; default names the run's scale count.
        max_points: points per line after min/max thinning (the record is untouched).
    """
    series, left_out = load_series(source, max_panels)
    return plot_series(series, left_out, title=title, max_points=max_points)


def plot_series(series: List[ScaleSeries], left_out: int = 0, *, title: Optional[str] = None,
                max_points: int = MAX_DRAWN_POINTS) -> Figure:
    """Draw series already loaded with :func:`load_series` (see :func:`plot_history`)."""
    panels = max(1, len(series))
    fig, axes = plt.subplots(panels, 1, figsize=(10, 2.8 * panels + 0.6), sharex=True, squeeze=False)
    for ax, s in zip(axes[:, 0], series):
        _draw_panel(ax, s, max_points)
    if not series:
        axes[0, 0].text(0.5, 0.5, "no readings yet", ha="center", va="center", transform=axes[0, 0].transAxes)
    axes[-1, 0].set_xlabel("optimizer step")
    head = title or "scalewatch: scale against its bounds"
    if left_out:
        head += f"\n{len(series)} closest to a bound shown, {left_out} more scale(s) left out"
    fig.suptitle(head, fontsize=12)
    fig.tight_layout()
    return fig


def _draw_panel(ax: Any, s: ScaleSeries, max_points: int) -> None:
    steps = np.frombuffer(s.steps, dtype=np.float64)
    scale = np.frombuffer(s.scale, dtype=np.float64)
    raw = np.frombuffer(s.raw, dtype=np.float64)
    x, y = envelope(steps, scale, max_points)
    ax.plot(x, y, color="tab:blue", lw=1.8, label="scale (effective)", zorder=3)
    outside = (raw > s.max) | (raw < s.min)
    if s.bound == "hard" and np.any(outside):
        raw_shown = np.where(outside, raw, np.nan)
        rx, ry = envelope(steps, raw_shown, max_points)
        ax.plot(rx, ry, color="tab:orange", lw=1.2, ls="-", label="raw parameter (outside bounds)", zorder=2)
    ax.axhline(s.max, color="red", ls="--", lw=1.2, label=f"max_scale = {s.max:g}")
    ax.axhline(s.min, color="darkred", ls="--", lw=1.2, label=f"min_scale = {s.min:g}")
    ax.axhline(s.upper_warning, color="goldenrod", ls=":", lw=1.3,
               label=f"near_upper above {s.warn_fraction:g} x max = {s.upper_warning:.3g}")
    ax.axhline(s.lower_warning, color="mediumpurple", ls=":", lw=1.1, label=f"near_lower below {s.lower_warning:.3g}")
    for kind in _ALERT_STYLE:
        pts = [(st, v) for st, k, v in s.alerts if k == kind]
        if pts:
            marker, color = _ALERT_STYLE[kind]
            ys = [v if math.isfinite(v) else s.max for _, v in pts]
            ax.scatter([p[0] for p in pts], ys, marker=marker, s=90, color=color, zorder=5,
                       edgecolors="white", linewidths=0.8, label=f"alert: {kind}")
    span = s.max - s.min
    finite_raw = raw[np.isfinite(raw)]
    top = max(s.max, float(finite_raw.max()) if finite_raw.size else s.max)
    bottom = min(s.min, float(finite_raw.min()) if finite_raw.size else s.min)
    ax.set_ylim(bottom - 0.08 * span, top + 0.08 * span)
    last = scale[-1] if len(scale) else math.nan
    ax.set_title(f"{s.name}   last = {last:.4g}   range [{s.min:g}, {s.max:g}]", fontsize=10, loc="left")
    ax.set_ylabel("scale")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)


def save_plot(source: HistorySource, path: str, **kwargs: Any) -> str:
    """Draw ``source`` and write it to ``path`` (PNG, or what the suffix says)."""
    fig = plot_history(source, **kwargs)
    try:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    finally:
        close(fig)
    return path


def close(fig: Figure) -> None:
    plt.close(fig)
