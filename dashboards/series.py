"""Per-scale series built from history records, for plots, reports and live views.

Kept free of numpy and matplotlib: ``scalewatch watch`` imports it at start-up.
"""
from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from scalewatch.monitor.saturation import lower_warning, upper_warning

DEFAULT_WARN_FRACTION = 0.9


def as_float(value: Any) -> float:
    """A record's number as a float, ``None`` (no value) as NaN."""
    return math.nan if value is None else float(value)


@dataclass
class ScaleBounds:
    """A scale's name, bounds and warning lines, as the latest record gives them."""

    name: str
    min: float = math.nan
    max: float = math.nan
    warn_fraction: float = DEFAULT_WARN_FRACTION
    bound: str = "hard"

    def take_bounds(self, record: Dict[str, Any]) -> None:
        """Copy a record's bounds, warn fraction and bound kind (kept when absent)."""
        self.min = as_float(record.get("min", self.min))
        self.max = as_float(record.get("max", self.max))
        self.warn_fraction = float(record.get("warn_fraction") or self.warn_fraction)
        self.bound = record.get("bound") or self.bound

    @property
    def upper_warning(self) -> float:
        return upper_warning(self.max, self.warn_fraction)

    @property
    def lower_warning(self) -> float:
        return lower_warning(self.min, self.max, self.warn_fraction)


#: where a scale's bounds took new values: (index of the first reading, min, max, warn_fraction)
BoundChange = Tuple[int, float, float, float]


def _same(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)  # NaN bounds (not known yet) equal each other


@dataclass
class ScaleSeries(ScaleBounds):
    """Everything recorded for one scale, in compact arrays (8 bytes a value).

    ``steps``, ``scale``, ``raw`` and ``grad`` are float64 buffers: ``array("d")``
    when built record by record with :meth:`add`, numpy arrays when a whole file
    is read at once (:mod:`scalewatch.dashboards.history_columns`). ``raw`` and
    ``grad`` may be left empty by such a reader (see :attr:`has_gradient`); the
    last values are always in :attr:`last_raw` and :attr:`last_grad`. The bounds
    fields hold the latest bounds; :attr:`bound_changes` says from which reading
    each set of bounds held, so rules can judge every reading by its own bounds.
    """

    steps: Sequence[float] = field(default_factory=lambda: array("d"))
    scale: Sequence[float] = field(default_factory=lambda: array("d"))
    raw: Sequence[float] = field(default_factory=lambda: array("d"))
    grad: Sequence[float] = field(default_factory=lambda: array("d"))
    alerts: List[Tuple[int, str, float]] = field(default_factory=list)  # (step, kind, scale)
    bound_changes: List[BoundChange] = field(default_factory=list)
    last_raw: float = math.nan
    last_grad: float = math.nan

    def add(self, record: Dict[str, Any]) -> None:
        """Append one reading (the arrays must be ``array("d")``)."""
        self.take_bounds(record)
        last = self.bound_changes[-1] if self.bound_changes else None
        if last is None or not (_same(last[1], self.min) and _same(last[2], self.max)
                                and last[3] == self.warn_fraction):
            self.bound_changes.append((len(self.steps), self.min, self.max, self.warn_fraction))
        scale = as_float(record.get("scale"))
        self.last_raw, self.last_grad = as_float(record.get("raw")), as_float(record.get("grad"))
        self.steps.append(float(record["step"]))
        self.scale.append(scale)
        self.raw.append(self.last_raw)
        self.grad.append(self.last_grad)
        for kind in record.get("alerts") or ():
            self.alerts.append((int(record["step"]), kind, scale))

    def bound_spans(self) -> List[Tuple[int, int, float, float, float]]:
        """``(first, end, min, max, warn_fraction)``: readings ``first:end`` were taken with these bounds."""
        ends = [start for start, *_ in self.bound_changes[1:]] + [len(self.steps)]
        return [(start, end, lo, hi, w) for (start, lo, hi, w), end in zip(self.bound_changes, ends)]

    @property
    def has_gradient(self) -> bool:
        """Whether ``raw`` and ``grad`` hold every reading (a fast reader may skip them)."""
        return len(self.raw) == len(self.grad) == len(self.steps)

    def __len__(self) -> int:
        return len(self.steps)


def closeness_to_bound(record: Dict[str, Any]) -> float:
    """0 at a bound (or non-finite), 0.5 in the middle of the range."""
    lo, hi, s = as_float(record.get("min")), as_float(record.get("max")), as_float(record.get("scale"))
    if not all(math.isfinite(v) for v in (lo, hi, s)) or hi <= lo:
        return 0.0
    return max(0.0, min(s - lo, hi - s) / (hi - lo))


class ScaleRanking:
    """Orders scale names most-at-risk first, fed one record at a time.

    Alerted scales come first, then by the closest approach to a bound.
    """

    def __init__(self) -> None:
        self._score: Dict[str, Tuple[int, float]] = {}

    def add(self, rec: Dict[str, Any]) -> None:
        alerted, closest = self._score.get(rec["name"], (0, 1.0))
        self._score[rec["name"]] = (alerted or int(bool(rec.get("alerts"))), min(closest, closeness_to_bound(rec)))

    def ranked(self) -> List[str]:
        return sorted(self._score, key=lambda n: (-self._score[n][0], self._score[n][1], n))


def collect_series(records: Iterable[Dict[str, Any]], names: Optional[Iterable[str]] = None) -> Dict[str, ScaleSeries]:
    """Build series for ``names`` (all when None), in first-seen order."""
    wanted = None if names is None else set(names)
    series: Dict[str, ScaleSeries] = {}
    for rec in records:
        name = rec["name"]
        if wanted is not None and name not in wanted:
            continue
        if name not in series:
            series[name] = ScaleSeries(name=name)
        series[name].add(rec)
    return series
