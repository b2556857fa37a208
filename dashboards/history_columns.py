"""A whole history file read into per-scale :class:`ScaleSeries`, fast: the column reader of
:mod:`scalewatch.monitor.history.columns` with the dashboards' series type.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

from scalewatch.dashboards.series import ScaleSeries, collect_series
from scalewatch.monitor.history import columns as _columns
from scalewatch.monitor.history.columns import BLOCK_BYTES  # noqa: F401 (importable here)
from scalewatch.monitor.history.lines import ReadProblems
from scalewatch.monitor.history.reader import iter_history


class HistoryColumns(_columns.HistoryColumns):
    __doc__ = _columns.HistoryColumns.__doc__

    def _new_series(self, **fields: Any) -> ScaleSeries:
        return ScaleSeries(**fields)

    def _collect(self, records: Iterable[Dict[str, Any]], names: Optional[Iterable[str]] = None) -> Dict[str, Any]:
        return collect_series(records, names)

    def _record_by_record(self) -> Dict[str, ScaleSeries]:
        self._blocks, self._picks = [], {}
        return _record_by_record(self.path, self.problems)


def _record_by_record(path: str, problems: ReadProblems) -> Dict[str, ScaleSeries]:
    """The slow path: every line parsed as JSON (a file not of the plain shape)."""
    return collect_series(iter_history(path, problems))


def read_series(path: str, problems: Optional[ReadProblems] = None, gradient: bool = True) -> Dict[str, ScaleSeries]:
    """Every scale's series in a history file, in the order the scales first appear.

    Args:
        path: the history ``.jsonl``.
        problems: filled in with what was skipped (a torn last line, unreadable lines).
        gradient: also read ``raw`` and ``grad`` for every reading; without it
            the series keep only their last values (:attr:`ScaleSeries.last_raw`,
            ``last_grad``), which saves two of the four column scans.

    Raises:
        OSError: the file cannot be read.
    """
    return HistoryColumns(path, problems, gradient).series


__all__ = ["BLOCK_BYTES", "HistoryColumns", "read_series"]
