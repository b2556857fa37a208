"""The plot: many scales, long histories, alert markers, odd values, the gradient strip."""
import json
import math

import numpy as np
import pytest

from scalewatch.dashboards.plot import (MAX_DRAWN_POINTS, OUTSIDE_LABEL, close, envelope, load_series, outside_spans,
                                        plot_history, save_plot)
from scalewatch.dashboards.series import collect_series


def record(step, name, scale, raw=None, grad=0.1, lo=0.5, hi=5.0, alerts=(), bound="hard"):
    return dict(step=step, name=name, scale=scale, raw=scale if raw is None else raw, grad=grad, min=lo, max=hi,
                bound=bound, clamp_fraction=None, warn_fraction=0.9, alerts=list(alerts))


def write(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def test_many_scales_draw_the_closest_to_a_bound_and_say_how_many_were_left_out(tmp_path):
    recs = []
    for i in range(1000):
        near = i in (17, 503)
        for step in range(0, 50, 10):
            recs.append(record(step, f"layer{i}.gen", 4.95 if near else 2.5 + 0.001 * i,
                               alerts=["near_upper"] if near and step == 10 else ()))
    path = write(tmp_path / "h.jsonl", recs)
    series, left_out = load_series(path, max_panels=6)
    assert left_out == 994
    assert [s.name for s in series][:2] == ["layer17.gen", "layer503.gen"]  # alerted first
    fig = plot_history(path, max_panels=6)
    try:
        assert len(fig.axes) == 12 and len(strips(fig)) == 6  # a gradient strip under each of the 6 panels
        assert "994 more scale(s) left out" in fig._suptitle.get_text()
    finally:
        close(fig)


def test_long_history_is_thinned_for_drawing_only(tmp_path):
    n = 200_000
    recs = (record(s, "g", 2.5 + math.sin(s / 1000.0), grad=0.0) for s in range(n))
    path = write(tmp_path / "long.jsonl", recs)
    series, _ = load_series(path)
    assert len(series[0]) == n  # the record is complete
    fig = plot_history(path)
    try:
        line = fig.axes[0].lines[0]
        assert len(line.get_xdata()) <= MAX_DRAWN_POINTS
        assert max(line.get_ydata()) == pytest.approx(3.5, abs=1e-3) and min(line.get_ydata()) == pytest.approx(1.5, abs=1e-3)
    finally:
        close(fig)


def test_envelope_keeps_spikes():
    x = np.arange(100_000, dtype=float)
    y = np.zeros_like(x)
    y[54_321] = 9.0
    y[77_777] = -3.0
    tx, ty = envelope(x, y, 500)
    assert len(tx) <= 500 and ty.max() == 9.0 and ty.min() == -3.0 and 54_321 in tx


def test_alerts_raw_outside_bounds_and_non_finite_values_are_drawn(tmp_path):
    recs = [record(0, "g", 4.0), record(1, "g", 4.6, alerts=["near_upper"]), record(2, "g", 5.0, raw=5.4, grad=0.0),
            record(3, "g", 5.0, raw=5.4, grad=0.0, alerts=["pinned"]),
            record(4, "g", float("nan"), raw=float("nan"), grad=float("inf"), alerts=["non_finite"])]
    out = save_plot(recs, str(tmp_path / "p.png"))
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    fig = plot_history(recs)
    try:
        labels = fig.axes[0].get_legend_handles_labels()[1]
        for expected in ("scale (effective)", "raw parameter (outside bounds)", "max_scale = 5", "min_scale = 0.5",
                         "alert: near_upper", "alert: pinned", "alert: non_finite"):
            assert any(lbl.startswith(expected) for lbl in labels), (expected, labels)
    finally:
        close(fig)


def test_empty_history_gives_a_figure_that_says_so():
    fig = plot_history([])
    try:
        assert "no readings yet" in fig.axes[0].texts[0].get_text()
    finally:
        close(fig)


# ---- the gradient strip ------------------------------------------------------------------


def strips(fig):
    return [ax for ax in fig.axes if ax.get_yscale() == "symlog"]


def shaded(strip):
    bars = [c for c in strip.collections if c.get_label() == OUTSIDE_LABEL]
    return [(p.vertices[:, 0].min(), p.vertices[:, 0].max()) for c in bars for p in c.get_paths()]


def clamped(step, raw, lo=0.5, hi=5.0):
    """A hard-clamped reading: outside the bounds the clamp leaves a gradient of exactly zero."""
    if raw != raw:
        return record(step, "g", raw, raw=raw, grad=raw, lo=lo, hi=hi)
    inside = lo <= raw <= hi
    return record(step, "g", min(max(raw, lo), hi), raw=raw, grad=(1e-3 if step % 2 else -2e-5) if inside else 0.0,
                  lo=lo, hi=hi)


def test_strip_shades_exactly_the_steps_where_raw_is_outside_the_bounds():
    # above max at 10-19, below min at 40-41, above at the last reading; NaN raw at 60 is unknown, not outside;
    # from step 70 the max is 8, so raw 6 at 65-75 is outside only until then
    def raw_at(step):
        if 10 <= step <= 19 or 65 <= step <= 75:
            return 6.0
        return {40: 0.2, 41: 0.2, 60: float("nan"), 99: 9.0}.get(step, 2.5)

    recs = [clamped(step, raw_at(step), hi=5.0 if step < 70 else 8.0) for step in range(100)]
    fig = plot_history(recs)
    try:
        panel, strip = fig.axes
        assert strip.get_yscale() == "symlog" and panel.get_yscale() == "linear"
        assert strip.get_shared_x_axes().joined(strip, panel)
        spans = shaded(strip)
        outside = [r["step"] for r in recs if r["raw"] > r["max"] or r["raw"] < r["min"]]
        inside = [r["step"] for r in recs if r["step"] not in outside]
        assert len(spans) == 4  # 10-19, 40-41, 65-69, 99
        assert all(any(a <= s <= b for a, b in spans) for s in outside)
        assert not any(a <= s <= b for a, b in spans for s in inside)
        (line,) = [ln for ln in strip.get_lines() if ln.get_label().startswith("gradient")]
        assert np.array_equal(line.get_ydata(), [r["grad"] for r in recs], equal_nan=True)
        assert f"exactly 0 at {len(outside)} of 100 readings" in line.get_label()
        low, high = strip.get_ylim()
        assert low == -high and high >= 1e-3  # zero in the middle, the largest gradient inside
    finally:
        close(fig)


def test_outside_spans_are_none_for_soft_bounds_or_without_raw_values():
    soft = [record(s, "g", 4.9, raw=9.0, bound="soft") for s in range(5)]
    (series,) = collect_series(soft).values()
    assert outside_spans(series).shape == (0, 2)
    fig = plot_history(soft)
    try:
        assert shaded(strips(fig)[0]) == []
    finally:
        close(fig)


def test_gradient_strip_can_be_left_out():
    recs = [clamped(s, 6.0) for s in range(5)]
    fig = plot_history(recs, gradient=False)
    try:
        assert len(fig.axes) == 1 and strips(fig) == []
    finally:
        close(fig)
