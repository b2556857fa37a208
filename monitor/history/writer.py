"""The writer: appends a check's lines to the history file and flushes them, as they are taken."""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, TextIO

from scalewatch.monitor.history.encoding import column_lines, reading_lines, record_line
from scalewatch.monitor.history.lines import mend_tail
from scalewatch.monitor.history.reader import iter_history
from scalewatch.monitor.reading import Reading


class HistoryWriter:
    """Appends records to a history file, flushing after every batch.

    A torn last line left by a killed run is cut off before the first append
    (:func:`~scalewatch.monitor.history.lines.mend_tail`), so new records never
    glue onto a fragment.
    """

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)
        self._file: Optional[TextIO] = None

    def _open(self) -> TextIO:
        if self._file is None:
            directory = os.path.dirname(self.path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            mend_tail(self.path)
            self._file = open(self.path, "a", encoding="utf-8")
        return self._file

    def append(self, records: Iterable[Dict[str, Any]]) -> None:
        """Write ``records`` (JSON-ready dicts), one line each, and flush."""
        self._write("".join([record_line(r) for r in records]))

    def append_readings(self, readings: Sequence[Reading], extra: Optional[Mapping[str, Any]] = None,
                        alerts: Optional[Mapping[str, List[str]]] = None) -> None:
        """Write one check's readings as :func:`~scalewatch.monitor.history.encoding.reading_lines`
        does: the same lines as :meth:`append` of their records plus ``extra`` and ``alerts``,
        without building a dict per reading (16k element readings: about three times faster).
        """
        # one check's CheckColumns (the engine's check path) or a list of readings
        lines = column_lines if hasattr(readings, "layout") else reading_lines
        self._write(lines(readings, extra, alerts))

    def _write(self, text: str) -> None:
        f = self._open()
        f.write(text)
        f.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def copy_history(src: str, dst: str, max_step: int) -> int:
    """Write the records of ``src`` with ``step <= max_step`` to ``dst``, atomically.

    ``src`` and ``dst`` may be the same file (cutting a history back on resume).
    Returns the number of records kept.
    """
    directory = os.path.dirname(os.path.abspath(dst))
    os.makedirs(directory, exist_ok=True)
    kept = 0
    fd, tmp = tempfile.mkstemp(prefix=".scalewatch_", suffix=".jsonl", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            if os.path.exists(src):
                for record in iter_history(src):
                    if record["step"] <= max_step:
                        out.write(record_line(record))
                        kept += 1
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return kept


__all__ = ["HistoryWriter", "copy_history"]
