"""How history records become JSON text, fast enough for 16k element readings a check (torch-free).

Every line is what ``json.dumps(record)`` writes, byte for byte: ``", "`` and
``": "`` separators, ASCII-escaped strings, ``NaN``/``Infinity`` for non-finite
numbers, ``null`` for ``None``.
"""
from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from scalewatch.monitor.display import IDENTITY
from scalewatch.monitor.reading import READING_FIELDS, Reading

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
    encoder = c_make_encoder(None, _not_serializable, encode_basestring_ascii, None, ": ", ", ", False, False, True)
    return lambda record: "".join(encoder(record, 0))


encode_record = _record_encoder()

_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


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
    extra = extra or {}
    clash = sorted(set(extra) & set(READING_FIELDS + ("alerts",)))
    if clash:
        raise ValueError(f"`extra` keys must not be reading fields or 'alerts', got {clash}")
    extra_text = "".join(", " + encode_record({k: v})[1:-1] for k, v in extra.items())  # '"k": v', as json writes it
    lines: List[str] = []
    append = lines.append
    shared_key: Any = None
    head = tail = ""
    for r in readings:
        key = (r.min, r.max, r.bound, r.tensor)
        if key != shared_key:  # a tensor's elements come one after another: encode what they share once
            shared_key = key
            head = f'"min": {_number(r.min)}, "max": {_number(r.max)}, "bound": {encode_record(r.bound)}, '
            tail = f', "tensor": {encode_record(r.tensor)}, "index": '
        # to_record() keeps tensor and index only for an element (index not None)
        tensor_part = "" if r.index is None else tail + _number(r.index)
        display = "" if r.display == IDENTITY else f', "display": {encode_record(r.display)}'
        fired = "" if alerts is None else f', "alerts": {encode_record(alerts.get(r.name, []))}'
        raw = _number(r.raw)
        # inside its bounds a scale equals its raw value: one float repr (the costly part) for both
        # (0.0 excepted: -0.0 == 0.0 but they print differently)
        scale = raw if r.scale == r.raw and r.scale != 0.0 and r.scale.__class__ is r.raw.__class__ \
            else _number(r.scale)
        append(f'{{"step": {_number(r.step)}, "name": {encode_basestring_ascii(r.name)}, '
               f'"scale": {scale}, "raw": {raw}, "grad": {_number(r.grad)}, {head}'
               f'"clamp_fraction": {_number(r.clamp_fraction)}{tensor_part}{display}{extra_text}{fired}}}\n')
    return "".join(lines)
