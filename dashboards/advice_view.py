"""A run's advice (:mod:`scalewatch.monitor.advice`) from what the dashboards read: a history file or logger records.

The advice needs every reading's raw value and gradient only for the scales where a
rule held; the others are judged quiet from their scale alone with the rule book
(:func:`~scalewatch.monitor.rules.near_counts`, their alerts, finiteness), so a history
of a thousand quiet per-head tensors is read once, without its gradients.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Iterable, Iterator, List, Optional, Set, Tuple

import numpy as np

from scalewatch.dashboards.history_columns import HistoryColumns
from scalewatch.dashboards.series import ScaleSeries, collect_series
from scalewatch.monitor.advice import Advice, run_advice
from scalewatch.monitor.history import ReadProblems
from scalewatch.monitor.rules import closeness, near_counts

#: how much of a history's end is read to find the bias generators' scales (their lines carry clamp_fraction)
TAIL_BYTES = 1 << 20


def needs_look(s: ScaleSeries) -> bool:
    """Whether a rule may have held at some reading of ``s``: an alert, a reading beyond a warning line,
    a non-finite scale, or a scale at a bound (where ``pinned`` may hold). Judged on the scale alone."""
    if s.alerts:
        return True
    scale = np.asarray(s.scale, dtype=np.float64)
    if len(scale) == 0:
        return False
    if not np.isfinite(scale).all() or s.skipped:
        return True
    for start, end, lo, hi, w in s.bound_spans():
        up, down = near_counts(scale[start:end], lo, hi, w)
        if up or down:
            return True
        lo_b = None if lo != lo else lo
        hi_b = None if hi != hi else hi
        part = scale[start:end]
        if closeness(float(part.min()), lo_b, hi_b) == 0.0 or closeness(float(part.max()), lo_b, hi_b) == 0.0:
            return True
    return False


def generators_in_history(path: str) -> Set[str]:
    """Names (and tensors) whose lines at the history's end carry a ``clamp_fraction``: the bias generators."""
    found: Set[str] = set()
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            tail = f.read().split(b"\n")
    except OSError:
        return found
    for line in tail[1:] if size > TAIL_BYTES else tail:
        if b'"clamp_fraction"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("clamp_fraction") is not None:
            found.add(record.get("tensor") or record["name"])
            found.add(record["name"])
    return found


def history_series_and_advice(path: str, problems: Optional[ReadProblems] = None
                              ) -> Tuple[Dict[str, ScaleSeries], List[Advice]]:
    """A history file read once: every scale's series (without gradients but those advice needs) and the advice."""
    columns = HistoryColumns(path, problems, gradient=False)
    series = columns.series
    looked = [s for s in series.values() if needs_look(s)]
    columns.fill_gradient(looked)
    quiet = {name for name, s in series.items() if not s.has_gradient and not needs_look(s)}
    return series, run_advice(series.values(), generators_in_history(path), quiet=quiet)


def series_advice(series: Dict[str, ScaleSeries], history_path: Optional[str] = None,
                  generators: Iterable[str] = ()) -> List[Advice]:
    """The advice for series already read; those a rule may have held for and that were read without
    gradients get them from ``history_path`` (a history file) first."""
    looked = [s for s in series.values() if not s.has_gradient and needs_look(s)]
    gens = set(generators)
    if history_path is not None:
        gens |= generators_in_history(history_path)
        if looked:
            again = HistoryColumns(history_path, gradient=False)
            fresh = [again.series[s.name] for s in looked if s.name in again.series]
            again.fill_gradient(fresh)
            for s in fresh:
                series[s.name].raw, series[s.name].grad = s.raw, s.grad
    quiet = {name for name, s in series.items() if not s.has_gradient and not needs_look(s)}
    return run_advice(series.values(), gens, quiet=quiet)


class _Generators:
    """Passes records through, noting the names whose records carry a ``clamp_fraction``."""

    def __init__(self) -> None:
        self.names: Set[str] = set()

    def watch(self, records: Iterable[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
        for record in records:
            cf = record.get("clamp_fraction")
            if cf is not None and not (isinstance(cf, float) and math.isnan(cf)):
                self.names.add(record.get("tensor") or record["name"])
            yield record


def records_series_and_advice(records: Iterable[Dict[str, Any]]) -> Tuple[Dict[str, ScaleSeries], List[Advice]]:
    """Records (a logger source's, or a run's in memory) as series, and their advice."""
    generators = _Generators()
    series = collect_series(generators.watch(records))
    return series, run_advice(series.values(), generators.names)


__all__ = ["generators_in_history", "history_series_and_advice", "needs_look", "records_series_and_advice",
           "series_advice"]
