"""The line encoder: history records as JSON text, fast enough for 16k element readings a check (torch-free).

Every line is what ``json.dumps(record)`` writes, byte for byte, in the layout of
:mod:`.format`: ``", "`` and ``": "`` separators, ASCII-escaped strings,
``NaN``/``Infinity`` for non-finite numbers, ``null`` for ``None``.
"""
from __future__ import annotations

import itertools
import json
from json.encoder import encode_basestring_ascii
from operator import attrgetter
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from scalewatch.monitor.display import IDENTITY
from scalewatch.monitor.history.format import (ALERTS, DISPLAY_FIELD, ELEMENT_FIELDS, ITEM_SEPARATOR, JSON_SPELLING,
                                               KEY_SEPARATOR, LINE_FIELDS, field_text)
from scalewatch.monitor.reading import Reading

try:
    from json.encoder import c_make_encoder
except ImportError:  # no C accelerator (another Python implementation)
    c_make_encoder = None


def _not_serializable(obj: Any) -> Any:
    raise TypeError(f"Object of type {obj.__class__.__name__} is not JSON serializable")


def _record_encoder() -> Callable[[Dict[str, Any]], str]:
    """``json.dumps`` with its defaults, with one C encoder made once instead of once per call.

    ``json.dumps`` builds a new C encoder for every record; at 16k records a check
    that set-up is a third of the encoding time. Same text, byte for byte.
    """
    if c_make_encoder is None:
        return json.dumps
    # markers=None: no circular-reference check, records are flat
    encoder = c_make_encoder(None, _not_serializable, encode_basestring_ascii, None, KEY_SEPARATOR, ITEM_SEPARATOR,
                             False, False, True)
    return lambda record: "".join(encoder(record, 0))


#: one record (a JSON-ready dict) as its line's text, without the newline: ``json.dumps(record)``
encode_record = _record_encoder()


def record_line(record: Mapping[str, Any]) -> str:
    """One record's whole line, newline included."""
    return encode_record(record) + "\n"


_NON_FINITE = {k: v for k, v in JSON_SPELLING.items() if k != "None"}


def _number(x: Any) -> str:
    # float.__repr__ / int.__repr__ are what json writes; anything else goes through json itself
    if x.__class__ is float:
        text = repr(x)
        return _NON_FINITE.get(text, text)
    if x.__class__ is int:
        return repr(x)
    if x is None:
        return "null"
    return encode_record(x)


_PLAIN = {float, int, type(None)}


def _numbers(values: List[Any]) -> List[str]:
    """JSON text of many numbers at once, as :func:`_number` writes each.

    ``repr`` of a list of floats, ints and ``None`` spells every item as ``repr``
    does, in C; split, and the rare ``nan``/``inf``/``None`` respelled as json
    writes them. Anything else (a numpy scalar, a bool) goes value by value.
    """
    if not set(map(type, values)) <= _PLAIN:
        return [_number(v) for v in values]
    text = repr(values)
    parts = text[1:-1].split(", ")
    if "n" in text or "N" in text:  # nan, inf or None somewhere: no finite float or int holds an n
        parts = [JSON_SPELLING.get(p, p) for p in parts]
    return parts


# ---- the line layout, from format.LINE_FIELDS ---------------------------------------------
#
# A line is: the per-line values (step, name, scale, raw, grad), the values a tensor's
# elements share (min, max, bound), clamp_fraction, then the end (tensor and index of an
# element, display, the check's extra fields, alerts). The reader is written for that order.

_PER_LINE = LINE_FIELDS[:5]
_SHARED = LINE_FIELDS[5:8]
_FRACTION = LINE_FIELDS[8]
assert _PER_LINE == ("step", "name", "scale", "raw", "grad") and _SHARED == ("min", "max", "bound") \
    and _FRACTION == "clamp_fraction" and LINE_FIELDS[9:] == ELEMENT_FIELDS + (DISPLAY_FIELD,), \
    "the encoder's grouping must follow format.LINE_FIELDS"


def _item(key: str) -> str:
    """``, "key": `` : how a field after the first starts."""
    return ITEM_SEPARATOR + field_text(key)


_SLOTS = ("st", "n", "sc", "ra", "gr")  # the per-line values, in _PER_LINE order
#: the f-string of one line, built from the declared order: per-line slots, then the shared part
#: ``mi`` (ending with the separator before clamp_fraction), ``fr``, and the end ``en``
LINE_TEMPLATE = ("{{" + field_text(_PER_LINE[0]) + "{st}" + "".join(_item(k) + "{" + s + "}" for k, s in
                                                                    zip(_PER_LINE[1:], _SLOTS[1:]))
                 + "{mi}" + field_text(_FRACTION) + "{fr}{en}}}\n")
# Compiled once as a literal f-string (what a hand-written one costs): a format call per line would be ~1.7x slower.
_lines: Callable[..., List[str]] = eval(  # noqa: S307 - built above from constants only
    f"lambda *columns: [f{LINE_TEMPLATE!r} for {', '.join(_SLOTS)}, mi, fr, en in zip(*columns)]")
_MIN, _MAX, _BOUND = (_item(k) for k in _SHARED)
_TENSOR, _INDEX = (_item(k) for k in ELEMENT_FIELDS)
_DISPLAY = _item(DISPLAY_FIELD)
_ALERTS = _item(ALERTS)
_NONE_FIRED = _ALERTS + "[]"

_shared_fields = attrgetter(*_SHARED, "tensor", "display")


def reading_lines(readings: Sequence[Reading], extra: Optional[Mapping[str, Any]] = None,
                  alerts: Optional[Mapping[str, List[str]]] = None) -> str:
    """The history lines of one check: each reading's record, then ``extra``, then its ``alerts``.

    Byte for byte what ``"".join(json.dumps(record) + "\\n" ...)`` writes for
    ``record = {**r.to_record(), **extra, "alerts": alerts.get(r.name, [])}``
    (no ``alerts`` key when ``alerts`` is ``None``), about three times faster: the
    parts a tensor's elements share (bounds, bound kind, tensor name, ``extra``) are
    encoded once per tensor, not once per element.

    Args:
        readings: one check's readings.
        extra: more fields for every record, e.g. ``{"warn_fraction": 0.9, "patience": 3}``;
            keys must differ from the reading's fields and ``"alerts"``.
        alerts: the alert kinds that fired at this check, by reading name.

    Raises:
        ValueError: for an ``extra`` key that is a reading field or ``"alerts"``.

    Example::

        writer.append_readings(readings, {"warn_fraction": 0.9, "patience": 3}, {"logit_scale": ["pinned"]})
    """
    extra_text = _extra_text(extra)
    if not readings:
        return ""
    # Columns of numbers become JSON text in one C-level repr of a list each: per-value
    # Python calls were most of a 16k-reading check.
    step_values = [r.step for r in readings]
    steps = ([_number(step_values[0])] * len(step_values) if step_values.count(step_values[0]) == len(step_values)
             else _numbers(step_values))  # one check: one step
    raw_values = [r.raw for r in readings]
    scale_values = [r.scale for r in readings]
    raws = _numbers(raw_values)
    # Inside its bounds a scale equals its raw value: one float repr (the costly part) for both.
    # (Not with a 0.0 in it: -0.0 == 0.0, but they print differently.)
    scales = raws if scale_values == raw_values and 0.0 not in raw_values else _numbers(scale_values)
    grads = _numbers([r.grad for r in readings])
    fractions = _numbers([r.clamp_fraction for r in readings])
    names = [encode_basestring_ascii(r.name) for r in readings]
    # What a reading shares with its neighbours (a tensor's elements come one after another):
    # encoded once per run of readings with the same bounds, tensor and display.
    none_fired = "" if alerts is None else _NONE_FIRED
    middles: List[str] = []
    ends: List[str] = []
    for (lo, hi, bound, tensor, display), run in itertools.groupby(readings, key=_shared_fields):
        group = list(run)
        middles += [f"{_MIN}{_number(lo)}{_MAX}{_number(hi)}{_BOUND}{encode_record(bound)}{ITEM_SEPARATOR}"] * len(group)
        after = ("" if display == IDENTITY else f"{_DISPLAY}{encode_record(display)}") + extra_text + none_fired
        if group[0].index is None:  # to_record() keeps tensor and index only for an element
            ends += [after] * len(group)
        else:
            before = f"{_TENSOR}{encode_record(tensor)}{_INDEX}"
            ends += [f"{before}{r.index}{after}" for r in group]
    if alerts:
        fired_at = {name: kinds for name, kinds in alerts.items() if kinds}
        for i, r in enumerate(readings):
            kinds = fired_at.get(r.name)
            if kinds:
                ends[i] = ends[i][:len(ends[i]) - len(none_fired)] + f"{_ALERTS}{encode_record(kinds)}"
    return "".join(_lines(steps, names, scales, raws, grads, middles, fractions, ends))


def _extra_text(extra: Optional[Mapping[str, Any]]) -> str:
    extra = extra or {}
    clash = sorted(set(extra) & set(LINE_FIELDS + (ALERTS,)))
    if clash:
        raise ValueError(f"`extra` keys must not be reading fields or 'alerts', got {clash}")
    return "".join(ITEM_SEPARATOR + encode_record({k: v})[1:-1] for k, v in extra.items())  # '"k": v'


def _row_text(layout: Any) -> Tuple[List[str], List[str], List[str], List[str], frozenset]:
    """Per row of a :class:`~scalewatch.monitor.check_columns.ScaleLayout`: the encoded name, the shared
    part (bounds, kind), the end before ``extra`` (tensor, index, display) and the row's own fields after
    it (``record_fields``), with those fields' keys. Fixed for a watch: kept."""
    cached = layout.cache.get("history_rows")
    if cached is None:
        names = [encode_basestring_ascii(n) for n in layout.names]
        middles, tails, own = [], [], []
        for lo, hi, bound, tensor, index, display in zip(layout.mins, layout.maxs, layout.bounds, layout.tensors,
                                                          layout.indexes, layout.displays):
            middles.append(f"{_MIN}{_number(lo)}{_MAX}{_number(hi)}{_BOUND}{encode_record(bound)}{ITEM_SEPARATOR}")
            tail = "" if index is None else f"{_TENSOR}{encode_record(tensor)}{_INDEX}{index}"
            tails.append(tail + ("" if display == IDENTITY else f"{_DISPLAY}{encode_record(display)}"))
        fields = layout.record_fields
        keys = frozenset(k for f in fields if f for k in f)
        texts = {id(f): _extra_text(f) for f in fields if f}  # the rows of one scale share its dict
        own = [texts[id(f)] if f else "" for f in fields]
        cached = layout.cache["history_rows"] = (names, middles, tails, own, keys)
    return cached


def _column_numbers(values: Any, present: Any = None) -> List[str]:
    """A float64 column as JSON numbers; rows where ``present`` is False as ``null``."""
    if present is not None and len(present) and not present.any():  # (attention statistics: no gradient)
        return [JSON_SPELLING["None"]] * len(present)
    items = values.tolist()
    if present is not None and not present.all():
        for i in (~present).nonzero()[0].tolist():
            items[i] = None
    return _numbers(items)


def column_lines(columns: Any, extra: Optional[Mapping[str, Any]] = None,
                 alerts: Optional[Mapping[str, List[str]]] = None) -> str:
    """:func:`reading_lines` of one check's :class:`~scalewatch.monitor.check_columns.CheckColumns`:
    the same text, byte for byte, with no object per reading; what a watch's rows share is
    encoded once per watch, not once per check. A row whose scale brings ``record_fields`` (an
    attention statistic: ``{"attention": "entropy"}``) has them after ``extra``."""
    extra_text = _extra_text(extra)
    n = len(columns)
    if not n:
        return ""
    names, middles, tails, own, own_keys = _row_text(columns.layout)
    if extra and own_keys & set(extra):
        raise ValueError(f"`extra` keys must not be fields the readings bring themselves, got "
                         f"{sorted(own_keys & set(extra))}")
    steps = [_number(int(columns.step))] * n
    raws = _column_numbers(columns.raw)
    same = columns.scale.tobytes() == columns.raw.tobytes()  # bit for bit (-0.0 and NaN payloads included)
    scales = raws if same else _column_numbers(columns.scale)
    grads = _column_numbers(columns.grad, columns.has_grad)
    fractions = _column_numbers(columns.clamp_fraction, columns.has_fraction)
    none_fired = "" if alerts is None else _NONE_FIRED
    suffix = extra_text + none_fired
    if own_keys:
        ends = [t + extra_text + o + none_fired for t, o in zip(tails, own)]
    else:
        ends = [t + suffix for t in tails]
    if alerts:
        for name, kinds in alerts.items():
            row = columns.layout.row(name)
            if kinds and row is not None:
                ends[row] = tails[row] + extra_text + own[row] + f"{_ALERTS}{encode_record(kinds)}"
    return "".join(_lines(steps, names, scales, raws, grads, middles, fractions, ends))


__all__ = ["LINE_TEMPLATE", "column_lines", "encode_record", "reading_lines", "record_line"]
