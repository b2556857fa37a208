"""Several runs side by side: their scales' numbers, a final metric, and what to draw.

``scalewatch compare RUN RUN ...`` reads each RUN the way ``report`` does (a run
directory or a folder above one, a history ``.jsonl``, TensorBoard events, a
CSVLogger ``metrics.csv``), names the runs by the shortest unique end of their
directory, summarises every scale of every run, looks up a final metric (``val/loss``)
in the run's logger files, and prints it all as a table or JSON. The figure is
drawn by :func:`scalewatch.dashboards.plot.plot_compare` from the same data.
"""
from __future__ import annotations

import csv
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any, Dict, List, Optional, Sequence, Tuple

from scalewatch.dashboards.history_columns import read_series
from scalewatch.dashboards.report import (NEAR_BOUND_NOTE, ScaleSummary, TensorReport, bounds_cell,
                                          group_summaries, js_number, near_bound_cell, shown_cell, source_json,
                                          table_lines)
from scalewatch.dashboards.series import ScaleSeries, collect_series
from scalewatch.monitor.rules import closeness, risk_key
from scalewatch.dashboards.sources import CSV, HISTORY, TENSORBOARD, Source, SourceError, find_source
from scalewatch.monitor.advice import short_cell
from scalewatch.monitor.display import IDENTITY, format_number
from scalewatch.monitor.history import ReadProblems

DEFAULT_METRIC = "val/loss"
#: alerts written out in a table cell before "+N more"
ALERTS_IN_CELL = 3


@dataclass
class MetricValue:
    """The last value a run logged for a metric, and where it was found."""

    name: str
    value: float
    step: Optional[int]
    path: str

    def to_json(self) -> Dict[str, Any]:
        return {"name": self.name, "value": js_number(self.value), "step": self.step, "path": self.path}


@dataclass
class ComparedRun:
    """One run of a comparison: where it was read from, its scales, its final metric.

    Args:
        arg: the RUN as given on the command line.
        label: the run's name in the table and the figure (set by :func:`compare_runs`).
        source: what was read.
        series: every scale's readings, by name, in the order they first appear.
        metric: the final value of the compared metric, if the run's logger files have it.
    """

    arg: str
    label: str
    source: Source
    series: Dict[str, ScaleSeries]
    metric: Optional[MetricValue] = None
    #: what to change, per scale (:mod:`scalewatch.monitor.advice`)
    advice: List[Any] = field(default_factory=list)
    summaries: Dict[str, ScaleSummary] = field(init=False)
    #: per tensor (a single-value scale: itself), in the order they first appear
    tensors: Dict[str, TensorReport] = field(init=False)

    def __post_init__(self) -> None:
        self.summaries = {name: ScaleSummary.of(s) for name, s in self.series.items()}
        self.tensors = {t.name: t for t in group_summaries(self.summaries.values())}

    def tensor_series(self, name: str) -> List[ScaleSeries]:
        """The series of tensor ``name``'s elements (one for a single-value scale), by index."""
        return [self.series[e.name] for e in self.tensors[name].elements]

    @property
    def directory(self) -> str:
        """The directory the run is named by: RUN itself, or the folder of a RUN file (an MLflow run: runs:/ID)."""
        if self.source.origin:
            return self.source.origin
        path = os.path.abspath(self.arg)
        return path if os.path.isdir(path) else os.path.dirname(path)


@dataclass
class Comparison:
    """What ``compare`` found: the runs read, the runs skipped, and which scales they share."""

    runs: List[ComparedRun]
    metric: str = DEFAULT_METRIC
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (RUN, why)

    @property
    def shared(self) -> List[str]:
        """Scale (tensor) names every run has, most at risk first (alerted, then closest to a bound)."""
        names = [n for n in self.runs[0].tensors if all(n in r.tensors for r in self.runs[1:])]
        return sorted(names, key=lambda n: (min(_risk(e) for r in self.runs for e in r.tensors[n].elements), n))

    @property
    def unshared(self) -> Dict[str, List[str]]:
        """Scale (tensor) names only some runs have, with the labels of those runs."""
        out: Dict[str, List[str]] = {}
        for run in self.runs:
            for name in run.tensors:
                out.setdefault(name, []).append(run.label)
        return {n: labels for n, labels in out.items() if len(labels) < len(self.runs)}


def _risk(s: ScaleSummary) -> Tuple[int, float, str]:
    """Sort key (the rule book's :func:`~scalewatch.monitor.rules.risk_key`): alerted or non-finite
    scales first, then by how close the scale came to a bound (0 = at it)."""
    if s.alerts or s.non_finite or not (math.isfinite(s.scale_min) and math.isfinite(s.scale_max)):
        return risk_key(True, 0.0)
    return risk_key(False, min(closeness(s.scale_min, s.min, s.max), closeness(s.scale_max, s.min, s.max)))


# ---- reading the runs --------------------------------------------------------------------

#: history files at least this big are read in worker processes when several are compared
PARALLEL_BYTES = 16 << 20


def load_run(arg: str, *, kind: Optional[str] = None, warn_fraction: Optional[float] = None,
             patience: Optional[int] = None, metric: str = DEFAULT_METRIC, gradient: bool = False) -> ComparedRun:
    """Read one run for a comparison.

    Args:
        arg: a run directory (or a folder above one), a history ``.jsonl``, an event file, a ``metrics.csv``.
        kind: read only this kind of source (``history``, ``tensorboard``, ``csv``).
        warn_fraction, patience: the rules for recomputing alerts of logger sources (default: the library's).
        metric: the metric whose last value to look up in the run's logger files.
        gradient: read every reading's raw value and gradient too (for the gradient strip).

    Raises:
        SourceError: the run cannot be found or read, or holds no readings.
    """
    src = _find(arg, kind, warn_fraction, patience)
    return _finish(arg, src, _read(src, gradient), metric)


def _find(arg: str, kind: Optional[str], warn_fraction: Optional[float], patience: Optional[int]) -> Source:
    options = {k: v for k, v in (("warn_fraction", warn_fraction), ("patience", patience)) if v is not None}
    return find_source(arg, kind=kind, **options)


def _read(src: Source, gradient: bool) -> Dict[str, ScaleSeries]:
    try:
        if src.kind == HISTORY:
            series, src.problems = read_history(src.path, gradient)
            return series
        return collect_series(src.records())
    except OSError as err:
        raise SourceError(f"{src.path}: {err.strerror or err}") from err


def read_history(path: str, gradient: bool) -> Tuple[Dict[str, ScaleSeries], ReadProblems]:
    """A history file's series and what was skipped reading it (a worker process's task)."""
    problems = ReadProblems()
    return read_series(path, problems, gradient=gradient), problems


def _finish(arg: str, src: Source, series: Dict[str, ScaleSeries], metric: str) -> ComparedRun:
    if not series:
        raise SourceError(f"{src.path}: no readings in it")
    from scalewatch.dashboards.advice_view import series_advice

    advice = series_advice(series, src.path if src.kind == HISTORY else None)
    return ComparedRun(arg=arg, label=arg, source=src, series=series, metric=final_metric(src, arg, metric),
                       advice=advice)


def compare_runs(args: Sequence[str], *, keep_going: bool = False, metric: str = DEFAULT_METRIC,
                 kind: Optional[str] = None, warn_fraction: Optional[float] = None, patience: Optional[int] = None,
                 gradient: bool = False, workers: int = 1) -> Comparison:
    """Read every run and name them by the shortest unique end of their directory.

    Args:
        args: the RUNs, in the order to show them.
        keep_going: skip a run that cannot be read (recorded in :attr:`Comparison.skipped`)
            instead of stopping at it.
        metric, kind, warn_fraction, patience, gradient: as for :func:`load_run`.
        workers: processes for reading large history files (at least :data:`PARALLEL_BYTES`)
            side by side; 1 reads everything in this process.

    Raises:
        SourceError: a run cannot be read (without ``keep_going``), or none can.
    """
    found: List[Tuple[str, Any]] = []  # (RUN, its Source or the SourceError that stopped it)
    for arg in args:
        try:
            found.append((arg, _find(arg, kind, warn_fraction, patience)))
        except SourceError as err:
            found.append((arg, err))
    sources = [src for _, src in found if isinstance(src, Source)]
    read_ahead = _read_in_workers(sources, gradient, workers)
    runs: List[ComparedRun] = []
    skipped: List[Tuple[str, str]] = []
    for arg, src in found:
        try:
            if isinstance(src, SourceError):
                raise src
            series = read_ahead.pop(id(src)) if id(src) in read_ahead else _read(src, gradient)
            runs.append(_finish(arg, src, series, metric))
        except SourceError as err:
            why = str(err) if str(err).startswith(arg) else f"{arg}: {err}"  # always name the RUN as given
            if not keep_going:
                raise SourceError(f"{why} (--keep-going compares the other runs)") from err
            skipped.append((arg, why))
    if not runs:
        raise SourceError("none of the runs could be read: " + "; ".join(why for _, why in skipped))
    for run, label in zip(runs, run_labels([r.directory for r in runs])):
        run.label = label
    return Comparison(runs=runs, metric=metric, skipped=skipped)


def _read_in_workers(sources: List[Source], gradient: bool, workers: int) -> Dict[int, Dict[str, ScaleSeries]]:
    """The series of the large history files, read by worker processes; keyed by ``id(source)``.

    Files that fail here are left out, to be read (and reported) in this process.
    """
    big = [src for src in sources if src.kind == HISTORY and _size(src.path) >= PARALLEL_BYTES]
    if workers < 2 or len(big) < 2:
        return {}
    out: Dict[int, Dict[str, ScaleSeries]] = {}
    try:
        # spawn: a fresh interpreter per worker, safe whatever threads this process runs
        with ProcessPoolExecutor(max_workers=min(workers, len(big)), mp_context=get_context("spawn")) as pool:
            futures = [(src, pool.submit(read_history, src.path, gradient)) for src in big]
            for src, future in futures:
                try:
                    out[id(src)], src.problems = future.result()
                except Exception:  # noqa: BLE001 - read again here, where its error gets its one-line message
                    pass
    except (OSError, RuntimeError):  # no worker processes to be had here: the rest is read in this process
        pass
    return out


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def run_labels(directories: Sequence[str]) -> List[str]:
    """Each directory's shortest ending (whole path components) that no other directory ends with.

    The same directory given twice gets ``#2``, ``#3`` after its label.
    """
    parts = [os.path.normpath(d).strip(os.sep).split(os.sep) for d in directories]
    labels = []
    for i, mine in enumerate(parts):
        others = [p for j, p in enumerate(parts) if j != i and p != mine]
        k = 1
        while k < len(mine) and any(p[-k:] == mine[-k:] for p in others):
            k += 1
        labels.append("/".join(mine[-k:]) or os.sep)
    seen: Dict[str, int] = {}
    for i, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label}#{seen[label]}"
    return labels


# ---- the final metric --------------------------------------------------------------------


def final_metric(src: Source, arg: str, metric: str) -> Optional[MetricValue]:
    """The last value of ``metric`` in the run's CSVLogger or TensorBoard files, if any.

    A logger source is searched itself; for a history file, the ``metrics.csv`` and
    then the TensorBoard events at or below RUN (a RUN file: its folder) are.
    """
    if src.kind == CSV:
        return _csv_last(src.path, metric)
    if src.kind == TENSORBOARD:
        return _tensorboard_last(src, metric)
    if src.tracking_uri:  # an MLflow run: the metric as the run itself logged it
        from scalewatch.dashboards.mlflow_source import last_value

        found = last_value(src.origin, src.tracking_uri, metric)
        return MetricValue(metric, found[0], found[1], src.origin) if found else None
    root = arg if os.path.isdir(arg) else os.path.dirname(os.path.abspath(arg))
    for kind in (CSV, TENSORBOARD):
        try:
            found = find_source(root, kind=kind)
        except SourceError:
            continue
        value = _csv_last(found.path, metric) if kind == CSV else _tensorboard_last(found, metric)
        if value is not None:
            return value
    return None


def _tensorboard_last(src: Source, metric: str) -> Optional[MetricValue]:
    acc = src.accumulator
    if acc is None or metric not in acc.Tags().get("scalars", []):
        return None
    events = acc.Scalars(metric)
    return MetricValue(metric, float(events[-1].value), int(events[-1].step), src.path) if events else None


def _csv_last(path: str, metric: str) -> Optional[MetricValue]:
    """The metric's last non-empty value in a CSV, read from the end (the file may be long)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            first = f.readline()
            header = next(csv.reader([first.decode("utf-8", errors="replace")]), [])
            if metric not in header:
                return None
            column, step_column = header.index(metric), header.index("step") if "step" in header else None
            span = 1 << 16
            while True:
                start = max(len(first), size - span)
                f.seek(start)
                lines = f.read(size - start).split(b"\n")
                lines = lines[1:] if start > len(first) else lines  # the block's first line may be cut
                for line in reversed(lines[:-1]):  # the part after the last newline is empty or torn
                    row = next(csv.reader([line.decode("utf-8", errors="replace")]), [])
                    if len(row) == len(header) and row[column] != "":
                        step = _int_or_none(row[step_column]) if step_column is not None else None
                        return MetricValue(metric, float(row[column]), step, path)
                if start == len(first):
                    return None
                span *= 16
    except (OSError, ValueError):
        return None  # an unreadable metric leaves the cell empty; the scales are what is compared


def _int_or_none(text: str) -> Optional[int]:
    try:
        return int(float(text))
    except ValueError:
        return None


# ---- output ------------------------------------------------------------------------------


def comparison_json(c: Comparison) -> Dict[str, Any]:
    """The comparison as a JSON-ready dict (non-finite numbers as ``null``)."""
    return {
        "metric": c.metric,
        "runs": [{"label": r.label, "path": r.arg, "source": source_json(r.source),
                  "metric": r.metric.to_json() if r.metric else None,
                  "readings": sum(s.readings for s in r.summaries.values()),
                  "scales": [t.to_json() for t in r.tensors.values()],
                  "advice": [a.to_json() for a in r.advice]} for r in c.runs],
        "shared_scales": c.shared,
        "unshared_scales": [{"name": n, "runs": labels} for n, labels in c.unshared.items()],
        "skipped": [{"path": arg, "error": why} for arg, why in c.skipped],
    }


def _alerts_cell(t: TensorReport) -> str:
    """``kind@step`` per alert (an element's: ``kind@step[i]``), the first few, then ``+N more``."""
    alerts = sorted((st, k, e.index) for e in t.elements for st, k, _ in e.alerts)
    if not alerts:
        return "-"
    shown = [f"{kind}@{step}" + ("" if index is None else f"[{index}]")
             for step, kind, index in alerts[:ALERTS_IN_CELL]]
    more = len(alerts) - ALERTS_IN_CELL
    return " ".join(shown) + (f" +{more} more" if more > 0 else "")


def comparison_text(c: Comparison) -> str:
    """Plain text: the runs and their sources, then one table per scale with a row per run.

    A per-head tensor's row gives ranges across its elements (``last`` as
    ``low..high``) and names the alerted elements by index in the alerts cell.
    """
    lines = [f"scalewatch compare: {len(c.runs)} run(s), {len(c.shared)} scale(s) in every run", ""]
    width = max(len(r.label) for r in c.runs)
    for r in c.runs:
        lines.append(f"  {r.label.ljust(width)}  {r.source.describe()}")
    for arg, why in c.skipped:
        lines.append(f"  {'(skipped)'.ljust(width)}  {why}")
    unshared = c.unshared
    for name in c.shared + list(unshared):
        rows = [("run", "bounds", "readings", "last", "min", "max", "near bound", "alerts", "advice", c.metric)]
        heads = ""
        for r in c.runs:
            t = r.tensors.get(name)
            if t is None:
                continue
            lo, hi = t.last_range()
            last = shown_cell(t, lo) if lo == hi or t.single else f"{shown_cell(t, lo)}..{shown_cell(t, hi)}"
            heads = heads or ("" if t.single else f"   ({len(t.elements)} elements)")
            rows.append((r.label, bounds_cell(t), str(t.readings), last, shown_cell(t, t.scale_min),
                         shown_cell(t, t.scale_max), near_bound_cell(t), _alerts_cell(t),
                         short_cell(r.advice, name), format_number(r.metric.value) if r.metric else "-"))
        note = "" if name not in unshared else f"   (only in {', '.join(unshared[name])})"
        lines += ["", name + heads + note] + table_lines(rows, left=(0, 7, 8))
    lines += ["", NEAR_BOUND_NOTE, "alerts: kind@step ([i]: the element of a per-head scale)",
              "advice: the most urgent, in short (scalewatch report RUN for the whole of it)"]
    for display in sorted({t.display for r in c.runs for t in r.tensors.values()} - {IDENTITY}):
        lines.append(f"({display}): bounds, last, min and max shown as {display}(value)")
    if any(r.metric is None for r in c.runs):
        lines.append(f"{c.metric}: '-' where the run's metrics.csv / TensorBoard events have no {c.metric}")
    return "\n".join(lines)
