"""The live follower: the records of the lines appended to a history file since the last look.

``scalewatch watch`` tails the file by byte offset, so each refresh reads only what
was appended. What follows the last newline is held back until its newline
arrives (a write in progress); if it never does, it is the torn last line of
:mod:`.lines`, and :attr:`HistoryFollower.torn_last_line` says so. The offset
kept is that of the first line not yet complete, and that line is read again at
the next look: so a writer that mends the tail before appending (cuts a torn
line, ends a whole record's line) loses or repeats nothing.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterator, Optional, Tuple

from scalewatch.monitor.history.lines import NEWLINE, is_blank, parse_record, read_tail

#: bytes read at a time (memory stays flat however much was appended)
READ_CHUNK = 1 << 20


class HistoryFollower:
    """Reads the complete lines appended to a history file since the last read.

    Call :meth:`check` (``True``: the file was replaced or cut back, e.g. on a
    resume, and is read again from the start), then iterate :meth:`read`.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.bad_lines = 0
        self._switched = False
        self._pos = 0
        self._partial = b""
        self._ident: Optional[Tuple[int, int]] = None
        #: when the file was last written (``None`` before it exists)
        self.mtime: Optional[float] = None

    @property
    def waiting_for_rest(self) -> bool:
        """A line was started but not finished (a write in progress, or a run killed mid-write)."""
        return not is_blank(self._partial)

    @property
    def torn_last_line(self) -> bool:
        """What follows the last newline read so far is torn, by the rule of :func:`~.lines.read_tail`
        (it may still be completed by a write in progress)."""
        return read_tail(self._partial)[1]

    def retarget(self, path: str) -> None:
        """Follow another file from its start (a newer run appeared); :meth:`check` says so."""
        self.path, self._pos, self._partial, self._ident, self._switched = path, 0, b"", None, True

    def check(self) -> bool:
        """Look at the file; ``True`` if what was read before no longer stands."""
        if self._switched:
            self._switched = False
            return True
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        ident = (st.st_dev, st.st_ino)
        self.mtime = st.st_mtime
        start_over = self._ident is not None and ident != self._ident
        if not start_over and st.st_size < self._pos:  # cut back before lines already read (a resume)
            start_over = True
        self._ident = ident
        if start_over:
            self._pos, self._partial = 0, b""
        return start_over

    def read(self) -> Iterator[Dict[str, Any]]:
        """The records of the lines completed since the last read, in chunks (memory stays flat)."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        with f:
            f.seek(self._pos)  # the start of the first line not yet complete
            pending = b""
            while True:
                data = f.read(READ_CHUNK)
                if not data:
                    self._partial = pending
                    return
                lines = (pending + data).split(NEWLINE)
                pending = lines.pop()
                for line in lines:
                    self._pos += len(line) + len(NEWLINE)
                    record = self._parse(line)
                    if record is not None:
                        yield record

    def _parse(self, line: bytes) -> Optional[Dict[str, Any]]:
        if is_blank(line):
            return None
        record = parse_record(line)
        if record is None:
            self.bad_lines += 1
        return record


__all__ = ["READ_CHUNK", "HistoryFollower"]
