"""The history record: one JSON object per reading, appended as it is taken.

The file is JSON lines. Non-finite numbers are written as the tokens ``NaN``,
``Infinity`` and ``-Infinity`` (Python's ``json`` reads them back as floats).
Readers stream the file line by line, so memory stays flat however long it is,
and they skip a torn last line (a run killed mid-write) instead of failing.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, TextIO

from scalewatch.monitor.reading import Reading
from scalewatch.monitor.record_encoding import encode_record, reading_lines

HISTORY_FILENAME = "scalewatch_history.jsonl"
#: fields every record carries
RECORD_FIELDS = ("step", "name", "scale", "raw", "grad", "min", "max")


class HistoryWriter:
    """Appends records to a history file, flushing after every batch.

    A torn last line left by a killed run is cut off before the first append,
    so new records never glue onto a fragment.
    """

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)
        self._file: Optional[TextIO] = None

    def _open(self) -> TextIO:
        if self._file is None:
            directory = os.path.dirname(self.path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            _drop_torn_tail(self.path)
            self._file = open(self.path, "a", encoding="utf-8")
        return self._file

    def append(self, records: Iterable[Dict[str, Any]]) -> None:
        """Write ``records`` (JSON-ready dicts), one line each, and flush."""
        self._write("".join([encode_record(r) + "\n" for r in records]))

    def append_readings(self, readings: Sequence[Reading], extra: Optional[Mapping[str, Any]] = None,
                        alerts: Optional[Mapping[str, List[str]]] = None) -> None:
        """Write one check's readings as :func:`~scalewatch.monitor.record_encoding.reading_lines`
        does: the same lines as :meth:`append` of their records plus ``extra`` and ``alerts``,
        without building a dict per reading (16k element readings: about three times faster).
        """
        self._write(reading_lines(readings, extra, alerts))

    def _write(self, text: str) -> None:
        f = self._open()
        f.write(text)
        f.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _drop_torn_tail(path: str) -> None:
    """Cut a file back to its last newline (no-op for a missing or clean file)."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return
    if size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        # scan back in blocks for the last newline
        pos = size
        while pos > 0:
            start = max(0, pos - 65536)
            f.seek(start)
            block = f.read(pos - start)
            nl = block.rfind(b"\n")
            if nl >= 0:
                f.truncate(start + nl + 1)
                return
            pos = start
        f.truncate(0)


@dataclass
class ReadProblems:
    """What a reader passed over: counts and the first few line numbers."""

    torn_last_line: bool = False
    bad_lines: List[int] = field(default_factory=list)
    bad_count: int = 0

    def note_bad(self, lineno: int) -> None:
        self.bad_count += 1
        if len(self.bad_lines) < 10:
            self.bad_lines.append(lineno)

    def describe(self) -> str:
        parts = []
        if self.torn_last_line:
            parts.append("the last line is incomplete (was the run killed mid-write?) and was skipped")
        if self.bad_count:
            parts.append(f"{self.bad_count} unreadable line(s) skipped (first at line(s) {self.bad_lines})")
        return "; ".join(parts)


def parse_record(line: "str | bytes") -> Optional[Dict[str, Any]]:
    """One history line as a reading, or ``None`` if it is not one (garbled, torn, other JSON)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "step" in record and "name" in record else None


def iter_history(path: str, problems: Optional[ReadProblems] = None) -> Iterator[Dict[str, Any]]:
    """Stream the records of a history file, skipping lines that do not parse.

    Args:
        path: the ``.jsonl`` file.
        problems: filled in with what was skipped, if given.
    """
    problems = problems if problems is not None else ReadProblems()
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            record = parse_record(line)
            if record is None:
                if line.endswith("\n"):
                    problems.note_bad(lineno)
                else:
                    problems.torn_last_line = True
                continue
            yield record


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
                        out.write(json.dumps(record, allow_nan=True) + "\n")
                        kept += 1
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return kept
