"""The plot: many scales, long histories, alert markers, odd values."""
import json
import math

import numpy as np
import pytest

from scalewatch.dashboards.plot import MAX_DRAWN_POINTS, close, envelope, load_series, plot_history, save_plot


def record(step, name, scale, raw=None, grad=0.1, lo=0.5, hi=5.0, alerts=()):
    return dict(step=step, name=name, scale=scale, raw=scale if raw is None else raw, grad=grad, min=lo, max=hi,
                bound="hard", clamp_fraction=None, warn_fraction=0.9, alerts=list(alerts))


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
        assert len(fig.axes) == 6
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
