"""The stream reader: a history file's records one at a time, memory flat however long the file."""
from __future__ import annotations

from typing import Any, Dict, Iterator, Optional

from scalewatch.monitor.history.lines import ReadProblems, is_blank, parse_record, read_tail


def iter_history(path: str, problems: Optional[ReadProblems] = None) -> Iterator[Dict[str, Any]]:
    """Stream the records of a history file, skipping lines that do not parse.

    Complete lines that are not records count as bad lines; what follows the last
    newline is judged by :func:`~scalewatch.monitor.history.lines.read_tail`.

    Args:
        path: the ``.jsonl`` file.
        problems: filled in with what was skipped, if given.
    """
    problems = problems if problems is not None else ReadProblems()
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.endswith("\n"):  # the tail: only ever the last one
                record, torn = read_tail(line)
                problems.torn_last_line = problems.torn_last_line or torn
                if record is not None:
                    yield record
                continue
            if is_blank(line):
                continue
            record = parse_record(line)
            if record is None:
                problems.note_bad(lineno)
                continue
            yield record


__all__ = ["iter_history"]
