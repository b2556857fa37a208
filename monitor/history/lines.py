"""Lines of a history file, and the one rule for its last line (torch- and numpy-free).

A line is complete when its newline is written: the writer appends whole lines
and flushes, so only a run killed mid-write leaves anything after the last
newline. What is there (the *tail*) is one of:

- nothing, or only blanks: the file is clean;
- a whole record without its newline (a file written by other means): a reading,
  read like any other line (and the writer ends it with its newline before appending);
- anything else: a **torn last line**, skipped by every reader and reported
  (:attr:`ReadProblems.torn_last_line`), and cut off by the next writer.

A complete line that is not a record is a bad line: skipped, counted, reported.
Every reader of this package (the stream reader, the column reader, the live
follower, :func:`has_torn_tail`) and the writer apply these functions; the live
follower holds a tail back until its newline arrives (it may be a write in progress).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from scalewatch.monitor.history.format import RECORD_FIELDS

NEWLINE = b"\n"
#: bytes read from the end of a file to find its tail (a line is far shorter)
TAIL_BYTES = 65536


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


_REQUIRED = RECORD_FIELDS[:2]  # step and name: what makes a JSON object a reading


def parse_record(line: Union[str, bytes]) -> Optional[Dict[str, Any]]:
    """One history line as a reading, or ``None`` if it is not one (garbled, torn, other JSON)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and all(k in record for k in _REQUIRED) else None


def is_blank(text: Union[str, bytes]) -> bool:
    return not text.strip()


def split_tail(data: bytes) -> Tuple[bytes, bytes]:
    """``(complete lines, tail)``: ``data`` cut after its last newline."""
    cut = data.rfind(NEWLINE) + 1
    return data[:cut], data[cut:]


def read_tail(tail: Union[str, bytes]) -> Tuple[Optional[Dict[str, Any]], bool]:
    """The rule for what follows the last newline: ``(record or None, torn)``.

    Blank: ``(None, False)``; a whole record: ``(record, False)``; else ``(None, True)``.
    """
    if is_blank(tail):
        return None, False
    if isinstance(tail, bytes):
        tail = tail.decode("utf-8", errors="replace")
    record = parse_record(tail)
    return record, record is None


def file_tail(path: str) -> Tuple[int, bytes]:
    """``(offset, tail)`` of a file: where its text after the last newline starts, and that text."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = pos = f.tell()
        while pos > 0:
            start = max(0, pos - TAIL_BYTES)
            f.seek(start)
            block = f.read(pos - start)
            nl = block.rfind(NEWLINE)
            if nl >= 0:
                offset = start + nl + 1
                f.seek(offset)
                return offset, f.read(end - offset)
            pos = start
        f.seek(0)
        return 0, f.read()


def has_torn_tail(path: str) -> bool:
    """Whether the file's last line is torn (cheap: reads only what follows the last newline)."""
    return read_tail(file_tail(path)[1])[1]


def mend_tail(path: str) -> None:
    """Make a file end with a complete line before appending: cut a torn tail, end a whole record's line.

    No-op for a missing, empty or clean file.
    """
    try:
        if os.path.getsize(path) == 0:
            return
    except OSError:
        return
    offset, tail = file_tail(path)
    if not tail:
        return
    record, torn = read_tail(tail)
    with open(path, "rb+") as f:
        if record is not None:
            f.seek(0, os.SEEK_END)
            f.write(NEWLINE)
        else:  # torn, or blanks without a newline
            f.truncate(offset)


__all__ = ["NEWLINE", "ReadProblems", "file_tail", "has_torn_tail", "is_blank", "mend_tail", "parse_record",
           "read_tail", "split_tail"]
