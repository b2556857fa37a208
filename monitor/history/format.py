"""The history line's format, declared once: the file name, the fields and their order, the JSON spelling.

A history line is ``json.dumps`` of one flat dict (``", "`` and ``": "``
separators, ASCII-escaped strings, ``NaN``/``Infinity``/``-Infinity`` for
non-finite numbers, ``null`` for ``None``) with its fields in this order:

    step, name, scale, raw, grad, min, max, bound, clamp_fraction,   (every line)
    tensor, index,                                                   (an element NAME[i] of a tensor)
    display,                                                         (other than "identity")
    warn_fraction, patience, skipped_step,                           (the check's settings)
    alerts                                                           (the kinds that fired; [] when none)

The encoder (:mod:`.encoding`) writes this layout; the column reader
(:mod:`.columns`) builds its byte patterns from it. Older files (no ``bound``,
no ``warn_fraction``, no ``alerts``) still read: only :data:`RECORD_FIELDS` are
required of a line.
"""
from __future__ import annotations

from scalewatch.monitor.reading import READING_FIELDS
from scalewatch.monitor.rules import SKIPPED_STEP

HISTORY_FILENAME = "scalewatch_history.jsonl"

#: fields every record carries
RECORD_FIELDS = ("step", "name", "scale", "raw", "grad", "min", "max")
#: a reading's fields, in the order a line holds them (:class:`~scalewatch.monitor.reading.Reading`'s own)
LINE_FIELDS = READING_FIELDS
#: on element lines only (``TENSOR[i]``): ``tensor`` and ``index``
ELEMENT_FIELDS = ("tensor", "index")
#: only when not ``"identity"``
DISPLAY_FIELD = "display"
WARN_FRACTION = "warn_fraction"
PATIENCE = "patience"
#: the check's settings, after the reading's fields (``skipped_step`` only on a check a gradient scaler skipped)
EXTRA_FIELDS = (WARN_FRACTION, PATIENCE, SKIPPED_STEP)
#: last: the alert kinds that fired at this reading
ALERTS = "alerts"

#: what separates ``"key"`` from its value, and one field from the next (``json.dumps``'s defaults)
KEY_SEPARATOR = ": "
ITEM_SEPARATOR = ", "
#: how a non-finite float and ``None`` are spelled (``repr`` -> JSON)
JSON_SPELLING = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity", "None": "null"}

assert RECORD_FIELDS == LINE_FIELDS[:len(RECORD_FIELDS)], "the required fields lead every line"
assert set(ELEMENT_FIELDS) | {DISPLAY_FIELD} <= set(LINE_FIELDS)


def field_text(key: str) -> str:
    """How a field starts on a line: ``"key": `` (the value follows)."""
    return f'"{key}"{KEY_SEPARATOR}'


__all__ = ["ALERTS", "DISPLAY_FIELD", "ELEMENT_FIELDS", "EXTRA_FIELDS", "HISTORY_FILENAME", "ITEM_SEPARATOR",
           "JSON_SPELLING", "KEY_SEPARATOR", "LINE_FIELDS", "PATIENCE", "RECORD_FIELDS", "SKIPPED_STEP",
           "WARN_FRACTION", "field_text"]
