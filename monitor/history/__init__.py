"""The history record codec: one JSON object per reading, appended as it is taken.

The file is JSON lines (:data:`HISTORY_FILENAME` in the run's log directory).
Non-finite numbers are written as the tokens ``NaN``, ``Infinity`` and
``-Infinity`` (Python's ``json`` reads them back as floats). Readers stream the
file, so memory stays flat however long it is, and they skip a torn last line (a
run killed mid-write) instead of failing.

One module per concept, each format declared once:

- :mod:`.format`    the file name, the fields and their order, the JSON spelling
- :mod:`.lines`     complete lines and the one torn-last-line rule; :class:`ReadProblems`
- :mod:`.encoding`  the line encoder (:func:`encode_record`, :func:`reading_lines`)
- :mod:`.writer`    :class:`HistoryWriter`, :func:`copy_history`
- :mod:`.reader`    the stream reader, :func:`iter_history`
- :mod:`.columns`   the column reader: a whole file into per-scale numpy columns (numpy)
- :mod:`.follower`  :class:`HistoryFollower`: the lines appended since the last look (``scalewatch watch``)
- :mod:`.keys`      the logger-key codec: ``scalewatch/NAME/FIELD`` and the per-tensor summary keys
"""
import importlib
from typing import Any

from scalewatch.monitor.history.encoding import encode_record, reading_lines, record_line
from scalewatch.monitor.history.format import HISTORY_FILENAME, RECORD_FIELDS
from scalewatch.monitor.history.lines import ReadProblems, has_torn_tail, parse_record
from scalewatch.monitor.history.reader import iter_history
from scalewatch.monitor.history.writer import HistoryWriter, copy_history

# loaded on first use: the column reader needs numpy, the command line starts without it
_LAZY = {"HistoryColumns": "columns", "HistoryFollower": "follower", "metric_key": "keys",
         "parse_metric_key": "keys", "reading_metrics": "keys"}

__all__ = ["HISTORY_FILENAME", "RECORD_FIELDS", "HistoryWriter", "ReadProblems", "copy_history", "encode_record",
           "has_torn_tail", "iter_history", "parse_record", "reading_lines", "record_line"] + sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"scalewatch.monitor.history.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'scalewatch.monitor.history' has no attribute {name!r}")
