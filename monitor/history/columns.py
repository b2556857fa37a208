"""The column reader: a whole history file read into per-scale numpy columns, fast, for long runs.

Parsing every line into a dict (:func:`~scalewatch.monitor.history.iter_history`)
costs several µs a line: seconds for a run of 200k readings. The lines a
history holds are ``json.dumps`` of one flat dict each, in the layout of
:mod:`.format`, so a key's text (``"scale": ``) can only occur as that key (a
quote inside a JSON string is always escaped). This reader takes the fields it
needs out of the whole file with one C-level scan each, parses each column with
numpy, and reads only the few lines that carry alerts as JSON. When the file is
not of that plain shape (a garbled line, a blank line, a field missing from some
lines, a name with escapes), it reads the file record by record instead: same
result, slower.

The file is read a block of lines at a time (64 MB), so memory holds one block
and the columns, not the file. Per-head histories (16k element readings a check)
are the large case: there the names repeat in the same order every check, which
is recognised instead of looked up line by line; each scale's tensor, index and
display come from its last line.

The series type is the caller's (the dashboards' ``ScaleSeries``): a subclass
gives :meth:`HistoryColumns._new_series` and :meth:`HistoryColumns._collect`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from scalewatch.monitor.display import IDENTITY
from scalewatch.monitor.history.format import (ALERTS, ITEM_SEPARATOR, JSON_SPELLING, LINE_FIELDS, SKIPPED_STEP,
                                               WARN_FRACTION, field_text)
from scalewatch.monitor.history.lines import NEWLINE, ReadProblems, read_tail
from scalewatch.monitor.history.reader import iter_history
from scalewatch.monitor.rules import DEFAULT_WARN_FRACTION

# ---- byte patterns, from the declared layout --------------------------------------------


def _key(name: str) -> bytes:
    return re.escape(field_text(name).encode())


#: a JSON number as the encoder writes it: digits (any float repr), a non-finite token, or null
_NUMBER = (rb"(-?(?:[0-9][0-9.eE+-]*|" + JSON_SPELLING["inf"].encode() + rb")|"
           + JSON_SPELLING["nan"].encode() + rb"|" + JSON_SPELLING["None"].encode() + rb")")
#: what follows a value: the next field, or the end of the object
_AFTER = rb"[" + re.escape(ITEM_SEPARATOR[:1].encode()) + rb"}]"
_STRING = rb'"([^"\\\n]*)"'  # a string without escapes (one with escapes makes the file not plain)
_STEP_KEY, _NAME_KEY, _SCALE_KEY = LINE_FIELDS[:3]
_STEP = re.compile(_key(_STEP_KEY) + rb"(-?[0-9]+)" + _AFTER)
_NAME = re.compile(_key(_NAME_KEY) + _STRING)
_BOUND = re.compile(_key("bound") + rb'"([a-z]+)"')
#: how a line with alerts reads (json.dumps of a non-empty list of kinds); found with bytes.find, a fast search
_ALERTED = field_text(ALERTS).encode() + b'["'
#: how a line of a check whose step a gradient scaler skipped reads
_SKIPPED = field_text(SKIPPED_STEP).encode() + b"true"
#: every line starts with step, name, scale: one scan takes all three
_LEADING = re.compile(rb"\{" + _key(_STEP_KEY) + rb"(-?[0-9]+)" + re.escape(ITEM_SEPARATOR.encode())
                      + _key(_NAME_KEY) + _STRING + re.escape(ITEM_SEPARATOR.encode())
                      + _key(_SCALE_KEY) + _NUMBER + _AFTER)
_FIELDS = {key: re.compile(_key(key) + _NUMBER + _AFTER) for key in ("scale", "raw", "grad", "min", "max",
                                                                     WARN_FRACTION)}
_NULL = JSON_SPELLING["None"].encode()
_NAN = JSON_SPELLING["nan"].encode()


class _NotPlain(Exception):
    """The file is not of the plain shape; read it record by record."""


#: bytes read and scanned at a time: memory holds one block and the columns, however long the file
BLOCK_BYTES = 1 << 26


@dataclass(frozen=True)
class _Block:
    """Where a block of whole lines lies in the file, and which lines it holds."""

    offset: int
    size: int
    first_line: int
    lines: int


class HistoryColumns:
    """A history file read into series a block at a time; gradients of a few series filled in afterwards.

    Reading without gradients and then :meth:`fill_gradient` for the scales to be
    drawn saves two column scans of the whole file: with a thousand per-head
    tensors, the plot draws six of them. Only the blocks that hold their lines are
    read again.

    Args:
        path: the history ``.jsonl``.
        problems: filled in with what was skipped (a torn last line, unreadable lines).
        gradient: also read ``raw`` and ``grad`` for every reading; without it the
            series keep only their last values (``last_raw``, ``last_grad``), which
            saves two of the four column scans.
        block_bytes: bytes scanned at a time.

    Raises:
        OSError: the file cannot be read.

    Example::

        columns = HistoryColumns(path, gradient=False)
        drawn = pick_some(columns.series)
        columns.fill_gradient(drawn)   # raw and grad of these, from the blocks that hold them
    """

    def __init__(self, path: str, problems: Optional[ReadProblems] = None, gradient: bool = True,
                 block_bytes: int = BLOCK_BYTES) -> None:
        self.path = path
        self.problems = problems if problems is not None else ReadProblems()
        self._block_bytes = block_bytes
        self._blocks: List[_Block] = []
        self._picks: Dict[str, np.ndarray] = {}
        self.series = self._read(gradient)

    # ---- the series type: the caller's --------------------------------------------------

    def _new_series(self, **fields: Any) -> Any:
        """A series from its columns and bounds (keyword names of the dashboards' ``ScaleSeries``)."""
        raise NotImplementedError

    def _collect(self, records: Iterable[Dict[str, Any]], names: Optional[Iterable[str]] = None) -> Dict[str, Any]:
        """Series built record by record (``names``: only these), in first-seen order."""
        raise NotImplementedError

    def _record_by_record(self) -> Dict[str, Any]:
        self._blocks, self._picks = [], {}
        return self._collect(iter_history(self.path, self.problems))

    # ---- reading ------------------------------------------------------------------------

    def _read(self, gradient: bool) -> Dict[str, Any]:
        index: Dict[str, int] = {}
        parts: List[Dict[str, Any]] = []
        try:
            with open(self.path, "rb") as f:
                line = 0
                for offset, body in self._scan(f):
                    part = _block_columns(body, gradient, index)
                    parts.append(part)
                    # a plain block holds one record a line
                    self._blocks.append(_Block(offset, len(body), line, part["n"]))
                    line += part["n"]
                tail = f.read()
        except _NotPlain:
            return self._record_by_record()
        record, torn = read_tail(tail)
        if record is not None:
            return self._record_by_record()  # a whole last line without its newline: rare
        try:
            series = self._assemble(parts, list(index), gradient) if parts else {}
        except _NotPlain:  # the file changed under us (a resume cut it back): read it as it is now
            return self._record_by_record()
        self.problems.torn_last_line = self.problems.torn_last_line or torn
        return series

    def _scan(self, f: Any) -> Iterator[Tuple[int, bytes]]:
        """Blocks of whole lines and their offsets; the file is left at the part after the last newline."""
        offset = 0
        while True:
            data = f.read(self._block_bytes)
            if not data:
                f.seek(offset)
                return
            if not data.endswith(NEWLINE):
                data += f.readline()  # up to the end of the line the block cut (or of the file)
            if not data.endswith(NEWLINE):  # the file ends without a newline: that part is the tail
                cut = data.rfind(NEWLINE) + 1
                if cut:
                    yield offset, data[:cut]
                f.seek(offset + cut)
                return
            yield offset, data
            offset += len(data)

    def _assemble(self, parts: List[Dict[str, Any]], names: List[str], gradient: bool) -> Dict[str, Any]:
        keys = ("steps", "scale") + (("raw", "grad") if gradient else ())
        columns = {k: np.concatenate([p[k] for p in parts]) for k in keys}
        ids = np.concatenate([p["ids"] for p in parts])
        bounds = {k: _merged([(p["n"], p["bounds"][k]) for p in parts])
                  for k in ("min", "max", WARN_FRACTION, "bound")}
        alerts: Dict[str, List[Tuple[int, str, float]]] = {}
        for p in parts:
            for name, found in p["alerts"].items():
                alerts.setdefault(name, []).extend(found)
        skipped_lines = np.concatenate([p["skipped"] + first for p, first in zip(parts, _firsts(parts))])
        skipped: Optional[np.ndarray] = None
        if len(skipped_lines):
            skipped = np.zeros(len(ids), dtype=bool)
            skipped[skipped_lines] = True
        if len(names) == 1:
            picks: List[Any] = [np.arange(len(ids))]
        else:
            order = np.argsort(ids, kind="stable")
            ends = np.cumsum(np.bincount(ids, minlength=len(names)))
            picks = np.split(order, ends[:-1])
        no_grad = _no_grad(parts, len(ids)) if gradient else None
        lasts = self._records([int(p[-1]) for p in picks])
        out: Dict[str, Any] = {}
        for name, pick, last in zip(names, picks, lasts):
            cols = {c: np.ascontiguousarray(v[pick]) for c, v in columns.items()}
            mine = {c: v[pick] if isinstance(v, np.ndarray) else v for c, v in bounds.items()}
            latest = {c: v[-1] if isinstance(v, np.ndarray) else v for c, v in mine.items()}
            s = self._new_series(name=name, min=float(latest["min"]), max=float(latest["max"]),
                                 warn_fraction=float(latest[WARN_FRACTION]), bound=str(latest["bound"]),
                                 tensor=last.get("tensor"), index=last.get("index"),
                                 display=last.get("display") or IDENTITY, attention=last.get("attention"),
                                 alerts=alerts.get(name, []),
                                 bound_changes=_changes(mine["min"], mine["max"], mine[WARN_FRACTION]), **cols)
            s.last_raw, s.last_grad = (_float(last.get(c)) for c in ("raw", "grad"))
            # as ScaleSeries.add keeps them: which readings had no gradient (grad null), and which
            # readings' checks a gradient scaler skipped
            if no_grad is not None:
                s.no_grad = bytearray(len(pick)) if no_grad is False else bytearray(no_grad[pick].tobytes())
            s.skipped = [] if skipped is None else np.flatnonzero(skipped[pick]).tolist()
            out[name] = s
        self._picks = dict(zip(names, picks))
        return out

    def _lines(self, lines: np.ndarray) -> Iterator[Tuple[slice, bytes, np.ndarray, _Block]]:
        """Per block holding some of the (sorted) file line numbers ``lines``: which of them (a slice of
        ``lines``), the block's text, those lines' numbers within it, and the block."""
        with open(self.path, "rb") as f:
            for block in self._blocks:
                lo, hi = np.searchsorted(lines, [block.first_line, block.first_line + block.lines])
                if lo == hi:
                    continue
                f.seek(block.offset)
                body = f.read(block.size)
                if len(body) != block.size or body.count(NEWLINE) != block.lines:
                    raise _NotPlain  # replaced since it was read
                yield slice(int(lo), int(hi)), body, lines[lo:hi] - block.first_line, block

    def _records(self, lines: List[int]) -> List[Dict[str, Any]]:
        """The records on the given file line numbers, as JSON, in that order."""
        wanted = np.asarray(lines, dtype=np.intp)
        order = np.argsort(wanted, kind="stable")
        found: List[Dict[str, Any]] = [{}] * len(lines)
        for where, body, local, _ in self._lines(wanted[order]):
            for i, text in zip(order[where].tolist(), _line_texts(body, local)):
                found[i] = _json_fields(text)
        return found

    def fill_gradient(self, chosen: Iterable[Any]) -> None:
        """Read ``raw`` and ``grad`` of every reading of the ``chosen`` series (no-op where they have them).

        Only the blocks holding their lines are read again, and in each only those
        lines are scanned when they are a small part of it.
        """
        todo = [s for s in chosen if not s.has_gradient and s.name in self._picks]
        if not todo:
            return
        per_series = [self._picks[s.name] for s in todo]
        lines = np.concatenate(per_series)
        order = np.argsort(lines, kind="stable")
        raw, grad = np.empty(len(lines)), np.empty(len(lines))
        no_grad = np.zeros(len(lines), dtype=bool)
        try:
            for where, body, local, block in self._lines(lines[order]):
                if len(local) > block.lines // 4:
                    raws, grads, count, pick = _FIELDS["raw"].findall(body), _FIELDS["grad"].findall(body), \
                        block.lines, local
                else:
                    text = b"".join(_line_texts(body, local))
                    raws, grads, count, pick = _FIELDS["raw"].findall(text), _FIELDS["grad"].findall(text), \
                        len(local), slice(None)
                raw[order[where]] = _numbers(raws, count)[pick]
                grad[order[where]] = _numbers(grads, count)[pick]
                nulls = _nulls(grads)
                if nulls is not None:
                    no_grad[order[where]] = nulls[pick]
        except _NotPlain:  # some line lacks a raw or grad field: read those scales record by record
            full = self._collect(iter_history(self.path), {s.name for s in todo})
            for s in todo:
                s.raw, s.grad = (np.asarray(getattr(full[s.name], k), dtype=np.float64) for k in ("raw", "grad"))
                s.no_grad = getattr(full[s.name], "no_grad", bytearray())
            return
        cuts = np.cumsum([len(p) for p in per_series])[:-1]
        for s, r, g, m in zip(todo, np.split(raw, cuts), np.split(grad, cuts), np.split(no_grad, cuts)):
            s.raw, s.grad, s.no_grad = r, g, bytearray(m.tobytes())


def _firsts(parts: List[Dict[str, Any]]) -> List[int]:
    """The file line number of each block's first line."""
    return np.concatenate(([0], np.cumsum([p["n"] for p in parts])[:-1])).astype(np.intp).tolist()


def _no_grad(parts: List[Dict[str, Any]], n: int) -> Any:
    """Per line, whether its ``grad`` is ``null``, as a bool column; ``False`` when no line's is."""
    if all(p["null_grad"] is None for p in parts):
        return False
    return np.concatenate([np.zeros(p["n"], dtype=bool) if p["null_grad"] is None else p["null_grad"] for p in parts])


def _line_texts(body: bytes, local: np.ndarray) -> List[bytes]:
    """The lines of ``body`` at the given line numbers (each with its newline)."""
    ends = _line_ends(body)
    starts = np.concatenate(([0], ends[:-1] + 1))
    return [body[a:b] for a, b in zip(starts[local].tolist(), (ends[local] + 1).tolist())]


def _block_columns(body: bytes, gradient: bool, index: Dict[str, int]) -> Dict[str, Any]:
    """One block's columns; scale names are numbered in ``index``, shared by all blocks (first seen first)."""
    if not (body.startswith(b'{"') and body.endswith(b"}\n")):
        raise _NotPlain
    n, steps, scale, names, local_ids = _leading_columns(body)
    to_global = np.array([index.setdefault(name, len(index)) for name in names], dtype=np.intp)
    out = {"n": n, "steps": steps, "scale": scale, "ids": to_global[local_ids], "bounds": _bounds(body, n),
           "alerts": _alerts(body), "skipped": _lines_with(body, _SKIPPED), "null_grad": None}
    if gradient:
        grads = _FIELDS["grad"].findall(body)
        out.update(raw=_numbers(_FIELDS["raw"].findall(body), n), grad=_numbers(grads, n),
                   null_grad=_nulls(grads))
    return out


def _nulls(tokens: List[bytes]) -> Optional[np.ndarray]:
    """Which of a grad column's tokens are ``null`` (a scale without a gradient: a buffer); ``None`` if none is."""
    if _NULL not in tokens:  # a list search: a fraction of a scan of the text
        return None
    return np.fromiter((g == _NULL for g in tokens), dtype=bool, count=len(tokens))


def _merged(parts: List[Tuple[int, Any]]) -> Any:
    """Blocks' values of one bound field (one value or a column each) as one value, or one column."""
    first = parts[0][1]
    if all(not isinstance(v, np.ndarray) and (v == first or v != v and first != first) for _, v in parts):
        return first
    kind = object if isinstance(first, str) or getattr(first, "dtype", None) == object else np.float64
    return np.concatenate([v if isinstance(v, np.ndarray) else np.full(n, v, dtype=kind) for n, v in parts])


def _numbers(values: List[bytes], n: int, parse: Callable[[bytes], Any] = float) -> np.ndarray:
    """A column of JSON numbers (``NaN``/``Infinity`` tokens and ``null`` included) as float64.

    ``parse=int`` for a column of integers (steps): faster than ``float``.
    """
    if len(values) != n:
        raise _NotPlain  # a line without the field, or with it twice
    if _NULL in values:
        values = [_NAN if v == _NULL else v for v in values]
    try:
        # float() takes the JSON tokens as they are (NaN, Infinity); a third faster than astype
        return np.fromiter(map(parse, values), dtype=np.float64, count=n)
    except ValueError:
        raise _NotPlain from None


def _leading_columns(body: bytes) -> Tuple[int, np.ndarray, np.ndarray, List[str], np.ndarray]:
    """The number of lines, steps, scale values, the names in first-seen order and each line's index into them.

    Lines written by the library start with ``step``, ``name``, ``scale`` in that
    order: one scan takes all three (a third faster than a scan each), and every
    line must give one match (a quote inside a name is escaped, so a match cannot
    start inside one). Other layouts are read a field at a time.
    """
    n = body.count(NEWLINE)
    rows = _LEADING.findall(body)
    if len(rows) == n:
        steps = _numbers(list(map(itemgetter(0), rows)), n, int)
        scale = _numbers(list(map(itemgetter(2), rows)), n)
        names, ids = _ids(list(map(itemgetter(1), rows)))
        return (n, steps, scale, names, ids)
    del rows
    # Lines that are one JSON object each join as `}\n{"`. Any other line (blank, garbled)
    # breaks two joins, so some field then has more or fewer values than this count.
    n = body.count(b'}\n{"') + 1
    steps = _numbers(_STEP.findall(body), n, int)
    scale = _numbers(_FIELDS["scale"].findall(body), n)
    return (n, steps, scale) + _name_ids(body, n)


def _name_ids(body: bytes, n: int) -> Tuple[List[str], np.ndarray]:
    """The scale names in first-seen order, and each line's index into them."""
    first = _NAME.search(body)
    if first is None:
        raise _NotPlain
    second = _NAME.search(body, first.end())
    if (second is None or second.group(0) == first.group(0)) and body.count(first.group(0)) == n:
        # one scale: no need to read every name
        return [first.group(1).decode()], np.zeros(n, dtype=np.intp)
    found = _NAME.findall(body)
    if len(found) != n:
        raise _NotPlain
    return _ids(found)


def _ids(found: List[bytes]) -> Tuple[List[str], np.ndarray]:
    """The distinct names of ``found`` in first-seen order, and each one's index into them."""
    n = len(found)
    period = _period(found)
    if period:  # every check reads the same scales in the same order (the usual case)
        return [v.decode() for v in found[:period]], np.arange(n, dtype=np.intp) % period
    index: Dict[bytes, int] = {}
    ids = np.fromiter((index.setdefault(v, len(index)) for v in found), dtype=np.intp, count=n)
    return [v.decode() for v in index], ids


def _period(found: List[bytes]) -> int:
    """K when ``found`` is its first K (distinct) names over and over (the last time perhaps cut short), else 0.

    A block of lines may start and end anywhere in a check: what repeats is the
    order of the names, from wherever the block starts.
    """
    try:
        k = found.index(found[0], 1)
    except ValueError:
        return 0
    if len(set(found[:k])) != k:
        return 0
    # one list comparison, element by element in C: a fraction of a dict lookup per line
    return k if found[k:] == found[:-k] else 0


def _bounds(body: bytes, n: int) -> Dict[str, Any]:
    """``min``, ``max``, ``warn_fraction`` and ``bound``, each one value (the usual case) or a column.

    When the first line's text from ``"min"`` to the end of ``"warn_fraction"`` is
    on every line, all four are the same everywhere: one count tells. Element
    lines (``"tensor"``, ``"index"`` in between) are told by two counts: the text
    from ``"min"`` to the bound kind, and the ``"warn_fraction"`` field.
    """
    first = body[:body.find(NEWLINE)]
    at = {key: _FIELDS[key].search(first) for key in ("min", WARN_FRACTION)}
    if at["min"] and at[WARN_FRACTION] and at["min"].start() < at[WARN_FRACTION].start():
        fields = _json_fields(first)
        kind = fields.get("bound") or "hard"
        w = fields.get(WARN_FRACTION) or DEFAULT_WARN_FRACTION
        same = {"min": _float(fields["min"]), "max": _float(fields["max"]), WARN_FRACTION: float(w), "bound": kind}
        span = first[at["min"].start():at[WARN_FRACTION].end()]
        # element lines differ in "tensor"/"index", inside this span: no need to count it
        if "tensor" not in fields and span.count(field_text("max").encode()) == 1 \
                and span.count(field_text("bound").encode()) == 1 and body.count(span) == n:
            return same
        kind_at = _BOUND.search(first)
        if "tensor" in fields and kind_at is not None and at["min"].start() < kind_at.start():
            head = first[at["min"].start():kind_at.end()]
            if head.count(field_text("max").encode()) == 1 and body.count(head) == n:
                return dict(same, **{WARN_FRACTION: _constant_or_column(body, WARN_FRACTION, n)})
    out = {key: _constant_or_column(body, key, n) for key in ("min", "max", WARN_FRACTION)}
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
        if key != WARN_FRACTION:
            raise _NotPlain
        return DEFAULT_WARN_FRACTION  # histories from before the field existed
    values = _numbers([first.group(1)], 1) if body.count(first.group(0)) == n else _numbers(pattern.findall(body), n)
    if key == WARN_FRACTION:  # as ScaleBounds.take_bounds: a null (or 0) warn fraction means the default
        values = np.where(np.isnan(values) | (values == 0), DEFAULT_WARN_FRACTION, values)
    return float(values[0]) if len(values) == 1 else values


def _bound_kinds(body: bytes, n: int) -> Any:
    """``hard``/``soft`` for every line as one string, or a column of them."""
    if body.find(field_text("bound").encode()) < 0:
        return "hard"
    for kind in ("hard", "soft"):
        if body.count(field_text("bound").encode() + b'"' + kind.encode() + b'"') == n:
            return kind
    found = _BOUND.findall(body)
    if len(found) != n:
        raise _NotPlain
    return np.array([v.decode() for v in found], dtype=object)


def _changes(lo: Any, hi: Any, w: Any) -> List[Tuple[int, float, float, float]]:
    """Where the bounds took new values, as ``ScaleSeries.bound_changes`` wants them."""
    cols = [np.asarray(v, dtype=np.float64) for v in (lo, hi, w)]
    if all(c.ndim == 0 for c in cols):
        return [(0, float(lo), float(hi), float(w))]
    n = max(c.size for c in cols)
    full = np.stack([np.broadcast_to(c, (n,)) for c in cols])
    same = (full[:, 1:] == full[:, :-1]) | (np.isnan(full[:, 1:]) & np.isnan(full[:, :-1]))
    starts = np.concatenate(([0], np.flatnonzero(~same.all(axis=0)) + 1))
    return [(int(i), float(full[0, i]), float(full[1, i]), float(full[2, i])) for i in starts]


def _line_spans(body: bytes, marker: bytes) -> Iterator[Tuple[int, int]]:
    """``(start, end)`` of every line holding ``marker`` (found with bytes.find: for rare lines)."""
    hit = body.find(marker)
    while hit >= 0:
        start = body.rfind(NEWLINE, 0, hit) + 1
        end = body.find(NEWLINE, hit)
        yield start, end
        hit = body.find(marker, end)


def _lines_with(body: bytes, marker: bytes) -> np.ndarray:
    """The line numbers (within ``body``) of the lines holding ``marker``."""
    starts = [start for start, _ in _line_spans(body, marker)]
    if not starts:
        return np.empty(0, dtype=np.intp)
    return np.searchsorted(_line_ends(body), np.asarray(starts, dtype=np.intp))


def _alerts(body: bytes) -> Dict[str, List[Tuple[int, str, float]]]:
    """The alerts, from the few lines that carry any (read as JSON)."""
    out: Dict[str, List[Tuple[int, str, float]]] = {}
    for start, end in _line_spans(body, _ALERTED):
        record = _json_fields(body[start:end])
        scale = _float(record.get("scale"))
        out.setdefault(record["name"], []).extend((int(record["step"]), kind, scale) for kind in record[ALERTS])
    return out


def _line_ends(body: bytes, chunk: int = 1 << 26) -> np.ndarray:
    """The offsets of every newline, found a chunk at a time (a byte mask of the whole file would double it)."""
    view = np.frombuffer(body, dtype=np.uint8)
    parts = [np.flatnonzero(view[i:i + chunk] == 10) + i for i in range(0, len(view), chunk)]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.intp)


__all__ = ["BLOCK_BYTES", "HistoryColumns"]
