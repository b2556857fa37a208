"""The dashboards with per-head scales, one-sided bounds and the exp display, on real runs.

Real models: timm's Swin V2 (random init, its 12 per-head ``attn.logit_scale`` tensors,
one pattern, a one-sided bound, shown as exp; one head forced past ln 100 so it is
pinned) and open_clip's CLIP through examples/plain_loop.py (``logit_scale`` shown as
the temperature exp(value)). A synthetic 1000-tensor x 16-head history stands in
for a run of that size.
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Dict, List

import numpy as np
import pytest
import torch
from torch import nn

from per_head_history import tensor_name, write_per_head_history
from scalewatch.callbacks import ScaleWatcher
from scalewatch.dashboards.cli import main
from scalewatch.dashboards.compare import compare_runs, comparison_json, comparison_text
from scalewatch.dashboards.history_columns import HistoryColumns, read_series
from scalewatch.dashboards.plot import close, load_series, plot_compare, plot_history
from scalewatch.dashboards.series import collect_series
from scalewatch.dashboards.sources import records_from_logged
from scalewatch.monitor import HISTORY_FILENAME, iter_history

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
sys.path.insert(0, EXAMPLES)

import plain_loop  # noqa: E402

LN100 = math.log(100)
PATTERN = "*.attn.logit_scale"
FORCED = "layers.0.blocks.0.attn.logit_scale"
SWIN_TENSORS = 12
SWIN_HEADS = 138


def swin_run(root: str, seed: int, optimizer: str) -> str:
    """A few steps of a random-init Swin V2 watched through one pattern; head 1 of FORCED starts past the cap."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("swinv2_tiny_window8_256", pretrained=False, img_size=64, num_classes=4)
    with torch.no_grad():  # Swin V2 clamps logit_scale in forward: this head's gradient is cut, it stays there
        model.get_parameter(FORCED)[1] = LN100 + 0.5
    opt = (torch.optim.SGD(model.parameters(), lr=0.01) if optimizer == "sgd"
           else torch.optim.AdamW(model.parameters(), lr=0.02))
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    with ScaleWatcher(model, log_dir=root, every_n_steps=1, params={PATTERN: {"max": LN100, "display": "exp"}},
                      plot=False) as watcher:
        for step in range(4):
            nn.functional.cross_entropy(model(images), labels).backward()
            watcher.step(step)
            opt.step()
            opt.zero_grad()
    return root


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train faster on one thread, and far faster than two on a busy two-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def swin(tmp_path_factory, one_thread) -> Dict[str, str]:
    root = tmp_path_factory.mktemp("swin")
    return {"sgd": swin_run(str(root / "sgd"), 0, "sgd"), "adamw": swin_run(str(root / "adamw"), 1, "adamw")}


@pytest.fixture(scope="module")
def clip(tmp_path_factory, one_thread) -> Dict[str, Any]:
    root = str(tmp_path_factory.mktemp("clip"))
    out = plain_loop.train(root, steps=60, every_n_steps=10, tensorboard=False)
    return dict(root=root, out=out, history=list(iter_history(os.path.join(root, HISTORY_FILENAME))))


def history_of(run_dir: str) -> str:
    return os.path.join(run_dir, HISTORY_FILENAME)


def run_cli(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def panels(fig) -> List[Any]:
    return [ax for ax in fig.axes if ax.get_yscale() == "linear"]


def strips(fig) -> List[Any]:
    return [ax for ax in fig.axes if ax.get_yscale() == "symlog"]


def labels(ax) -> List[str]:
    return ax.get_legend_handles_labels()[1]


def bound_lines(ax) -> Dict[str, float]:
    """Horizontal lines by label: the bound and warning lines."""
    return {ln.get_label(): ln.get_ydata()[0] for ln in ax.get_lines() if len(ln.get_ydata()) == 2
            and ln.get_ydata()[0] == ln.get_ydata()[1] and not ln.get_label().startswith("_")}


# ---- Swin V2: one panel per tensor, band, pinned head ----------------------------------------


def test_swin_v2_plot_draws_one_panel_per_tensor_with_the_band_and_the_pinned_head(swin):
    fig = plot_history(history_of(swin["sgd"]), max_panels=None)
    try:
        assert len(panels(fig)) == SWIN_TENSORS and len(strips(fig)) == SWIN_TENSORS
        first = panels(fig)[0]  # alerted first
        assert first.get_title("left").startswith(f"{FORCED}   3 elements, 1 alerted")
        assert "range (0, 100]" in first.get_title("left") and first.get_ylabel() == "exp(scale)"
        (band,) = [c for c in first.collections if c.get_label().startswith("exp(scale), min..max")]
        assert "the other 2 elements" in band.get_label()
        heights = band.get_paths()[0].vertices[:, 1]
        assert heights.min() == pytest.approx(10.0, rel=1e-3) and heights.max() == pytest.approx(10.0, rel=1e-3)
        (pinned,) = [ln for ln in first.get_lines() if ln.get_label().startswith("[1]")]
        assert pinned.get_label() == "[1]  near_upper, pinned"
        assert np.allclose(pinned.get_ydata(), 100.0, rtol=1e-5)  # clamped at ln 100, shown as exp
        # one-sided: the upper bound and its warning line, nothing for the missing lower side
        lines = bound_lines(first)
        assert set(lines) == {"max = exp(4.605) = 100", "near_upper above exp(0.9 x max) = 63.1"}
        assert "alert: pinned" in labels(first) and "alert: near_upper" in labels(first)
        strip = strips(fig)[0]
        assert any(lbl.startswith("gradient, min..max of\nthe other 2 elements") for lbl in labels(strip))
        assert "raw of any element outside [min, max]" in labels(strip)  # the forced head sits past the cap
        assert strip.get_ylabel().startswith("gradient, raw")
        quiet = panels(fig)[1]
        assert not any(ln.get_label().startswith("[") for ln in quiet.get_lines())
        assert any(c.get_label().endswith("all 3 elements") for c in quiet.collections)
    finally:
        close(fig)


def test_max_panels_counts_tensors_not_heads(swin):
    tensors, left_out = load_series(history_of(swin["sgd"]), max_panels=4)
    assert len(tensors) == 4 and left_out == SWIN_TENSORS - 4
    assert tensors[0].name == FORCED and sum(len(t.elements) for t in tensors) < SWIN_HEADS
    assert all(t.has_gradient for t in tensors)  # the drawn tensors' gradients were read after ranking


def test_swin_v2_report_has_a_row_per_tensor_and_the_pinned_head(swin, capsys):
    text = run_cli(capsys, "report", swin["sgd"])
    rows = [ln for ln in text.splitlines() if ln.startswith("layers.")]
    assert len(rows) == SWIN_TENSORS and rows[0].startswith(f"{FORCED} (exp)")
    assert rows[0].split()[2:5] == ["3", "12", "10..100"]  # elements, readings, last across elements
    assert "(0, 100]" in rows[0] and ">63.1" in rows[0]
    heads = [ln for ln in text.splitlines() if ln.startswith("  [")]
    assert len(heads) == 1 and heads[0].split()[0] == "[1]" and " yes " in heads[0]
    assert f"pinned      {FORCED}[1]  scale=100 (raw 4.605)" in text
    assert "near_lower" not in text.split("alerts (")[1].split("near bound:")[0]


def test_swin_v2_report_json_names_the_pinned_head_by_index(swin, capsys):
    data = json.loads(run_cli(capsys, "report", swin["sgd"], "--json"))
    scales = {s["name"]: s for s in data["scales"]}
    assert len(scales) == SWIN_TENSORS and data["readings"] == 4 * SWIN_HEADS
    forced = scales[FORCED]
    assert forced["element_count"] == 3 and forced["pinned_now"] == 1
    assert [(e["index"], e["name"], e["pinned_now"]) for e in forced["elements"]] == [(1, f"{FORCED}[1]", True)]
    assert [(a["step"], a["kind"], a["index"]) for a in forced["alerts"]] == [(0, "near_upper", 1), (2, "pinned", 1)]
    for s in scales.values():  # one-sided: no min, no lower warning, nothing counted near it
        assert s["min"] is None and s["lower_warning"] is None and s["near_bound"]["lower"] == 0
        assert s["display"] == "exp" and s["max"] == pytest.approx(100.0)
        assert s["raw_units"]["max"] == pytest.approx(LN100)
    assert forced["last"]["raw_max"] == pytest.approx(LN100 + 0.5)  # raw stays in raw units
    assert [(a["name"], a["kind"]) for a in data["alerts"]] == [(f"{FORCED}[1]", "near_upper"),
                                                               (f"{FORCED}[1]", "pinned")]


def test_watch_shows_a_line_per_tensor(swin, capsys):
    out = run_cli(capsys, "watch", swin["sgd"], "--once", "--plain")
    lines = [ln for ln in out.splitlines() if ln.startswith("step 3  ")]
    assert len(lines) == SWIN_TENSORS
    assert lines[0].startswith(f"step 3  {FORCED} (3 elements)  scale=10..100 (exp)")
    assert lines[0].endswith("[1] NEAR MAX [1] PINNED") and "raw>max" in lines[0]
    assert f"ALERT step 2  pinned  {FORCED}[1]  scale=100 (raw 4.605)  range (0, 100]" in out


def test_compare_of_two_per_head_runs_is_per_tensor(swin, capsys):
    comparison = compare_runs([swin["sgd"], swin["adamw"]], gradient=True)
    assert len(comparison.shared) == SWIN_TENSORS and comparison.shared[0] == FORCED
    text = comparison_text(comparison)
    assert f"{FORCED}   (3 elements)" in text and "near_upper@0[1] pinned@2[1]" in text
    data = comparison_json(comparison)
    for run in data["runs"]:
        assert len(run["scales"]) == SWIN_TENSORS and run["scales"][0]["elements"][0]["index"] == 1
    fig = plot_compare(comparison, gradient=True, max_panels=3)
    try:
        first = panels(fig)[0]
        bands = [c for c in first.collections if "band: the other 2 elements" in c.get_label()]
        assert len(bands) == 2  # one per run
        dashed = [ln for ln in first.get_lines() if ln.get_linestyle() == "--" and len(ln.get_ydata()) == 4]
        assert len(dashed) == 2 and all(np.allclose(ln.get_ydata(), 100.0, rtol=1e-5) for ln in dashed)
    finally:
        close(fig)
    normalised = plot_compare(comparison, normalise=True, max_panels=1)
    try:  # one-sided: 1 at the upper bound
        (line,) = [ln for ln in panels(normalised)[0].get_lines() if ln.get_linestyle() == "--" and
                   len(ln.get_ydata()) == 4][:1]
        assert np.allclose(line.get_ydata(), 1.0, atol=1e-6)
    finally:
        close(normalised)


def test_fast_reader_keeps_tensor_index_and_display(swin):
    path = history_of(swin["adamw"])
    fast, slow = read_series(path), collect_series(iter_history(path))
    assert list(fast) == list(slow) and len(fast) == SWIN_HEADS
    for name, s in slow.items():
        f = fast[name]
        assert (f.tensor, f.index, f.display, f.max) == (s.tensor, s.index, s.display, s.max)
        assert math.isnan(f.min) and math.isnan(s.min)
        assert np.array_equal(np.asarray(f.scale), np.asarray(s.scale))


@pytest.mark.parametrize("block_bytes", [1 << 12, 1 << 26])
def test_fast_reader_in_blocks_agrees_and_fills_gradients_of_a_few(tmp_path, block_bytes):
    path = str(tmp_path / HISTORY_FILENAME)
    write_per_head_history(path, tensors=20, heads=4, checks=12, drifting=3)
    with open(path, "a") as f:  # bounds that change mid-run, in the last block only
        for r in list(iter_history(path))[-80:]:
            f.write(json.dumps(dict(r, step=r["step"] + 1000, max=6.0, alerts=[])) + "\n")
    slow = collect_series(iter_history(path))
    columns = HistoryColumns(path, gradient=False, block_bytes=block_bytes)
    assert (len(columns._blocks) > 10) == (block_bytes == 1 << 12)
    fast = columns.series
    assert list(fast) == list(slow)
    for name, s in slow.items():
        f = fast[name]
        assert np.array_equal(np.asarray(f.steps), np.asarray(s.steps)) and not f.has_gradient
        for attr in ("min", "max", "alerts", "bound_changes", "last_raw", "last_grad", "tensor", "index"):
            assert getattr(f, attr) == getattr(s, attr), (name, attr)
    chosen = [fast[f"{tensor_name(t)}[{h}]"] for t in (0, 7) for h in range(4)]
    columns.fill_gradient(chosen)
    for f in chosen:
        for column in ("raw", "grad"):
            assert np.array_equal(getattr(f, column), np.asarray(getattr(slow[f.name], column)))
    assert not fast[f"{tensor_name(1)}[0]"].has_gradient


# ---- open_clip: exp display -------------------------------------------------------------------


def test_open_clip_report_json_shows_the_temperature(clip, capsys):
    data = json.loads(run_cli(capsys, "report", clip["root"], "--json"))
    (s,) = data["scales"]
    hist = clip["history"]
    assert s["display"] == "exp" and (s["min"], s["max"]) == (pytest.approx(1.0), pytest.approx(100.0))
    assert s["raw_units"]["min"] == 0.0 and s["raw_units"]["max"] == pytest.approx(LN100)
    assert s["last"]["scale"] == pytest.approx(math.exp(hist[-1]["scale"]))
    assert s["raw_units"]["last"]["scale"] == hist[-1]["scale"]
    assert (s["last"]["raw"], s["last"]["grad"]) == (hist[-1]["raw"], hist[-1]["grad"])  # raw units, untouched
    assert s["scale_max"] == pytest.approx(100.0, rel=1e-5)
    assert s["upper_warning"] == pytest.approx(100 ** 0.9)
    kinds = [(a["kind"], a["scale"], a["raw_units"]["scale"]) for a in s["alerts"]]
    assert [k for k, _, _ in kinds] == ["near_upper", "pinned"]
    assert all(shown == pytest.approx(math.exp(raw)) for _, shown, raw in kinds)
    text = run_cli(capsys, "report", clip["root"])
    assert "logit_scale (exp)" in text and "[1, 100]" in text


def test_open_clip_plot_shows_the_temperature(clip):
    fig = plot_history(history_of(clip["root"]))
    try:
        (panel,) = panels(fig)
        (line,) = [ln for ln in panel.get_lines() if ln.get_label() == "exp(scale) (effective)"]
        assert np.allclose(line.get_ydata(), [math.exp(r["scale"]) for r in clip["history"]])
        lines = bound_lines(panel)
        assert lines["max = exp(4.605) = 100"] == pytest.approx(100.0)
        assert lines["min = exp(0) = 1"] == pytest.approx(1.0)
        assert panel.get_ylabel() == "exp(scale)" and "range [1, 100]" in panel.get_title("left")
        (strip,) = strips(fig)
        (grad,) = [ln for ln in strip.get_lines() if ln.get_label().startswith("gradient")]
        assert np.array_equal(grad.get_ydata(), [r["grad"] for r in clip["history"]])  # raw units
    finally:
        close(fig)


def test_open_clip_example_watches_with_the_exp_display(clip):
    assert all(r["display"] == "exp" for r in clip["history"])
    assert os.path.exists(os.path.join(clip["root"], "scale_history.png"))


# ---- one-sided bounds, logger sources, a thousand tensors --------------------------------------


def one_sided(step: int, scale: float, lo: Any = None, hi: Any = 5.0) -> Dict[str, Any]:
    return dict(step=step, name="g", scale=scale, raw=scale, grad=1e-3, min=lo, max=hi, bound="hard",
                clamp_fraction=None, warn_fraction=0.9, alerts=[])


@pytest.mark.parametrize("lo, hi, drawn, title", [(None, 5.0, {"max_scale = 5", "near_upper above 0.9 x max = 4.5"},
                                                   "(-inf, 5]"),
                                                  (0.5, None, {"min_scale = 0.5", "near_lower below 0.55"},
                                                   "[0.5, inf)")])
def test_one_sided_bounds_draw_only_the_side_they_have(lo, hi, drawn, title, capsys, tmp_path):
    recs = [one_sided(s, 2.0 + 0.1 * s, lo, hi) for s in range(10)]
    fig = plot_history(recs)
    try:
        (panel,) = panels(fig)
        assert set(bound_lines(panel)) == drawn and title in panel.get_title("left")
    finally:
        close(fig)
    path = tmp_path / HISTORY_FILENAME
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    text = run_cli(capsys, "report", str(path))
    assert title in text and "nan" not in text.split("\n\n")[1]


def test_logger_sources_give_elements_and_one_sided_bounds():
    rows = [(0, "m.logit_scale[0]", {"scale": 2.3, "raw": 2.3, "grad": 0.0, "max": LN100}),
            (0, "m.logit_scale[1]", {"scale": LN100, "raw": 5.0, "grad": 0.0, "max": LN100})]
    recs = list(records_from_logged(rows))
    assert [(r["tensor"], r["index"], r["min"], r["bound"]) for r in recs] == [
        ("m.logit_scale", 0, None, "hard"), ("m.logit_scale", 1, None, "hard")]
    assert recs[1]["alerts"] == ["near_upper"]


@pytest.fixture(scope="module")
def thousand(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("thousand") / HISTORY_FILENAME)
    write_per_head_history(path, tensors=1000, heads=16, checks=6, drifting=2)
    return path


def test_a_thousand_tensors_plot_six_panels_and_report_a_row_each(thousand, capsys):
    fig = plot_history(thousand)
    try:
        assert len(panels(fig)) == 6 and "994 more scale(s) left out" in fig._suptitle.get_text()
    finally:
        close(fig)
    text = run_cli(capsys, "report", thousand)
    rows = [ln for ln in text.splitlines() if ln.startswith("blocks.")]
    assert len(rows) == 1000 and rows[0].split()[:3] == [tensor_name(0), "16", "96"]
    assert "16000 value(s) in 1000 scale(s)" in text
