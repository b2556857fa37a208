"""Where readings go on disk: the run's history file, or memory if it cannot be written."""
from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import warnings
from typing import Any, Deque, Dict, Iterable, List, Mapping, Optional, Sequence

from scalewatch.monitor.history import HistoryWriter, copy_history
from scalewatch.monitor.reading import Reading

log = logging.getLogger("scalewatch")

#: readings kept in memory when the log directory cannot be written
MEMORY_FALLBACK_RECORDS = 200_000
#: checks at most this far behind on the writer thread before a check waits for it
BACKGROUND_QUEUE_CHECKS = 4


class HistoryRecorder:
    """Appends records to the history file; falls back to a bounded in-memory buffer.

    A directory that cannot be written must not stop training: one warning, then
    the readings stay in memory (newest ``MEMORY_FALLBACK_RECORDS``) and in the
    loggers.

    Args:
        path: the history file.
        background: turn a check's readings into lines and write them on a writer
            thread, so the training thread only hands them over. For watches of
            thousands of values (16k per-head readings: tens of milliseconds of
            encoding a check); lines still land in check order, and everything that
            reads the file (resume, the plot, :meth:`close`) waits for the thread first.
            A run killed with checks still queued loses those (at most
            ``BACKGROUND_QUEUE_CHECKS``); small watches write on the spot.
    """

    def __init__(self, path: str, background: bool = False) -> None:
        self.path = path
        self._writer: Optional[HistoryWriter] = HistoryWriter(path)
        self.memory: Deque[Dict[str, Any]] = collections.deque(maxlen=MEMORY_FALLBACK_RECORDS)
        self._queue: Optional["queue.Queue[Any]"] = None
        self._thread: Optional[threading.Thread] = None
        if background:
            self._queue = queue.Queue(maxsize=BACKGROUND_QUEUE_CHECKS)
            self._thread = threading.Thread(target=self._drain, name="scalewatch-history", daemon=True)
            self._thread.start()

    def _drain(self) -> None:
        assert self._queue is not None
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._write_readings(*job)
            finally:
                self._queue.task_done()

    def wait(self) -> None:
        """Block until every handed-over check is in the file (no-op without a writer thread)."""
        if self._queue is not None:
            self._queue.join()

    @property
    def on_disk(self) -> bool:
        return self._writer is not None

    def resume(self, earlier_path: Optional[str], max_step: int) -> None:
        """Make the file hold exactly the earlier readings up to ``max_step``."""
        self.wait()
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
        when a check holds 16k per-head readings. With a writer thread, only handed over.
        """
        if self._queue is not None:
            self._queue.put((readings, extra, alerts))
            return
        self._write_readings(readings, extra, alerts)

    def _write_readings(self, readings: Sequence[Reading], extra: Mapping[str, Any],
                        alerts: Mapping[str, List[str]]) -> None:
        if self._writer is not None:
            try:
                self._writer.append_readings(readings, extra, alerts)
                return
            except OSError as err:
                self._fall_back(err)
        own: List[Any] = [None] * len(readings)
        if hasattr(readings, "layout"):  # a check's CheckColumns: the rows' own fields too
            own = readings.layout.record_fields
            readings = readings.readings()
        self.memory.extend(dict(r.to_record(), **extra, **(o or {}), alerts=alerts.get(r.name, []))
                           for r, o in zip(readings, own))

    def records(self) -> Iterable[Dict[str, Any]]:
        """What was kept in memory (empty while the file is written)."""
        self.wait()
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
        if self._thread is not None and self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = self._queue = None
        if self._writer is not None:
            self._writer.close()
