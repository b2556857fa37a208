"""Where readings go on disk: the run's history file, or memory if it cannot be written."""
from __future__ import annotations

import collections
import logging
import os
import warnings
from typing import Any, Deque, Dict, Iterable, List, Mapping, Optional, Sequence

from scalewatch.monitor.history import HistoryWriter, copy_history
from scalewatch.monitor.reading import Reading

log = logging.getLogger("scalewatch")

#: readings kept in memory when the log directory cannot be written
MEMORY_FALLBACK_RECORDS = 200_000


class HistorySink:
    """Appends records to the history file; falls back to a bounded in-memory buffer.

    A directory that cannot be written must not stop training: one warning, then
    the readings stay in memory (newest ``MEMORY_FALLBACK_RECORDS``) and in the
    loggers.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._writer: Optional[HistoryWriter] = HistoryWriter(path)
        self.memory: Deque[Dict[str, Any]] = collections.deque(maxlen=MEMORY_FALLBACK_RECORDS)

    @property
    def on_disk(self) -> bool:
        return self._writer is not None

    def resume(self, earlier_path: Optional[str], max_step: int) -> None:
        """Make the file hold exactly the earlier readings up to ``max_step``."""
        if self._writer is None:
            return
        try:
            src = earlier_path if earlier_path and os.path.exists(earlier_path) else self.path
            kept = copy_history(src, self.path, max_step)
            log.info("scalewatch: resumed history %s with %d earlier reading(s) up to step %d", self.path, kept, max_step)
        except OSError as err:
            self._fall_back(err)

    def append_readings(self, readings: Sequence[Reading], extra: Mapping[str, Any],
                        alerts: Mapping[str, List[str]]) -> None:
        """One check's readings, each with ``extra`` and the alerts that fired for it.

        Written straight from the readings (no dict per reading): the cost that counts
        when a check holds 16k per-head readings.
        """
        if self._writer is not None:
            try:
                self._writer.append_readings(readings, extra, alerts)
                return
            except OSError as err:
                self._fall_back(err)
        self.memory.extend(dict(r.to_record(), **extra, alerts=alerts.get(r.name, [])) for r in readings)

    def append(self, records: List[Dict[str, Any]]) -> None:
        if self._writer is not None:
            try:
                self._writer.append(records)
                return
            except OSError as err:
                self._fall_back(err)
        self.memory.extend(records)

    def records(self) -> Iterable[Dict[str, Any]]:
        """What was kept in memory (empty while the file is written)."""
        return list(self.memory)

    def _fall_back(self, err: OSError) -> None:
        # Only rank zero keeps a history, so this warns once per run.
        warnings.warn(f"scalewatch cannot write its history file {self.path!r} ({err}); training goes on, "
                       f"readings are kept in memory (last {MEMORY_FALLBACK_RECORDS}) and in the loggers",
                      stacklevel=2)
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError:
                pass
        self._writer = None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
