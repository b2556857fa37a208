"""Where a run's readings are, and reading them as history records.

Three kinds of source yield the same record dicts as the history file
(``step``, ``name``, ``scale``, ``raw``, ``grad``, ``min``, ``max``, ``bound``,
``clamp_fraction``, ``warn_fraction``, ``alerts``):

- ``history``: ``scalewatch_history.jsonl``, the record itself (streamed);
- ``tensorboard``: an event directory (or file) with ``scalewatch/NAME/FIELD``
  scalars, read with TensorBoard's own ``EventAccumulator``;
- ``csv``: a CSVLogger ``metrics.csv`` with ``scalewatch/NAME/FIELD`` columns;
- ``mlflow``: an MLflow run (``runs:/RUN_ID``) that kept only its ``scalewatch/*`` metrics (one that
  kept its history artifact is read as ``history``; :mod:`~scalewatch.dashboards.mlflow_source`).

Loggers keep only the numbers, so for the last three the hard/soft bound is
inferred (a hard bound has ``scale == clamp(raw, min, max)``) and the alerts are
recomputed with the library's own rules (:class:`SaturationTracker`). The keys
are read with the history codec's logger-key codec
(:func:`~scalewatch.monitor.history.keys.parse_metric_key`), per-tensor summary
keys included: a tensor watched beyond ``max_logged_elements`` comes back as the
two edges of its band (see :func:`summary_records`).
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from scalewatch.monitor.rules import DEFAULT_PATIENCE, DEFAULT_WARN_FRACTION
from scalewatch.dashboards.mlflow_source import is_run_ref
from scalewatch.monitor.history import HISTORY_FILENAME, ReadProblems, has_torn_tail, iter_history
from scalewatch.monitor.history.keys import KEY_PREFIX, READING_KEY_FIELDS, SUMMARY_ONLY_FIELDS, parse_metric_key
from scalewatch.monitor.reading import Reading
from scalewatch.monitor.saturation import SaturationTracker

HISTORY = "history"
TENSORBOARD = "tensorboard"
CSV = "csv"
MLFLOW = "mlflow"
#: in the order a directory is searched
KINDS = (HISTORY, TENSORBOARD, CSV)
#: every kind ``--from`` takes: a directory's, and an MLflow run's (``runs:/RUN_ID``, never searched for)
SOURCE_KINDS = KINDS + (MLFLOW,)

#: the per-scale fields ScaleMonitor logs (``scalewatch/NAME/FIELD``)
LOGGED_FIELDS = READING_KEY_FIELDS
CSV_FILENAME = "metrics.csv"
EVENTS_PREFIX = "events.out.tfevents"


class SourceError(Exception):
    """A run's readings cannot be found or read. The message is one line, for a person."""


def parse_key(key: str) -> Optional[Tuple[str, str]]:
    """``"scalewatch/NAME/FIELD"`` -> ``(NAME, FIELD)``, per-tensor summary keys included; ``None`` for any other key."""
    parsed = parse_metric_key(key)
    return None if parsed is None else (parsed.name, parsed.field)


@dataclass
class Source:
    """One run's readings: what kind, where, and how it was chosen.

    Args:
        kind: ``history``, ``tensorboard``, ``csv`` or ``mlflow``.
        path: the history file, the event directory (or file), the metrics.csv, or ``runs:/RUN_ID``.
        note: how it was found, for the "using ..." line.
        warn_fraction, patience: the rules used to recompute alerts for logger
            sources (the history file carries its own).
        origin: the run's name when it is not a local path (an MLflow run: ``runs:/RUN_ID``).
        tracking_uri: an MLflow run's tracking store.
    """

    kind: str
    path: str
    note: str = ""
    warn_fraction: float = DEFAULT_WARN_FRACTION
    patience: int = DEFAULT_PATIENCE
    problems: ReadProblems = field(default_factory=ReadProblems)
    #: what the search loaded, so the run is read once: TensorBoard's reader, an MLflow run's rows
    accumulator: Any = field(default=None, repr=False, compare=False)
    origin: str = ""
    tracking_uri: str = ""
    #: keeps a downloaded artifact's temporary folder alive as long as the source
    keep: Any = field(default=None, repr=False, compare=False)

    @property
    def directory(self) -> str:
        """The folder the source lives in (where ``scale_history.png`` goes by default); for a run
        elsewhere (MLflow), the working directory: its artifacts are the run's, never written to."""
        if self.origin:
            return os.getcwd()
        return self.path if os.path.isdir(self.path) else os.path.dirname(os.path.abspath(self.path))

    def records(self) -> Iterator[Dict[str, Any]]:
        """Stream the records; :attr:`problems` is filled in as they are read."""
        if self.kind == HISTORY:
            return iter_history(self.path, self.problems)
        if self.kind == TENSORBOARD:
            return tensorboard_records(self.path, self.warn_fraction, self.patience, self.accumulator)
        if self.kind == MLFLOW:
            return records_from_logged(self.accumulator, self.warn_fraction, self.patience)
        return csv_records(self.path, self.warn_fraction, self.patience, self.problems)

    def describe(self) -> str:
        what = {HISTORY: "history file", TENSORBOARD: "TensorBoard events", CSV: "CSVLogger metrics",
                MLFLOW: "MLflow metrics"}[self.kind]
        extra = f"; {self.note}" if self.note else ""
        if self.kind != HISTORY:
            extra += (f"; alerts recomputed from the logged values with warn_fraction={self.warn_fraction:g}, "
                      f"patience={self.patience}")
        return f"{self.origin or self.path} ({what}{extra})"


# ---- finding a run's source ------------------------------------------------------------


def find_source(run_dir: str, kind: Optional[str] = None, warn_fraction: float = DEFAULT_WARN_FRACTION,
                patience: int = DEFAULT_PATIENCE, tracking_uri: Optional[str] = None) -> Source:
    """The readings of the run at ``run_dir`` (a log directory, a parent of one, or a file), or of the
    MLflow run it names (``runs:/RUN_ID``, ``mlflow:RUN_ID``; with ``kind="mlflow"`` also a bare run id).

    A directory is searched below for, in order, history files, TensorBoard event
    directories with scalewatch scalars, and CSVLogger ``metrics.csv`` files with
    scalewatch columns; when there are several of the kind found, the newest is used
    (give its path to pick another). ``kind`` restricts the search to one kind.

    Args:
        tracking_uri: an MLflow run's tracking URI (default: ``MLFLOW_TRACKING_URI``, else MLflow's).

    Raises:
        SourceError: the path does not exist, or holds no scalewatch readings; an MLflow run that
            does not exist, or a tracking URI that cannot be reached.
    """
    if kind is not None and kind not in SOURCE_KINDS:
        raise SourceError(f"unknown source kind {kind!r}; choose one of {', '.join(SOURCE_KINDS)}")
    opts = dict(warn_fraction=warn_fraction, patience=patience)
    if kind == MLFLOW or is_run_ref(run_dir):
        if kind not in (None, MLFLOW):
            raise SourceError(f"{run_dir}: an MLflow run, not a {kind} source (leave out --from {kind})")
        return mlflow_source(run_dir, tracking_uri, **opts)
    if not os.path.exists(run_dir):
        raise SourceError(f"{run_dir}: no such file or directory")
    if os.path.isfile(run_dir):
        found = _kind_of_file(run_dir)
        if found is None or (kind is not None and kind != found):
            labels = {HISTORY: "a history .jsonl", TENSORBOARD: "a TensorBoard event file", CSV: "a metrics.csv"}
            want = labels[kind] if kind else f"{labels[HISTORY]}, {labels[TENSORBOARD]} or {labels[CSV]}"
            raise SourceError(f"{run_dir}: not {want}")
        acc = None
        if found == TENSORBOARD:
            acc = _scalewatch_accumulator(run_dir)
            if acc is None:
                raise SourceError(f"{run_dir}: the TensorBoard events hold no scalewatch/* scalars")
        if found == CSV and not _csv_has_scalewatch(run_dir):
            raise SourceError(f"{run_dir}: the CSV has no scalewatch/* columns")
        return Source(found, run_dir, accumulator=acc, **opts)
    histories, event_dirs, csvs = _walk(run_dir)
    for k in (kind,) if kind else KINDS:
        if k == HISTORY and histories:
            return Source(HISTORY, histories[0], _several(len(histories), "history files", run_dir), **opts)
        if k == TENSORBOARD:
            for i, d in enumerate(event_dirs):  # newest first; stop at the first with scalewatch scalars
                acc = _scalewatch_accumulator(d)
                if acc is not None:
                    note = "" if len(event_dirs) == 1 else (
                        f"newest of {len(event_dirs)} event directories under {run_dir} with scalewatch scalars"
                        if i == 0 else f"newest event directory under {run_dir} with scalewatch scalars")
                    return Source(TENSORBOARD, d, note, accumulator=acc, **opts)
        if k == CSV:
            hits = [c for c in csvs if _csv_has_scalewatch(c)]
            if hits:
                return Source(CSV, hits[0], _several(len(hits), "metrics.csv files", run_dir), **opts)
    looked = {HISTORY: HISTORY_FILENAME, TENSORBOARD: "TensorBoard events with scalewatch/* scalars",
              CSV: f"a {CSV_FILENAME} with scalewatch/* columns"}
    wanted = [looked[k] for k in ((kind,) if kind else KINDS)]
    raise SourceError(f"{run_dir}: no scalewatch history found (looked for {' or '.join(wanted)})")


def mlflow_source(ref: str, tracking_uri: Optional[str] = None, warn_fraction: float = DEFAULT_WARN_FRACTION,
                  patience: int = DEFAULT_PATIENCE) -> Source:
    """The readings of the MLflow run ``ref`` (``runs:/RUN_ID``, ``mlflow:RUN_ID`` or a run id).

    Its history artifact (``scalewatch/scalewatch_history.jsonl``) when it has one, read as a
    history file; otherwise its ``scalewatch/*`` metrics, read back through the key codec.

    Args:
        ref: the run.
        tracking_uri: its tracking store (default: ``MLFLOW_TRACKING_URI``, else MLflow's default).
        warn_fraction, patience: the rules that recompute the alerts of a metrics-only run.

    Raises:
        SourceError: no such run, a tracking URI that cannot be reached, no scalewatch readings.

    Example::

        src = mlflow_source("runs:/3f2a...", tracking_uri="sqlite:///mlflow.db")
        records = list(src.records())
    """
    from scalewatch.dashboards import mlflow_source as ml

    try:
        with ml.bounded_env():
            client, run, uri = ml.open_run(ref, tracking_uri)
            origin = f"runs:/{run.info.run_id}"
            where = f"MLflow run {run.info.run_id} at {uri}"
            path, keep = ml.history_artifact(client, run)
            if path is not None:
                return Source(HISTORY, path, f"the {ml.ARTIFACT_DIR}/{HISTORY_FILENAME} artifact of {where}",
                              warn_fraction, patience, origin=origin, tracking_uri=uri, keep=keep)
            rows = ml.logged_rows(client, run)
    except ml.MlflowReadError as err:
        raise SourceError(str(err)) from err
    except Exception as err:  # noqa: BLE001 - the server went away between calls: one line, named
        raise SourceError(f"{ref}: MLflow failed reading it ({ml.short_reason(err)})") from err
    if not rows:
        raise SourceError(f"{ref}: {where} has no {ml.ARTIFACT_DIR}/{HISTORY_FILENAME} artifact and no "
                          "scalewatch/* metrics")
    return Source(MLFLOW, origin, f"{where}: its scalewatch/* metrics (no history artifact)", warn_fraction,
                  patience, accumulator=rows, origin=origin, tracking_uri=uri)


def find_history(run_dir: str) -> Optional[str]:
    """The newest history file at or below ``run_dir`` (``None`` if there is none yet)."""
    if os.path.isfile(run_dir):
        return run_dir
    if not os.path.isdir(run_dir):
        return None
    histories, _, _ = _walk(run_dir)
    return histories[0] if histories else None


def _several(count: int, what: str, run_dir: str) -> str:
    return "" if count == 1 else f"newest of {count} {what} under {run_dir}; give a path to pick another"


def _kind_of_file(path: str) -> Optional[str]:
    base = os.path.basename(path)
    if base.endswith(".jsonl"):
        return HISTORY
    if base.endswith(".csv"):
        return CSV
    if base.startswith(EVENTS_PREFIX):
        return TENSORBOARD
    return None


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0


def _walk(root: str) -> Tuple[List[str], List[str], List[str]]:
    """History files, event directories and CSV files below ``root``, newest first."""
    histories: List[str] = []
    csvs: List[str] = []
    event_dirs: Dict[str, float] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in filenames:
            path = os.path.join(dirpath, name)
            if name == HISTORY_FILENAME:
                histories.append(path)
            elif name == CSV_FILENAME:
                csvs.append(path)
            elif name.startswith(EVENTS_PREFIX):
                event_dirs[dirpath] = max(event_dirs.get(dirpath, 0.0), _mtime(path))
    histories.sort(key=_mtime, reverse=True)
    csvs.sort(key=_mtime, reverse=True)
    return histories, sorted(event_dirs, key=event_dirs.__getitem__, reverse=True), csvs


# ---- logger sources -> records ----------------------------------------------------------


def _accumulator(path: str) -> Any:
    """TensorBoard's reader for an event directory or file, scalars kept in full, images not."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    guidance = {ea.SCALARS: 0, ea.IMAGES: 1, ea.AUDIO: 1, ea.HISTOGRAMS: 1, ea.COMPRESSED_HISTOGRAMS: 1,
                ea.TENSORS: 1}
    acc = ea.EventAccumulator(path, size_guidance=guidance)
    try:
        acc.Reload()
    except Exception as err:  # a corrupt or unreadable event file
        raise SourceError(f"{path}: TensorBoard cannot read these events ({err})") from err
    return acc


def _scalewatch_accumulator(path: str) -> Any:
    """The loaded reader if the events hold ``scalewatch/*`` scalars, else ``None``."""
    try:
        acc = _accumulator(path)
    except SourceError:
        return None
    return acc if any(parse_key(t) for t in acc.Tags().get("scalars", [])) else None


def tensorboard_records(path: str, warn_fraction: float = DEFAULT_WARN_FRACTION, patience: int = DEFAULT_PATIENCE,
                        accumulator: Any = None) -> Iterator[Dict[str, Any]]:
    """Records from the ``scalewatch/*`` scalars of a TensorBoard event directory or file.

    Args:
        accumulator: an already loaded ``EventAccumulator`` for ``path`` (read again if ``None``).
    """
    acc = accumulator if accumulator is not None else _accumulator(path)
    order: Dict[str, int] = {}
    values: Dict[Tuple[int, int], Dict[str, float]] = {}
    for tag in acc.Tags().get("scalars", []):
        parsed = parse_metric_key(tag)
        if parsed is None:
            continue
        name, fld, _ = parsed
        index = order.setdefault(name, len(order))
        for event in acc.Scalars(tag):  # in write order: a value re-logged at a step replaces the earlier one
            values.setdefault((int(event.step), index), {})[fld] = float(event.value)
    names = list(order)
    rows = ((step, names[index], fields) for (step, index), fields in sorted(values.items()))
    return records_from_logged(rows, warn_fraction, patience)


def csv_records(path: str, warn_fraction: float = DEFAULT_WARN_FRACTION, patience: int = DEFAULT_PATIENCE,
                problems: Optional[ReadProblems] = None) -> Iterator[Dict[str, Any]]:
    """Records from the ``scalewatch/*`` columns of a CSVLogger ``metrics.csv``, streamed."""
    return records_from_logged(_csv_rows(path, problems if problems is not None else ReadProblems()),
                               warn_fraction, patience)


def _csv_has_scalewatch(path: str) -> bool:
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            header = next(csv.reader(f), [])
    except OSError:
        return False
    return any(parse_key(col) for col in header)


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) in (b"\n", b"\r")


def _csv_rows(path: str, problems: ReadProblems) -> Iterator[Tuple[int, str, Dict[str, float]]]:
    torn = not _ends_with_newline(path)
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f)
        columns = [(col, parse_metric_key(col)) for col in reader.fieldnames or []]
        columns = [(col, key) for col, key in columns if key is not None]
        pending: Optional[List[Tuple[int, str, Dict[str, float]]]] = None
        for row in reader:
            if pending is not None:  # held back one row: the last one may be torn
                yield from pending
            pending = _csv_row(row, columns, reader.line_num, problems)
        if pending is not None:
            if torn:
                problems.torn_last_line = True
            else:
                yield from pending


def _csv_row(row: Dict[str, Any], columns: List[Tuple[str, Tuple[str, ...]]], line: int,
             problems: ReadProblems) -> List[Tuple[int, str, Dict[str, float]]]:
    per_name: Dict[str, Dict[str, float]] = {}
    try:
        for col, (name, fld, *_) in columns:
            text = row.get(col)
            if text not in (None, ""):
                per_name.setdefault(name, {})[fld] = float(text)
        step = int(float(row["step"])) if per_name else 0
    except (TypeError, ValueError, KeyError):
        problems.note_bad(line)
        return []
    return [(step, name, fields) for name, fields in per_name.items()]


def records_from_logged(rows: Iterable[Tuple[int, str, Dict[str, float]]], warn_fraction: float = DEFAULT_WARN_FRACTION,
                        patience: int = DEFAULT_PATIENCE) -> Iterator[Dict[str, Any]]:
    """Turn logged ``(step, name, {field: value})`` rows, in step order, into history records.

    A row without ``scale`` is skipped; a missing bound is taken from the scale's
    earlier rows. A scale that never logged one of its bounds is one-sided on that
    side (``None``, as a one-sided scale's ``min`` is never logged); one that logged
    neither yet is skipped. An element key ``NAME[i]`` becomes a record with
    ``tensor`` and ``index``, as in the history; a per-tensor summary row (a tensor
    watched beyond ``max_logged_elements``) becomes its band's two edges
    (:func:`summary_records`). Alerts are recomputed with :class:`SaturationTracker`.
    """
    tracker = SaturationTracker(warn_fraction, patience)
    bounds: Dict[str, Tuple[Optional[float], Optional[float]]] = {}
    for step, name, fields in rows:
        known = bounds.get(name, (None, None))
        lo, hi = fields.get("min", known[0]), fields.get("max", known[1])
        if lo is None and hi is None:
            continue
        bounds[name] = (lo, hi)
        if not _SUMMARY_ONLY.isdisjoint(fields):
            yield from summary_records(step, name, fields, lo, hi, tracker, warn_fraction)
            continue
        scale = fields.get("scale")
        if scale is None:
            continue
        raw = fields.get("raw", math.nan)
        grad = fields.get("grad")
        bound = infer_bound(scale, raw, lo, hi)
        # without a logged raw value the rules judge the scale alone (no false non_finite)
        reading = Reading(step=step, name=name, scale=scale, raw=raw if "raw" in fields else scale, grad=grad,
                          min=lo, max=hi, bound=bound, clamp_fraction=fields.get("clamp_fraction"))
        alerts = [a.kind for a in tracker.update(reading)]
        record = {"step": step, "name": name, "scale": scale, "raw": raw, "grad": grad, "min": lo, "max": hi,
                  "bound": bound, "clamp_fraction": fields.get("clamp_fraction")}
        element = _ELEMENT.match(name)
        if element:
            record.update(tensor=element.group(1), index=int(element.group(2)))
        yield dict(record, warn_fraction=warn_fraction, alerts=alerts)


#: a logged element name, ``TENSOR[i]``
_ELEMENT = re.compile(r"^(.+)\[(\d+)\]$")
_SUMMARY_ONLY = frozenset(SUMMARY_ONLY_FIELDS)
#: the two edges of a summarised tensor's band, as its elements: (name suffix, index, summary fields of the edge)
SUMMARY_EDGES = (("[min]", 0, "scale_min", "raw_min"), ("[max]", 1, "scale_max", "raw_max"))
#: the engine's per-check counts of a summary, kept on each edge record under ``"summary"``
SUMMARY_COUNTS = ("elements", "near_upper", "near_lower", "pinned", "non_finite")


def summary_records(step: int, tensor: str, fields: Dict[str, float], lo: Optional[float], hi: Optional[float],
                    tracker: SaturationTracker, warn_fraction: float) -> Iterator[Dict[str, Any]]:
    """A summarised tensor's logged summary at one check as the records of its band's two edges.

    Beyond ``max_logged_elements`` the loggers hold, per tensor and check, the
    smallest and largest element (``scale_min``/``scale_max``, ``raw_min``/``raw_max``)
    and the engine's counts. They come back as two elements of the tensor,
    ``TENSOR[min]`` (index 0) and ``TENSOR[max]`` (index 1), so views draw and
    report the tensor's band as they do a per-head tensor's. The counts are kept on
    both as ``"summary"`` (``elements``, ``near_upper``, ``near_lower``, ``pinned``,
    ``non_finite``). The edges have no gradient of their own: at a check where the
    engine counted pinned elements their gradient reads 0 (cannot bring them back),
    so the ``pinned`` rule sees an edge at its bound; alerts are recomputed on the
    edges with the library's rules. A check without both edges' ``scale`` gives none.
    """
    summary = {k: int(fields[k]) for k in SUMMARY_COUNTS if k in fields and math.isfinite(fields[k])}
    grad = 0.0 if summary.get("pinned", 0) > 0 else None
    for suffix, index, scale_key, raw_key in SUMMARY_EDGES:
        scale = fields.get(scale_key)
        if scale is None:
            return
        raw = fields.get(raw_key, scale)
        name = tensor + suffix
        reading = Reading(step=step, name=name, scale=scale, raw=raw, grad=grad, min=lo, max=hi,
                          bound=infer_bound(scale, raw, lo, hi), tensor=tensor, index=index)
        alerts = [a.kind for a in tracker.update(reading)]
        yield dict(reading.to_record(), warn_fraction=warn_fraction, alerts=alerts, summary=summary)


def infer_bound(scale: float, raw: float, lo: Optional[float], hi: Optional[float]) -> str:
    """``hard`` when ``scale == clamp(raw, lo, hi)`` (or it cannot be told), else ``soft``.

    A ``None`` bound clamps nothing on its side.
    """
    if not all(math.isfinite(v) for v in (scale, raw)) or \
            not all(v is None or math.isfinite(v) for v in (lo, hi)):
        return "hard"
    clamped = raw if lo is None else max(raw, lo)
    clamped = clamped if hi is None else min(clamped, hi)
    return "hard" if abs(scale - clamped) <= 1e-5 * max(1.0, abs(scale)) else "soft"


# ---- history file checks ----------------------------------------------------------------


def torn_tail(path: str) -> bool:
    """Whether the history file's last line is torn (cheap: reads only the tail): the history codec's rule."""
    return has_torn_tail(path)


def has_records(source: Source) -> bool:
    """Whether the source holds at least one reading (stops at the first; leaves its problems alone)."""
    return next(iter(dataclasses.replace(source, problems=ReadProblems()).records()), None) is not None
