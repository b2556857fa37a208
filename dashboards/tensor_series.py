"""Per-tensor views of element series: a per-head scale's band across its heads (numpy, no matplotlib).

A per-head scale is recorded element by element (``TENSOR[i]``). Dashboards show it
per tensor: the band its elements span at each step (min..max across heads), the
elements that alerted on their own, and counts. A single-value scale is a tensor of
one element and is shown exactly as before.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Tuple

import numpy as np

from scalewatch.dashboards.element_groups import ElementGroup, grouped
from scalewatch.dashboards.series import ScaleBounds, ScaleSeries
from scalewatch.monitor.rules import AT_BOUND_RTOL, closeness, outside_columns, risk_key
from scalewatch.monitor.display import IDENTITY, display_values


def values(buffer: Any) -> np.ndarray:
    """A series column (``array("d")`` or numpy) as a float64 array, without a copy when it can."""
    return np.asarray(buffer, dtype=np.float64)


def outside_mask(s: ScaleSeries) -> np.ndarray:
    """Per reading, whether the raw parameter was beyond its hard bounds (each judged by its own bounds).

    The rule book's :func:`~scalewatch.monitor.rules.outside_columns`: a missing (NaN) bound is
    never crossed, a float32 raw value clamped onto a float64 bound is at it, not outside. Soft
    bounds never cut the gradient: all False; so for series read without raw values.
    """
    if s.bound != "hard" or not s.has_gradient:
        return np.zeros(len(s), dtype=bool)
    raw = values(s.raw)
    outside = np.zeros(len(raw), dtype=bool)
    for first, end, lo, hi, _ in s.bound_spans():
        outside[first:end] = outside_columns(raw[first:end], lo, hi)
    return outside


def shown_values(b: ScaleBounds, raw_units: np.ndarray) -> np.ndarray:
    """Values of ``b`` (raw units) as dashboards show them: ``exp`` for ``display="exp"`` (see monitor/display.py)."""
    return raw_units if b.display == IDENTITY else display_values(raw_units, b.display)


@dataclass
class TensorSeries(ElementGroup):
    """One tensor's element series (:class:`ScaleSeries`) and what dashboards draw of them.

    ``name`` is the tensor (a single-value scale: its own name). Numbers are in
    raw units; :meth:`shown` turns them into display units.
    """

    _bands: Dict[Tuple[str, int], Tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict,
                                                                                     repr=False)

    @property
    def alerts(self) -> List[Tuple[int, str, float, str]]:
        """Every element's alerts as ``(step, kind, scale, element name)``, by step."""
        return sorted(((st, k, v, e.name) for e in self.elements for st, k, v in e.alerts), key=lambda a: a[0])

    @property
    def has_gradient(self) -> bool:
        return all(e.has_gradient for e in self.elements)

    @property
    def steps(self) -> np.ndarray:
        """The steps of the band: every step any element was read at."""
        return self.band("scale")[0]

    def band(self, column: str = "scale", leave_out: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(steps, low, high)``: the smallest and largest finite value of ``column`` across elements per step.

        A step where no element has a finite value is NaN in both. ``column`` is
        ``scale``, ``raw`` or ``grad`` (the last two need :attr:`has_gradient`).
        ``leave_out``: the band of the elements other than the first that many
        :attr:`alerted` ones (those a plot draws on their own); all of them when
        that leaves none.
        """
        key = (column, leave_out)
        cached = self._bands.get(key)
        if cached is not None:
            return cached
        drawn = {id(e) for e in self.alerted[:leave_out]}
        members = [e for e in self.elements if id(e) not in drawn] or self.elements
        parts = [(values(e.steps), values(getattr(e, column))) for e in members]
        first = parts[0][0]
        if all(len(st) == len(first) and np.array_equal(st, first) for st, _ in parts[1:]):
            steps, where = first, None  # every element read at the same steps: the usual case
            stacked = np.vstack([v for _, v in parts])
        else:
            all_steps = np.concatenate([st for st, _ in parts])
            steps, where = np.unique(all_steps, return_inverse=True)
            stacked = np.concatenate([v for _, v in parts])
        finite = np.where(np.isfinite(stacked), stacked, np.nan)
        with np.errstate(invalid="ignore"):
            if where is None:
                low, high = np.fmin.reduce(finite, axis=0), np.fmax.reduce(finite, axis=0)
            else:
                low, high = np.full(len(steps), np.nan), np.full(len(steps), np.nan)
                np.fmin.at(low, where, finite)
                np.fmax.at(high, where, finite)
        self._bands[key] = (steps, low, high)
        return self._bands[key]

    def outside_any(self) -> np.ndarray:
        """Per band step, whether any element's raw parameter was outside its hard bounds."""
        steps = self.steps
        out = np.zeros(len(steps), dtype=bool)
        for e in self.elements:
            mask = outside_mask(e)
            if mask.any():
                out[np.searchsorted(steps, values(e.steps)[mask])] = True
        return out

    def __len__(self) -> int:
        return len(self.elements[0]) if self.single else len(self.steps)


def group_series(series: Iterable[ScaleSeries]) -> List[TensorSeries]:
    """One :class:`TensorSeries` per tensor, in the order the tensors first appear; elements by index."""
    return grouped(TensorSeries.of, series)


def risk(t: TensorSeries) -> Tuple[int, float, str]:
    """Sort key, most at risk first (the rule book's :func:`~scalewatch.monitor.rules.risk_key`):
    any element alerted, then the closest approach of an element's smallest or largest value
    to its bounds (a non-finite value counts as at it), then the name."""
    closest = 1.0
    for e in t.elements:
        v = values(e.scale)
        if not len(v):
            continue
        if not np.isfinite(v).all():
            closest = 0.0
            break
        closest = min(closest, closeness(float(v.min()), e.min, e.max), closeness(float(v.max()), e.min, e.max))
    return risk_key(any(e.alerts for e in t.elements), closest, t.name)


def rank(tensors: Iterable[TensorSeries]) -> List[TensorSeries]:
    """``tensors`` most at risk first (alerted, then closest to a bound), then by name."""
    return sorted(tensors, key=risk)


def element_label(e: ScaleSeries) -> str:
    """How an element is named next to its tensor: ``[5]`` (its whole name for a single-value scale)."""
    return e.name if e.index is None else f"[{e.index}]"


__all__ = ["AT_BOUND_RTOL", "TensorSeries", "element_label", "group_series", "outside_mask", "rank", "risk",
           "shown_values", "values"]

