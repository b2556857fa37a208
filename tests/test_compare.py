"""`scalewatch compare` over real runs of the example (different presets), and the fast history reader.

Three runs are made once, side by side, by the example's LightningCLI (as a user
starts it): the conservative and the aggressive preset, and the conservative
preset with the fast-scale-lr overlay, which saturates (near_upper, pinned).
Each logs to TensorBoard and CSV. Every test reads back what landed on disk.
"""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest

from scalewatch.dashboards import compare as compare_mod
from scalewatch.dashboards import history_columns
from scalewatch.dashboards.compare import compare_runs, run_labels
from scalewatch.dashboards.history_columns import read_series
from scalewatch.dashboards.plot import OUTSIDE_LABEL, close, plot_compare, plot_history
from scalewatch.dashboards.series import collect_series
from scalewatch.monitor import HISTORY_FILENAME, iter_history
from scalewatch.monitor.history import ReadProblems
from test_cli import in_process as cli_in_process
from test_examples import CONFIGS, FAST, TRAIN, clean_env, only

NAME = "fusion_attention.attention_bias_generator"
RUNS = {"conservative": ["conservative.yaml"], "aggressive": ["aggressive.yaml"],
        "fast-scale-lr": ["conservative.yaml", "fast-scale-lr.yaml"]}
STEPS = {"conservative": 40, "aggressive": 40, "fast-scale-lr": 60}
SCRIPT = Path(sys.executable).parent / "scalewatch"
CLI = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "scalewatch.dashboards.cli"]
LOGGERS = """trainer:
  logger:
    - class_path: pytorch_lightning.loggers.TensorBoardLogger
      init_args: {{save_dir: {root}, name: tensorboard}}
    - class_path: pytorch_lightning.loggers.CSVLogger
      init_args: {{save_dir: {root}, name: csv}}
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Dict[str, str]:
    """Each run's directory; the three trainings run at once."""
    root = tmp_path_factory.mktemp("compare")
    procs = {}
    for name, configs in RUNS.items():
        run_dir = root / "runs" / name
        overlay = root / f"{name}-loggers.yaml"  # TensorBoard + CSV only: W&B is not what is compared
        overlay.write_text(LOGGERS.format(root=run_dir))
        # the scale's record is what is compared here: the overlay's attention statistics stay off
        # (tests/test_attention_watch.py compares those)
        args = [a for c in configs for a in ("--config", _without_attention(root, c))]
        procs[name] = subprocess.Popen(
            [sys.executable, TRAIN, "fit", *args, "--config", str(overlay), "--trainer.max_steps", str(STEPS[name]),
             *FAST], cwd=str(root), env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{out[-5000:]}"
    return {name: str(root / "runs" / name) for name in RUNS}


def _without_attention(root: Path, config: str) -> str:
    path = os.path.join(CONFIGS, config)
    text = Path(path).read_text()
    if "attention: true" not in text:
        return path
    copy = root / config
    copy.write_text(text.replace("attention: true", "attention: false"))
    return str(copy)


def history(run_dir: str) -> List[dict]:
    return list(iter_history(only(f"{run_dir}/tensorboard/version_0/{HISTORY_FILENAME}")))


def csv_last(run_dir: str, key: str) -> Tuple[int, float]:
    with open(only(f"{run_dir}/csv/version_0/metrics.csv"), newline="") as f:
        rows = [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]
    return rows[-1]


def in_process(capsys, *argv: str) -> Tuple[int, str, str]:
    """``scalewatch ARGV`` in this process: exit code, stdout, stderr."""
    res = cli_in_process(capsys, *argv)
    return res.rc, res.out, res.err


def one_line_error(rc: int, out: str, err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert rc != 0 and len(lines) == 1 and lines[0].startswith("scalewatch: error: "), (rc, out, err)
    assert "Traceback" not in err + out
    for word in words:
        assert word in lines[0], (word, lines[0])


def expected(records: List[dict]) -> dict:
    """The summary numbers, computed here from the history lines."""
    values = [r["scale"] for r in records]
    lo, hi, w = records[-1]["min"], records[-1]["max"], records[-1]["warn_fraction"]
    return {"readings": len(records), "last": values[-1], "min": min(values), "max": max(values),
            "upper": sum(v > w * hi for v in values), "lower": sum(v < lo + (1 - w) * (hi - lo) for v in values),
            "alerts": [(r["step"], k) for r in records for k in r["alerts"]], "bounds": (lo, hi)}


# ---- the table and the JSON ---------------------------------------------------------------


def test_json_matches_each_runs_history_and_csv(runs):
    proc = subprocess.run(CLI + ["compare", *runs.values(), "--json"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [r["label"] for r in data["runs"]] == list(runs)  # named by their directory
    assert data["shared_scales"] == [NAME] and data["unshared_scales"] == [] and data["skipped"] == []
    for run in data["runs"]:
        records = history(runs[run["label"]])
        want = expected(records)
        assert run["source"]["kind"] == "history" and run["readings"] == want["readings"]
        (s,) = run["scales"]
        assert s["name"] == NAME and (s["min"], s["max"]) == want["bounds"]
        assert s["last"] == {k: records[-1][k] for k in ("step", "scale", "raw", "grad")}
        assert (s["scale_min"], s["scale_max"]) == (want["min"], want["max"])
        assert (s["near_bound"]["upper"], s["near_bound"]["lower"]) == (want["upper"], want["lower"])
        assert [(a["step"], a["kind"]) for a in s["alerts"]] == want["alerts"]
        step, loss = csv_last(runs[run["label"]], "val/loss")
        assert run["metric"]["name"] == "val/loss"
        assert (run["metric"]["step"], run["metric"]["value"]) == (step, pytest.approx(loss))
    by_label = {r["label"]: r["scales"][0] for r in data["runs"]}
    assert (by_label["aggressive"]["min"], by_label["aggressive"]["max"]) == (1.0, 8.0)
    assert [a["kind"] for a in by_label["fast-scale-lr"]["alerts"]] == ["near_upper", "pinned"]
    assert by_label["conservative"]["alerts"] == []


def test_text_table_has_a_row_per_run(runs, capsys):
    rc, out, err = in_process(capsys, "compare", *runs.values(), "--metric", "val/attention_entropy")
    assert rc == 0, err
    lines = out.splitlines()
    start = lines.index(NAME)
    assert lines[start + 1].split()[:4] == ["run", "bounds", "readings", "last"]
    assert lines[start + 1].endswith("val/attention_entropy")
    for label, run_dir in runs.items():
        want = expected(history(run_dir))
        row = next(line for line in lines[start + 2:] if line.startswith(label + " "))
        cells = row.split()
        assert float(cells[-1]) == pytest.approx(csv_last(run_dir, "val/attention_entropy")[1], rel=1e-3)
        after_bounds = next(i for i, c in enumerate(cells) if c.endswith("]")) + 1
        readings, *nums = cells[after_bounds:after_bounds + 4]
        assert int(readings) == want["readings"], row
        assert [float(c) for c in nums] == pytest.approx([want["last"], want["min"], want["max"]], rel=1e-3), row
    fast = next(line for line in lines if line.startswith("fast-scale-lr "))
    assert "near_upper@29 pinned@49" in fast


def test_logger_sources_agree_with_the_histories(runs, capsys):
    """A TensorBoard event file and a metrics.csv give the same numbers, alerts recomputed, and the metric."""
    events = only(f"{runs['fast-scale-lr']}/tensorboard/version_0/events.out.tfevents.*")
    metrics = only(f"{runs['aggressive']}/csv/version_0/metrics.csv")
    rc, out, err = in_process(capsys, "compare", events, metrics, "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert [r["source"]["kind"] for r in data["runs"]] == ["tensorboard", "csv"]
    assert [r["label"] for r in data["runs"]] == ["tensorboard/version_0", "csv/version_0"]
    for run, label in zip(data["runs"], ("fast-scale-lr", "aggressive")):
        want = expected(history(runs[label]))
        (s,) = run["scales"]
        assert s["readings"] == want["readings"] and [(a["step"], a["kind"]) for a in s["alerts"]] == want["alerts"]
        assert (s["scale_min"], s["scale_max"], s["last"]["scale"]) == pytest.approx(
            (want["min"], want["max"], want["last"]), rel=1e-6)
        assert run["metric"]["value"] == pytest.approx(csv_last(runs[label], "val/loss")[1], rel=1e-6)


# ---- runs that cannot be read -------------------------------------------------------------


def test_a_missing_run_is_one_line_naming_it_and_nothing_is_compared(runs, tmp_path, capsys):
    missing = str(tmp_path / "no-such-run")
    rc, out, err = in_process(capsys, "compare", runs["conservative"], missing, "-o", str(tmp_path / "c.png"))
    one_line_error(rc, out, err, missing, "no such file or directory", "--keep-going")
    assert out == "" and not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("what", ["empty history", "no history", "garbled events"])
def test_an_unreadable_run_is_one_line_naming_it(runs, tmp_path, capsys, what):
    bad = tmp_path / "bad"
    bad.mkdir()
    if what == "empty history":
        (bad / HISTORY_FILENAME).write_text("")
        arg = str(bad)
    elif what == "no history":
        arg = str(bad)
    else:
        (bad / "events.out.tfevents.123.host").write_bytes(b"\x00garbage" * 10)
        arg = str(bad / "events.out.tfevents.123.host")
    rc, out, err = in_process(capsys, "compare", arg, runs["conservative"])
    one_line_error(rc, out, err, arg)


def test_keep_going_compares_the_readable_runs_and_still_exits_non_zero(runs, tmp_path, capsys):
    missing = str(tmp_path / "gone")
    png = tmp_path / "c.png"
    rc, out, err = in_process(capsys, "compare", runs["conservative"], missing, runs["aggressive"], "--keep-going",
                              "--json", "-o", str(png))
    assert rc == 1
    data = json.loads(out)  # stdout stays pure JSON; "wrote" goes to stderr
    assert [r["label"] for r in data["runs"]] == ["conservative", "aggressive"]
    assert data["skipped"] == [{"path": missing, "error": f"{missing}: no such file or directory"}]
    assert err.splitlines() == [f"scalewatch: warning: skipped {missing}: no such file or directory", f"wrote {png}"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_table_needs_neither_torch_nor_matplotlib(runs):
    code = ("import sys; from scalewatch.dashboards.cli import main; rc = main(sys.argv[1:]); "
            "print(rc, sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, "compare", *runs.values(), "--json"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "0 []"


def test_one_run_is_a_usage_error(runs, capsys):
    rc, out, err = in_process(capsys, "compare", runs["conservative"])
    assert rc == 2 and "at least two runs" in err and out == ""


def test_runs_that_share_no_scale_are_listed_and_not_drawn(tmp_path, capsys):
    for name, scale in (("a", "head.gen"), ("b", "decoder.gen")):
        (tmp_path / name).mkdir()
        (tmp_path / name / HISTORY_FILENAME).write_text(json.dumps(
            {"step": 9, "name": scale, "scale": 2.5, "raw": 2.5, "grad": 0.1, "min": 0.5, "max": 5.0,
             "alerts": []}) + "\n")
    rc, out, err = in_process(capsys, "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert data["shared_scales"] == []
    assert data["unshared_scales"] == [{"name": "head.gen", "runs": ["a"]}, {"name": "decoder.gen", "runs": ["b"]}]
    rc, out, err = in_process(capsys, "compare", str(tmp_path / "a"), str(tmp_path / "b"), "-o",
                              str(tmp_path / "c.png"))
    one_line_error(rc, out, err, "share no scale")
    assert "head.gen   (only in a)" in out


def test_run_labels_are_the_shortest_unique_ends_of_their_directories():
    assert run_labels(["/x/runs/conservative", "/x/runs/aggressive"]) == ["conservative", "aggressive"]
    assert run_labels(["/a/seed0/tb", "/b/seed0/tb", "/b/seed1/tb"]) == ["a/seed0/tb", "b/seed0/tb", "seed1/tb"]
    assert run_labels(["/r/one", "/r/one"]) == ["one", "one#2"]


# ---- the figure ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def comparison(runs):
    return compare_runs(list(runs.values()), gradient=True)


def _run_lines(ax) -> Dict[str, np.ndarray]:
    """Each run's drawn line in a compare panel: (x, y) by the run's label."""
    return {line.get_label().split("  [")[0]: np.column_stack((line.get_xdata(), line.get_ydata()))
            for line in ax.get_lines() if "  [" in line.get_label()}


@pytest.mark.parametrize("normalise", [False, True])
def test_figure_draws_each_run_against_its_own_bounds_or_normalised(runs, comparison, normalise):
    fig = plot_compare(comparison, normalise=normalise, gradient=False)
    try:
        (ax,) = fig.axes  # one shared scale, no gradient strip
        lines = _run_lines(ax)
        assert set(lines) == set(runs)
        for label, run_dir in runs.items():
            records = history(run_dir)
            lo, hi = records[-1]["min"], records[-1]["max"]
            want = [(r["scale"] - lo) / (hi - lo) if normalise else r["scale"] for r in records]
            assert lines[label][:, 0].tolist() == [r["step"] for r in records]
            assert lines[label][:, 1] == pytest.approx(want)
        flat = sorted({line.get_ydata()[0] for line in ax.get_lines()
                       if len(line.get_ydata()) == 2 and line.get_ydata()[0] == line.get_ydata()[1]})
        assert flat == ([0.0, 1.0] if normalise else [0.5, 1.0, 5.0, 8.0])  # bound lines: shared, or each run's
        markers = {tuple(o) for c in ax.collections for o in c.get_offsets().tolist()}
        fast = history(runs["fast-scale-lr"])
        for r in fast:
            if r["alerts"]:
                y = (r["scale"] - 0.5) / 4.5 if normalise else r["scale"]
                assert (r["step"], pytest.approx(y)) in [(m[0], m[1]) for m in markers], r
    finally:
        close(fig)


def _strips(fig) -> List:
    return [ax for ax in fig.axes if ax.get_yscale() == "symlog"]


def _shaded(strip) -> List[Tuple[float, float]]:
    (bars,) = [c for c in strip.collections if c.get_label().startswith(OUTSIDE_LABEL)]
    return [(float(p.vertices[:, 0].min()), float(p.vertices[:, 0].max())) for p in bars.get_paths()]


def test_gradient_strip_shades_exactly_the_steps_where_raw_left_the_bounds(runs):
    path = only(f"{runs['fast-scale-lr']}/tensorboard/version_0/{HISTORY_FILENAME}")
    records = history(runs["fast-scale-lr"])
    fig = plot_history(path)
    try:
        (strip,) = _strips(fig)
        assert len(fig.axes) == 2 and strip.get_shared_x_axes().joined(strip, fig.axes[0])
        spans = _shaded(strip)
        outside = [r["step"] for r in records if not r["min"] <= r["raw"] <= r["max"]]
        inside = [r["step"] for r in records if r["min"] <= r["raw"] <= r["max"]]
        assert outside and inside and len(spans) == 1  # one stretch: raw leaves the bounds and stays out
        assert all(any(a <= s <= b for a, b in spans) for s in outside)
        assert not any(a <= s <= b for a, b in spans for s in inside)
        (line,) = [ln for ln in strip.get_lines() if ln.get_label().startswith("gradient")]
        assert line.get_ydata().tolist() == [r["grad"] for r in records]
        zero = sum(r["grad"] == 0 for r in records)
        assert f"exactly 0 at {zero} of {len(records)} readings" in line.get_label()
        assert all(r["grad"] == 0 for r in records if r["step"] in outside)  # the clamp cut it
    finally:
        close(fig)


def test_compare_gradient_strip_has_each_runs_gradient_and_spans(runs, comparison):
    fig = plot_compare(comparison, gradient=True)
    try:
        (strip,) = _strips(fig)
        grads = sorted(tuple(ln.get_ydata()) for ln in strip.get_lines() if len(ln.get_ydata()) > 2)
        assert grads == sorted(tuple(r["grad"] for r in history(d)) for d in runs.values())
        outside = [r["step"] for r in history(runs["fast-scale-lr"]) if r["raw"] > r["max"]]
        spans = _shaded(strip)  # only the saturating run has any
        assert len(spans) == 1 and spans[0][0] < outside[0] and spans[0][1] == outside[-1]
    finally:
        close(fig)


def test_cli_writes_the_comparison_png(runs, tmp_path, capsys):
    png = tmp_path / "compare.png"
    rc, out, err = in_process(capsys, "compare", *runs.values(), "--normalise", "--gradient", "-o", str(png))
    assert rc == 0, err
    assert f"wrote {png}" in out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert 900 <= width <= 2000 and 300 <= height <= 1200, (width, height)


# ---- the fast history reader -----------------------------------------------------------------


def _rec(step: int, name: str, scale: float, **extra) -> dict:
    r = {"step": step, "name": name, "scale": scale, "raw": scale, "grad": 0.01, "min": 0.5, "max": 5.0,
         "bound": "hard", "clamp_fraction": None, "warn_fraction": 0.9, "patience": 3, "alerts": []}
    r.update(extra)
    return r


def _write(path: Path, records: List[dict], tail: str = "") -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return str(path)


def _same_series(path: str, gradient: bool = True) -> ReadProblems:
    """The fast reader gives what reading record by record gives; returns what it skipped."""
    fast_problems, slow_problems = ReadProblems(), ReadProblems()
    fast = read_series(path, fast_problems, gradient=gradient)
    slow = collect_series(iter_history(path, slow_problems))
    assert list(fast) == list(slow)
    for name, s in slow.items():
        f = fast[name]
        columns = ("steps", "scale", "raw", "grad") if gradient else ("steps", "scale")
        for col in columns:
            assert np.array_equal(np.asarray(getattr(f, col)), np.asarray(getattr(s, col)), equal_nan=True), col
        for attr in ("min", "max", "warn_fraction", "bound", "alerts", "bound_changes", "last_raw", "last_grad"):
            a, b = getattr(f, attr), getattr(s, attr)
            assert a == b or (a != a and b != b), (attr, a, b)
    assert (fast_problems.torn_last_line, fast_problems.bad_count) == (slow_problems.torn_last_line,
                                                                        slow_problems.bad_count)
    return fast_problems


def _tricky() -> List[dict]:
    """Interleaved scales, non-finite values, a null gradient, alerts, bounds changing mid-run, a soft bound."""
    recs = []
    for k in range(40):
        step = 10 * k + 9
        recs.append(_rec(step, "a.gen", 2.5 + 0.05 * k, raw=2.5 + 0.05 * k if k < 30 else 5.4, grad=0.0 if k >= 30 else
                         1e-3 * (k - 20), max=5.0 if k < 20 else 6.0,
                         alerts=["near_upper", "pinned"] if k == 33 else []))
        if k % 3:  # b.gen is not read at every check: names are not periodic
            recs.append(_rec(step, "b.gen", float("nan") if k == 7 else 1.0, raw=float("inf") if k == 8 else 1.0,
                             grad=None if k == 9 else -2e-7, bound="soft", alerts=["non_finite"] if k == 7 else []))
    return recs


@pytest.mark.parametrize("gradient", [True, False])
def test_fast_reader_takes_the_fast_path_and_agrees(tmp_path, monkeypatch, gradient):
    path = _write(tmp_path / HISTORY_FILENAME, _tricky())
    fast_only = pytest.fail
    monkeypatch.setattr(history_columns, "_record_by_record", lambda *a: fast_only("fell back"))
    read_series(path, gradient=gradient)  # a plain file never falls back
    monkeypatch.undo()
    _same_series(path, gradient)


@pytest.mark.parametrize("damage", ["torn last line", "garbled line", "blank line", "escaped name",
                                    "last line without newline", "old records without bound fields"])
def test_fast_reader_agrees_on_damaged_or_unusual_files(tmp_path, damage):
    recs = _tricky()
    tail = ""
    if damage == "torn last line":
        tail = '{"step": 999, "name": "a.g'
    elif damage == "last line without newline":
        tail = json.dumps(_rec(999, "a.gen", 3.0))
    elif damage == "escaped name":
        recs[5]["name"] = 'weird "quoted" name'
    elif damage == "old records without bound fields":
        for r in recs:
            del r["bound"], r["warn_fraction"]
    path = tmp_path / HISTORY_FILENAME
    _write(path, recs, tail)
    if damage in ("garbled line", "blank line"):
        lines = path.read_text().splitlines(keepends=True)
        lines.insert(10, "\n" if damage == "blank line" else '{"step": 1, "name": "a.gen", "sc@@\n')
        path.write_text("".join(lines))
    problems = _same_series(str(path))
    assert problems.torn_last_line == (damage == "torn last line")
    assert problems.bad_count == (damage == "garbled line")


def test_workers_read_large_files_with_the_same_result(runs, monkeypatch):
    args = list(runs.values())
    serial = compare_runs(args, gradient=True)
    monkeypatch.setattr(compare_mod, "PARALLEL_BYTES", 0)  # every file counts as large
    parallel = compare_runs(args, gradient=True, workers=2)
    for a, b in zip(serial.runs, parallel.runs):
        assert a.label == b.label and a.summaries == b.summaries
        for name in a.series:
            assert np.array_equal(np.asarray(a.series[name].grad), np.asarray(b.series[name].grad))


def test_summaries_judge_each_reading_by_its_own_bounds(tmp_path):
    recs = [_rec(0, "g", 4.7), _rec(1, "g", 4.7, max=6.0), _rec(2, "g", math.inf, max=6.0), _rec(3, "g", 0.6, max=6.0)]
    run = compare_runs([_write(tmp_path / HISTORY_FILENAME, recs), _write(tmp_path / "b.jsonl", recs)]).runs[0]
    s = run.summaries["g"]
    # 4.7 > 0.9 x 5 at step 0 only (the max is 6 from step 1); inf is non-finite, not near; 0.6 < 0.5 + 0.1 x 5.5
    assert (s.near_upper, s.near_lower, s.non_finite, s.max) == (1, 1, 1, 6.0)
