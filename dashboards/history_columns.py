"""A whole history file read into per-scale numpy columns, fast, for comparing long runs.

Parsing every line into a dict (:func:`~scalewatch.monitor.history.iter_history`)
costs several µs a line: seconds for a run of 200k readings. The lines a
history holds are ``json.dumps`` of one flat dict each, so a key's text
(``"scale": ``) can only occur as that key (a quote inside a JSON string is
always escaped). This reader takes the fields it needs out of the whole file
with one C-level scan each, parses each column with numpy, and reads only the
few lines that carry alerts as JSON. When the file is not of that plain shape
(a garbled line, a blank line, a field missing from some lines, a name with
escapes), it reads the file record by record instead: same result, slower.
"""
from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from scalewatch.dashboards.series import DEFAULT_WARN_FRACTION, ScaleSeries, collect_series
from scalewatch.monitor.history import ReadProblems, iter_history, parse_record

_NUMBER = rb"(-?(?:[0-9][0-9.eE+-]*|Infinity)|NaN|null)"
_STEP = re.compile(rb'"step": (-?[0-9]+)[,}]')
_NAME = re.compile(rb'"name": "([^"\\\n]*)"')
_BOUND = re.compile(rb'"bound": "([a-z]+)"')
_ALERTED = re.compile(rb'"alerts": \[[^\]]')
_FIELDS = {key: re.compile(b'"' + key.encode() + b'": ' + _NUMBER + rb"[,}]")
           for key in ("scale", "raw", "grad", "min", "max", "warn_fraction")}


class _NotPlain(Exception):
    """The file is not of the plain shape; read it record by record."""


def read_series(path: str, problems: Optional[ReadProblems] = None, gradient: bool = True) -> Dict[str, ScaleSeries]:
    """Every scale's series in a history file, in the order the scales first appear.

    Args:
        path: the history ``.jsonl``.
        problems: filled in with what was skipped (a torn last line, unreadable lines).
        gradient: also read ``raw`` and ``grad`` for every reading; without it
            the series keep only their last values (:attr:`ScaleSeries.last_raw`,
            ``last_grad``), which saves two of the four column scans.

    Raises:
        OSError: the file cannot be read.
    """
    problems = problems if problems is not None else ReadProblems()
    with open(path, "rb") as f:
        data = f.read()
    cut = data.rfind(b"\n") + 1
    body, tail = (data, b"") if cut == len(data) else (data[:cut], data[cut:])
    torn = False
    if tail.strip():
        if parse_record(tail.decode("utf-8", errors="replace")) is not None:
            return _record_by_record(path, problems)  # a whole last line without its newline: rare
        torn = True  # a run killed mid-write
    try:
        series = _plain(body, gradient)
    except _NotPlain:
        return _record_by_record(path, problems)
    problems.torn_last_line = problems.torn_last_line or torn
    return series


def _record_by_record(path: str, problems: ReadProblems) -> Dict[str, ScaleSeries]:
    return collect_series(iter_history(path, problems))


def _plain(body: bytes, gradient: bool) -> Dict[str, ScaleSeries]:
    if not body:
        return {}
    if not (body.startswith(b'{"') and body.endswith(b"}\n")):
        raise _NotPlain
    # Lines that are one JSON object each join as `}\n{"`. Any other line (blank, garbled)
    # breaks two joins, so some field then has more or fewer values than this count.
    n = body.count(b'}\n{"') + 1
    steps = _numbers(_STEP.findall(body), n)
    scale = _numbers(_FIELDS["scale"].findall(body), n)
    names, ids = _name_ids(body, n)
    order = np.argsort(ids, kind="stable") if len(names) > 1 else None
    columns = {"steps": steps, "scale": scale}
    if gradient:
        columns.update(raw=_numbers(_FIELDS["raw"].findall(body), n), grad=_numbers(_FIELDS["grad"].findall(body), n))
    bounds = _bounds(body, n)
    alerts = _alerts(body)
    if order is None:
        picks: List[Any] = [slice(None)]
    else:
        ends = np.cumsum(np.bincount(ids, minlength=len(names)))
        picks = np.split(order, ends[:-1])
    lasts = None if gradient else _last_records(body, None if order is None else [int(p[-1]) for p in picks])
    out: Dict[str, ScaleSeries] = {}
    for j, (name, pick) in enumerate(zip(names, picks)):
        cols = {k: np.ascontiguousarray(v[pick]) for k, v in columns.items()}
        mine = {k: v[pick] if isinstance(v, np.ndarray) else v for k, v in bounds.items()}
        latest = {k: v[-1] if isinstance(v, np.ndarray) else v for k, v in mine.items()}
        s = ScaleSeries(name=name, min=float(latest["min"]), max=float(latest["max"]),
                        warn_fraction=float(latest["warn_fraction"]), bound=str(latest["bound"]),
                        alerts=alerts.get(name, []),
                        bound_changes=_changes(mine["min"], mine["max"], mine["warn_fraction"]), **cols)
        last = {"raw": cols["raw"][-1], "grad": cols["grad"][-1]} if lasts is None else lasts[j]
        s.last_raw, s.last_grad = (_float(last.get(k)) for k in ("raw", "grad"))
        out[name] = s
    return out


def _numbers(values: List[bytes], n: int) -> np.ndarray:
    """A column of JSON numbers (``NaN``/``Infinity`` tokens and ``null`` included) as float64."""
    if len(values) != n:
        raise _NotPlain  # a line without the field, or with it twice
    if b"null" in values:
        values = [b"NaN" if v == b"null" else v for v in values]
    try:
        return np.array(values).astype(np.float64)
    except ValueError:
        raise _NotPlain from None


def _name_ids(body: bytes, n: int) -> Tuple[List[str], np.ndarray]:
    """The scale names in first-seen order, and each line's index into them."""
    first = _NAME.search(body)
    if first is None:
        raise _NotPlain
    if body.count(first.group(0)) == n:  # one scale: no need to read every name
        return [first.group(1).decode()], np.zeros(n, dtype=np.intp)
    found = _NAME.findall(body)
    if len(found) != n:
        raise _NotPlain
    index: Dict[bytes, int] = {}
    ids = np.fromiter((index.setdefault(v, len(index)) for v in found), dtype=np.intp, count=n)
    return [v.decode() for v in index], ids


def _bounds(body: bytes, n: int) -> Dict[str, Any]:
    """``min``, ``max``, ``warn_fraction`` and ``bound``, each one value (the usual case) or a column.

    When the first line's text from ``"min"`` to the end of ``"warn_fraction"`` is
    on every line, all four are the same everywhere: one count tells.
    """
    first = body[:body.find(b"\n")]
    at = {key: _FIELDS[key].search(first) for key in ("min", "warn_fraction")}
    if at["min"] and at["warn_fraction"] and at["min"].start() < at["warn_fraction"].start():
        span = first[at["min"].start():at["warn_fraction"].end()]
        if span.count(b'"max": ') == 1 and span.count(b'"bound": ') == 1 and body.count(span) == n:
            fields = _json_fields(first)
            kind = fields.get("bound") or "hard"
            w = fields.get("warn_fraction") or DEFAULT_WARN_FRACTION
            return {"min": _float(fields["min"]), "max": _float(fields["max"]), "warn_fraction": float(w),
                    "bound": kind}
    out = {key: _constant_or_column(body, key, n) for key in ("min", "max", "warn_fraction")}
    out["bound"] = _bound_kinds(body, n)
    return out


def _json_fields(line: bytes) -> Dict[str, Any]:
    try:
        return json.loads(line)
    except ValueError:
        raise _NotPlain from None


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _constant_or_column(body: bytes, key: str, n: int) -> Any:
    """A bound field as one float when every line has the same value (the usual case), else its column."""
    pattern = _FIELDS[key]
    first = pattern.search(body)
    if first is None:
        if key != "warn_fraction":
            raise _NotPlain
        return DEFAULT_WARN_FRACTION  # histories from before the field existed
    values = _numbers([first.group(1)], 1) if body.count(first.group(0)) == n else _numbers(pattern.findall(body), n)
    if key == "warn_fraction":  # as ScaleBounds.take_bounds: a null (or 0) warn fraction means the default
        values = np.where(np.isnan(values) | (values == 0), DEFAULT_WARN_FRACTION, values)
    return float(values[0]) if len(values) == 1 else values


def _bound_kinds(body: bytes, n: int) -> Any:
    """``hard``/``soft`` for every line as one string, or a column of them."""
    if body.find(b'"bound": ') < 0:
        return "hard"
    for kind in ("hard", "soft"):
        if body.count(b'"bound": "' + kind.encode() + b'"') == n:
            return kind
    found = _BOUND.findall(body)
    if len(found) != n:
        raise _NotPlain
    return np.array([v.decode() for v in found], dtype=object)


def _changes(lo: Any, hi: Any, w: Any) -> List[Tuple[int, float, float, float]]:
    """Where the bounds took new values, as :attr:`ScaleSeries.bound_changes` wants them."""
    cols = [np.asarray(v, dtype=np.float64) for v in (lo, hi, w)]
    if all(c.ndim == 0 for c in cols):
        return [(0, float(lo), float(hi), float(w))]
    n = max(c.size for c in cols)
    full = np.stack([np.broadcast_to(c, (n,)) for c in cols])
    same = (full[:, 1:] == full[:, :-1]) | (np.isnan(full[:, 1:]) & np.isnan(full[:, :-1]))
    starts = np.concatenate(([0], np.flatnonzero(~same.all(axis=0)) + 1))
    return [(int(i), float(full[0, i]), float(full[1, i]), float(full[2, i])) for i in starts]


def _alerts(body: bytes) -> Dict[str, List[Tuple[int, str, float]]]:
    """The alerts, from the few lines that carry any (read as JSON)."""
    out: Dict[str, List[Tuple[int, str, float]]] = {}
    for hit in _ALERTED.finditer(body):
        start = body.rfind(b"\n", 0, hit.start()) + 1
        record = _json_fields(body[start:body.find(b"\n", hit.start())])
        scale = _float(record.get("scale"))
        out.setdefault(record["name"], []).extend((int(record["step"]), kind, scale) for kind in record["alerts"])
    return out


def _last_records(body: bytes, lines: Optional[List[int]]) -> List[Dict[str, Any]]:
    """The records on the given line numbers (each scale's last; ``None``: the file's last line), as JSON."""
    if lines is None:
        return [_json_fields(body[body.rfind(b"\n", 0, len(body) - 1) + 1:-1])]
    ends = np.flatnonzero(np.frombuffer(body, dtype=np.uint8) == 10)  # a plain file: one newline a line
    starts = np.concatenate(([0], ends[:-1] + 1))
    return [_json_fields(body[starts[i]:ends[i]]) for i in lines]
