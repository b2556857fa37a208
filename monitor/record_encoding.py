"""Moved: the line encoder is :mod:`scalewatch.monitor.history.encoding`. These names stay importable here."""
from scalewatch.monitor.history.encoding import encode_record, reading_lines, record_line

__all__ = ["encode_record", "reading_lines", "record_line"]
