"""The record codec (monitor/history/) round trip: encode -> decode gives back what was written.

History lines through the encoder and back through the stream reader and the column
reader (the same values from both); one torn-last-line rule for every reader and the
writer; logger keys (per reading and per-tensor summary) through ``parse_metric_key``;
and a real run watched beyond ``max_logged_elements`` read back from TensorBoard and
CSV by ``scalewatch report|plot --from``.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any, Dict, List, Optional

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from scalewatch.dashboards.cli import main
from scalewatch.dashboards.history_columns import read_series
from scalewatch.dashboards.series import collect_series
from scalewatch.dashboards.sources import CSV, TENSORBOARD, find_source, records_from_logged, torn_tail
from scalewatch.monitor.history import (HISTORY_FILENAME, HistoryFollower, HistoryWriter, ReadProblems,
                                        encode_record, has_torn_tail, iter_history, reading_lines)
from scalewatch.monitor.history.columns import _LEADING
from scalewatch.monitor.history.encoding import LINE_TEMPLATE
from scalewatch.monitor.history.format import EXTRA_FIELDS, LINE_FIELDS, RECORD_FIELDS, SKIPPED_STEP
from scalewatch.monitor.history.keys import (SUMMARY_KEY_FIELDS, metric_key, parse_metric_key, reading_metrics)
from scalewatch.monitor.reading import Reading
from scalewatch.monitor.summary import SUMMARY_FIELDS, summarize

# ---- building readings --------------------------------------------------------------------

NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64), st.sampled_from([0.0, -0.0, 5.0]))
BOUNDS = st.one_of(st.none(), st.floats(-10, 10, allow_nan=False))
NAMES = st.one_of(st.sampled_from(["gen", "head.attention_bias_generator", "logit_scale", "a/b"]),
                  st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8))


@st.composite
def tensors(draw: Any) -> Dict[str, Any]:
    """One watched scale: a name, its bounds, kind, display and element count (1: a single value)."""
    return dict(name=draw(NAMES), min=draw(BOUNDS), max=draw(BOUNDS), bound=draw(st.sampled_from(["hard", "soft"])),
                display=draw(st.sampled_from(["identity", "exp"])), n=draw(st.sampled_from([1, 1, 3])),
                fraction=draw(st.booleans()), buffer=draw(st.booleans()))


@st.composite
def histories(draw: Any) -> List[Dict[str, Any]]:
    """Checks of readings of a few distinct scales: each ``{"readings", "extra", "alerts"}``."""
    specs = draw(st.lists(tensors(), min_size=1, max_size=4, unique_by=lambda t: t["name"]))
    checks = []
    for c in range(draw(st.integers(1, 4))):
        readings = []
        for t in specs:
            for i in range(t["n"]):
                element = t["n"] > 1
                scale = draw(NUMBERS)
                raw = draw(st.one_of(st.just(scale), NUMBERS))
                readings.append(Reading(step=10 * c + 9, name=f"{t['name']}[{i}]" if element else t["name"],
                                        scale=scale, raw=raw, grad=None if t["buffer"] else draw(NUMBERS),
                                        min=t["min"], max=t["max"], bound=t["bound"],
                                        clamp_fraction=draw(st.floats(0, 1)) if t["fraction"] else None,
                                        tensor=t["name"] if element else None, index=i if element else None,
                                        display=t["display"]))
        extra: Dict[str, Any] = {"warn_fraction": draw(st.sampled_from([0.9, 0.8])), "patience": draw(st.integers(1, 5))}
        if draw(st.booleans()):
            extra[SKIPPED_STEP] = True
        fired = draw(st.lists(st.sampled_from(readings), max_size=2))
        alerts = {r.name: draw(st.lists(st.sampled_from(["near_upper", "near_lower", "pinned", "non_finite"]),
                                        min_size=1, max_size=2, unique=True)) for r in fired}
        checks.append({"readings": readings, "extra": extra, "alerts": alerts})
    return checks


def expected_records(checks: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [dict(r.to_record(), **c["extra"], alerts=c["alerts"].get(r.name, [])) for c in checks for r in c["readings"]]


def write(path: Any, checks: List[Dict[str, Any]]) -> str:
    writer = HistoryWriter(str(path))
    for c in checks:
        writer.append_readings(c["readings"], c["extra"], c["alerts"])
    writer.close()
    return str(path)


def same(a: Any, b: Any) -> bool:
    """Equal, NaN equal to NaN and -0.0 told from 0.0: compared as JSON text (key order included)."""
    return json.dumps(a, default=list) == json.dumps(b, default=list)  # default: bytearray columns


def column(values: Any) -> List[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64)]


def same_series(fast: Any, slow: Any) -> None:
    assert list(fast) == list(slow)
    for name, s in slow.items():
        f = fast[name]
        for key in ("steps", "scale", "raw", "grad"):
            assert same(column(getattr(f, key)), column(getattr(s, key))), (name, key)
        for key in ("min", "max", "warn_fraction", "bound", "tensor", "index", "display", "alerts",
                    "bound_changes", "last_raw", "last_grad", "no_grad", "skipped"):
            assert same(getattr(f, key, None), getattr(s, key, None)), (name, key)


# ---- the history line ----------------------------------------------------------------------

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(checks=histories())
def test_lines_decode_to_what_was_encoded_by_both_readers(tmp_path, checks):
    path = write(os.path.join(tempfile.mkdtemp(dir=tmp_path), HISTORY_FILENAME), checks)  # one file per example
    expected = expected_records(checks)
    text = open(path, encoding="utf-8").read()
    # the encoder's lines are json.dumps of the records, byte for byte
    assert text == "".join(json.dumps(r) + "\n" for r in expected)
    assert [encode_record(r) for r in expected] == text.splitlines()
    # the stream reader gives the records back (NaN, ±inf, -0.0, None bounds, display, extras, alerts)
    problems = ReadProblems()
    got = list(iter_history(path, problems))
    assert same(got, expected) and not problems.torn_last_line and not problems.bad_count
    # the column reader gives the same series as the stream reader
    fast_problems, slow_problems = ReadProblems(), ReadProblems()
    same_series(read_series(path, fast_problems), collect_series(iter_history(path, slow_problems)))
    assert (fast_problems.torn_last_line, fast_problems.bad_count) == (False, 0)


def test_every_kind_of_value_round_trips(tmp_path):
    """The cases by name: scalars, elements, non-finite values, one-sided bounds, exp display, extras, alerts."""
    nan, inf = math.nan, math.inf
    readings = [
        Reading(step=9, name="gen", scale=2.5, raw=2.5, grad=1e-3, min=0.5, max=5.0, clamp_fraction=0.25),
        Reading(step=9, name="bad", scale=nan, raw=inf, grad=-inf, min=0.5, max=5.0),
        Reading(step=9, name="logit_scale", scale=4.6052, raw=4.7, grad=None, min=None, max=4.6052, display="exp"),
        Reading(step=9, name="floor", scale=0.1, raw=0.1, grad=0.0, min=0.0, max=None, bound="soft"),
    ] + [Reading(step=9, name=f"blocks.0.attn.logit_scale[{h}]", scale=v, raw=v, grad=-0.0, min=None, max=4.6052,
                 tensor="blocks.0.attn.logit_scale", index=h, display="exp") for h, v in enumerate([1.0, nan, 4.6052])]
    extra = {"warn_fraction": 0.9, "patience": 3, SKIPPED_STEP: True}
    alerts = {"bad": ["non_finite"], "blocks.0.attn.logit_scale[2]": ["near_upper", "pinned"]}
    path = write(tmp_path / HISTORY_FILENAME, [{"readings": readings, "extra": extra, "alerts": alerts}])
    got = list(iter_history(path))
    assert same(got, expected_records([{"readings": readings, "extra": extra, "alerts": alerts}]))
    assert math.isnan(got[1]["scale"]) and got[1]["raw"] == inf and got[1]["grad"] == -inf
    assert got[2]["min"] is None and got[2]["display"] == "exp" and got[3]["max"] is None
    assert got[4]["tensor"] == "blocks.0.attn.logit_scale" and got[4]["index"] == 0 and got[4]["display"] == "exp"
    assert all(r[SKIPPED_STEP] is True and r["warn_fraction"] == 0.9 and r["patience"] == 3 for r in got)
    assert got[-1]["alerts"] == ["near_upper", "pinned"] and got[0]["alerts"] == []
    # a line holds its fields in the declared order: the reading's, the check's, the alerts
    assert list(got[4]) == list(LINE_FIELDS) + list(EXTRA_FIELDS) + ["alerts"]
    assert list(got[0])[:len(RECORD_FIELDS)] == list(RECORD_FIELDS)
    series = read_series(path)
    same_series(series, collect_series(iter_history(path)))
    assert series["bad"].skipped == [0] and series["logit_scale"].no_grad == bytearray(b"\x01")
    # without an extra or alerts: no such keys
    plain = reading_lines(readings[:1])
    assert json.loads(plain) == readings[0].to_record()


def test_the_column_reader_reads_the_layout_the_encoder_declares():
    """One place: the column reader's leading pattern matches the encoder's line template, field for field."""
    line = reading_lines([Reading(step=19, name="g", scale=-1.5e-7, raw=2.0, grad=None, min=None, max=1.0)])
    assert LINE_TEMPLATE.startswith('{{"step": {st}, "name": {n}, "scale": {sc}')
    assert _LEADING.match(line.encode()).groups() == (b"19", b"g", b"-1.5e-07")


# ---- the torn last line: one rule everywhere -------------------------------------------------


def _lines(tmp_path: Any) -> List[str]:
    readings = [Reading(step=s, name=n, scale=2.0 + s / 100, raw=2.0 + s / 100, grad=0.01, min=0.5, max=5.0)
                for s in (1, 3, 5) for n in ("a", "b")]
    path = write(tmp_path / "src.jsonl", [{"readings": readings, "extra": {"warn_fraction": 0.9}, "alerts": {}}])
    return open(path, encoding="utf-8").read().splitlines(keepends=True)


TAILS = {
    "torn": ('{"step": 7, "name": "a", "sca', True, False),  # (tail, torn, a record)
    "whole record without its newline": ('{"step": 7, "name": "a", "scale": 2.07, "raw": 2.07, "grad": 0.01, '
                                         '"min": 0.5, "max": 5.0, "bound": "hard", "clamp_fraction": null}', False, True),
    "blanks": ("   ", False, False),
}


@pytest.mark.parametrize("case", list(TAILS))
def test_every_reader_and_the_writer_apply_the_same_tail_rule(tmp_path, case):
    tail, torn, is_record = TAILS[case]
    lines = _lines(tmp_path)
    path = tmp_path / HISTORY_FILENAME
    path.write_text("".join(lines) + tail, encoding="utf-8")
    complete = [json.loads(x) for x in lines] + ([json.loads(tail)] if is_record else [])
    # the stream reader
    problems = ReadProblems()
    assert same(list(iter_history(str(path), problems)), complete)
    assert (problems.torn_last_line, problems.bad_count) == (torn, 0)
    # the column reader
    fast = ReadProblems()
    same_series(read_series(str(path), fast), collect_series(complete))
    assert (fast.torn_last_line, fast.bad_count) == (torn, 0)
    # the cheap check the command line uses
    assert has_torn_tail(str(path)) is torn and torn_tail(str(path)) is torn
    # the live follower: holds the tail back until its newline (a write may be in progress), judged by the rule
    follower = HistoryFollower(str(path))
    assert not follower.check()
    assert same(list(follower.read()), complete[:len(lines)])
    assert follower.waiting_for_rest is (case != "blanks") and follower.torn_last_line is torn
    # the writer: cuts a torn (or blank) tail, ends a whole record's line, then appends
    more = Reading(step=9, name="a", scale=2.09, raw=2.09, grad=0.01, min=0.5, max=5.0)
    writer = HistoryWriter(str(path))
    writer.append_readings([more], {"warn_fraction": 0.9}, {})
    writer.close()
    after = ReadProblems()
    assert same(list(iter_history(str(path), after)), complete + [dict(more.to_record(), warn_fraction=0.9, alerts=[])])
    assert not after.torn_last_line and not has_torn_tail(str(path))
    assert path.read_text(encoding="utf-8").endswith("\n")
    # the follower reads on without losing or repeating a line
    assert not follower.check()
    got = list(follower.read())
    assert same(got, complete[len(lines):] + [dict(more.to_record(), warn_fraction=0.9, alerts=[])])
    assert not follower.waiting_for_rest


# ---- logger keys -----------------------------------------------------------------------------


def _per_head(step: int, values: List[float], grads: List[Optional[float]]) -> List[Reading]:
    return [Reading(step=step, name=f"net.gen[{h}]", scale=min(max(v, 0.5), 5.0), raw=v, grad=g, min=0.5, max=5.0,
                    tensor="net.gen", index=h) for h, (v, g) in enumerate(zip(values, grads))]


def test_reading_keys_parse_back_to_their_fields():
    readings = [Reading(step=3, name="head.gen", scale=2.5, raw=2.5, grad=-1e-3, min=0.5, max=5.0, clamp_fraction=0.5),
                Reading(step=3, name="a/b", scale=4.6, raw=4.7, grad=None, min=None, max=4.6052)] \
        + _per_head(3, [1.0, 5.2], [0.1, 0.0])
    metrics = reading_metrics(readings)
    for r in readings:
        for field in ("scale", "raw", "min", "max", "grad", "clamp_fraction"):
            key = metric_key(r.name, field)
            value = getattr(r, field)
            assert (key in metrics) == (value is not None), key
            if value is not None:
                assert parse_metric_key(key) == (r.name, field, False) and metrics[key] == value
    assert parse_metric_key("scalewatch/plot") is None and parse_metric_key("loss") is None
    assert parse_metric_key("scalewatch/x/unknown") is None
    # back to records through the logger reader: the values, the element's tensor and index
    rows: Dict[tuple, Dict[str, float]] = {}
    for key, value in metrics.items():
        name, field, _ = parse_metric_key(key)
        rows.setdefault((3, name), {})[field] = value
    records = {r["name"]: r for r in records_from_logged((s, n, f) for (s, n), f in rows.items())}
    for r in readings:
        got = records[r.name]
        assert (got["scale"], got["raw"], got["grad"], got["min"], got["max"], got["clamp_fraction"]) == \
            (r.scale, r.raw, r.grad, r.min, r.max, r.clamp_fraction)
        assert (got.get("tensor"), got.get("index")) == (r.tensor, r.index)


def test_summary_keys_parse_back_and_read_as_the_band_of_the_tensor():
    heads = [_per_head(s, [1.0 + s, 2.0, 5.5 if s > 1 else 4.0], [0.1, 0.1, 0.0]) for s in range(4)]
    metrics = [reading_metrics(rs, summarize(rs)) for rs in heads]
    keys = set(metrics[0])
    assert keys == {metric_key("net.gen", f) for f in SUMMARY_KEY_FIELDS}
    for key in keys:
        name, field, is_summary = parse_metric_key(key)
        assert name == "net.gen" and is_summary == (field in SUMMARY_FIELDS)
    rows = []
    for step, m in enumerate(metrics):
        fields = {}
        for key, value in m.items():
            fields[parse_metric_key(key).field] = value
        rows.append((step, "net.gen", fields))
    records = list(records_from_logged(rows))
    assert [r["name"] for r in records] == ["net.gen[min]", "net.gen[max]"] * 4
    for step, rs in enumerate(heads):
        low, high = records[2 * step], records[2 * step + 1]
        assert (low["scale"], high["scale"]) == (min(r.scale for r in rs), max(r.scale for r in rs))
        assert (low["raw"], high["raw"]) == (min(r.raw for r in rs), max(r.raw for r in rs))
        assert low["tensor"] == high["tensor"] == "net.gen" and (low["index"], high["index"]) == (0, 1)
        assert (low["min"], low["max"]) == (0.5, 5.0)
        t = summarize(rs)[0]
        assert low["summary"] == {"elements": 3, "near_upper": t.near_upper, "near_lower": t.near_lower,
                                  "pinned": t.pinned, "non_finite": t.non_finite}
    # the largest head crosses 0.9 x max at step 2 (and stays past max_scale, its gradient 0): the band's top
    # edge alerts then, and carries the engine's pinned count with a zero gradient
    fired = [(r["step"], r["name"], k) for r in records for k in r["alerts"]]
    assert fired == [(2, "net.gen[max]", "near_upper")]
    assert [(r["summary"]["pinned"], r["grad"]) for r in records[1::2]] == [(0, None), (0, None), (1, 0.0), (1, 0.0)]


# ---- a real run beyond max_logged_elements, read back from its loggers ------------------------

HEADS = 300  # beyond the default max_logged_elements (256): logged as its per-tensor summary


class PerHead(nn.Module):
    """A 300-head bias generator SGD drives apart (low heads down, high heads up) and one single-value scale."""

    def __init__(self) -> None:
        super().__init__()
        from scalewatch.monitor import AttentionBiasGenerator

        self.heads = AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0, num_heads=HEADS)
        self.gen = AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0)

    def loss(self) -> torch.Tensor:
        ramp = torch.linspace(-1.0, 1.0, HEADS).view(-1, 1, 1)
        return -(self.heads(ramp.expand(-1, 2, 2).unsqueeze(0)).float().mean() * HEADS
                 + self.gen(torch.ones(1, 2, 2)).float().mean())


@pytest.fixture(scope="module")
def summarised_run(tmp_path_factory) -> Dict[str, Any]:
    from pytorch_lightning.loggers import CSVLogger
    from torch.utils.tensorboard import SummaryWriter

    from scalewatch.callbacks import ScaleWatcher

    root = str(tmp_path_factory.mktemp("summarised"))
    torch.manual_seed(0)
    model = PerHead()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    writer, csv_logger = SummaryWriter(os.path.join(root, "tb")), CSVLogger(root, name="csv")
    with ScaleWatcher(model, log_dir=root, every_n_steps=2, tensorboard=writer, loggers=[csv_logger],
                      plot=False) as watcher:
        for step in range(16):
            model.loss().backward()
            watcher.step(step)
            opt.step()
            opt.zero_grad()
    writer.close()
    csv_logger.save()
    assert watcher.summarised == ["heads"] and watcher.names == ["gen"]
    return {"root": root, "history": list(iter_history(os.path.join(root, HISTORY_FILENAME)))}


@pytest.mark.parametrize("kind", [TENSORBOARD, CSV])
def test_logger_sources_read_a_summarised_tensor_back(summarised_run, kind):
    hist = summarised_run["history"]
    by_step: Dict[int, List[dict]] = {}
    for r in hist:
        if r.get("tensor") == "heads":
            by_step.setdefault(r["step"], []).append(r)
    records = list(find_source(summarised_run["root"], kind=kind).records())
    edges = [r for r in records if r.get("tensor") == "heads"]
    assert [r["step"] for r in edges[::2]] == sorted(by_step)
    for (step, rows), low, high in zip(sorted(by_step.items()), edges[::2], edges[1::2]):
        assert (low["step"], high["step"]) == (step, step)
        assert low["scale"] == pytest.approx(min(r["scale"] for r in rows))
        assert high["scale"] == pytest.approx(max(r["scale"] for r in rows))
        assert high["raw"] == pytest.approx(max(r["raw"] for r in rows), rel=1e-6)
        assert low["summary"]["elements"] == HEADS
        assert low["summary"]["near_upper"] == sum(r["scale"] > 0.9 * 5.0 for r in rows)
        assert low["summary"]["near_lower"] == sum(r["scale"] < 0.5 + 0.1 * 4.5 for r in rows)
    # a head's first near_upper alert in the history is the band's top edge's in the logger source
    first = min(r["step"] for r in hist if r.get("tensor") == "heads" and "near_upper" in r["alerts"])
    assert min(r["step"] for r in edges if "near_upper" in r["alerts"]) == first
    assert [r["scale"] for r in records if r["name"] == "gen"] == pytest.approx(
        [r["scale"] for r in hist if r["name"] == "gen"])


@pytest.mark.parametrize("kind", [TENSORBOARD, CSV])
def test_report_and_plot_from_loggers_show_the_summarised_tensor(summarised_run, kind, capsys, tmp_path):
    assert main(["report", summarised_run["root"], "--from", kind, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    scales = {s["name"]: s for s in report["scales"]}
    assert set(scales) == {"gen", "heads"}  # the summarised tensor is no longer dropped
    heads = [r for r in summarised_run["history"] if r.get("tensor") == "heads"]
    last = max(r["step"] for r in heads)
    last_rows = [r for r in heads if r["step"] == last]
    got = scales["heads"]
    assert got["last"]["step"] == last
    assert got["last"]["scale_min"] == pytest.approx(min(r["scale"] for r in last_rows))
    assert got["last"]["scale_max"] == pytest.approx(max(r["scale"] for r in last_rows))
    assert got["scale_min"] == pytest.approx(min(r["scale"] for r in heads))
    assert got["scale_max"] == pytest.approx(max(r["scale"] for r in heads))
    assert (got["min"], got["max"]) == (0.5, 5.0)
    assert got["element_count"] == HEADS  # the engine's count, not the band's two edges
    assert main(["report", summarised_run["root"], "--from", kind]) == 0
    text = capsys.readouterr().out
    assert "heads" in text and "heads[max]" in text  # the tensor's row, and its band's top edge alerting
    out = tmp_path / f"{kind}.png"
    assert main(["plot", summarised_run["root"], "--from", kind, "-o", str(out), "-q"]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
