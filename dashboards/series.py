"""Per-scale series built from history records, for plots, reports and live views."""
from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

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


@dataclass
class ScaleSeries(ScaleBounds):
    """Everything recorded for one scale, in compact arrays (8 bytes a value)."""

    steps: array = field(default_factory=lambda: array("d"))
    scale: array = field(default_factory=lambda: array("d"))
    raw: array = field(default_factory=lambda: array("d"))
    grad: array = field(default_factory=lambda: array("d"))
    alerts: List[Tuple[int, str, float]] = field(default_factory=list)  # (step, kind, scale)

    def add(self, record: Dict[str, Any]) -> None:
        self.take_bounds(record)
        self.steps.append(float(record["step"]))
        self.scale.append(as_float(record.get("scale")))
        self.raw.append(as_float(record.get("raw")))
        self.grad.append(as_float(record.get("grad")))
        for kind in record.get("alerts") or ():
            self.alerts.append((int(record["step"]), kind, as_float(record.get("scale"))))

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
