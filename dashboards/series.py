"""Per-scale series built from history records, for plots, reports and live views.

Kept free of numpy and matplotlib: ``scalewatch watch`` imports it at start-up.
"""
from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from scalewatch.monitor.display import IDENTITY, display_value, format_range
from scalewatch.monitor.rules import DEFAULT_WARN_FRACTION, SKIPPED_STEP, closeness, lower_warning, upper_warning

__all__ = ["DEFAULT_WARN_FRACTION", "ScaleBounds", "ScaleSeries", "as_bound", "as_float", "closeness",
           "collect_series", "group_of"]


def as_float(value: Any) -> float:
    """A record's number as a float, ``None`` (no value) as NaN."""
    return math.nan if value is None else float(value)


def as_bound(value: float) -> Optional[float]:
    """A series' bound as the rules take it: NaN (no bound on that side) as ``None``."""
    return None if value != value else value


def group_of(record: Dict[str, Any]) -> str:
    """The tensor a record belongs to: its ``tensor`` (an element ``NAME[i]``), else its ``name``."""
    return record.get("tensor") or record["name"]


#: what an attention statistic is, in words (panel axes, legends, the watch view)
ATTENTION_LABELS = {"max_logit": "max |logit|", "entropy": "row entropy (nats)", "saturated": "rows with p > 0.99"}


def attention_label(statistic: str) -> str:
    """An attention statistic's name in words (an unknown one as it is)."""
    return ATTENTION_LABELS.get(statistic, statistic)


def never_negative(attention: Optional[str]) -> bool:
    """Whether a record's value cannot be below 0: an attention statistic's (|logit|, entropy, a share of rows)."""
    return bool(attention)


def value_name(attention: Optional[str]) -> str:
    """What a record's value is called: ``scale``, or the softmax statistic an attention record holds."""
    return "scale" if not attention else attention_label(attention)


@dataclass
class ScaleBounds:
    """A scale's name, bounds and warning lines, as the latest record gives them.

    A bound that is NaN is missing (a one-sided scale, JSON ``null`` in the
    history): no line is drawn for it and no rule needs it. ``tensor`` and
    ``index`` are set for an element ``TENSOR[index]`` of a multi-element scale;
    ``display`` is how its values are shown (see :mod:`scalewatch.monitor.display`).
    """

    name: str
    min: float = math.nan
    max: float = math.nan
    warn_fraction: float = DEFAULT_WARN_FRACTION
    bound: str = "hard"
    tensor: Optional[str] = None
    index: Optional[int] = None
    display: str = IDENTITY
    #: a summarised tensor read back from a logger: the element count its summary logged (else 0)
    logged_elements: int = 0
    #: the softmax statistic the series is (``max_logit``, ``entropy``, ``saturated``), for attention records
    attention: Optional[str] = None

    def take_bounds(self, record: Dict[str, Any]) -> None:
        """Copy a record's bounds, warn fraction and bound kind (kept when absent), tensor and display."""
        self.min = as_float(record.get("min", self.min))
        self.max = as_float(record.get("max", self.max))
        self.warn_fraction = float(record.get("warn_fraction") or self.warn_fraction)
        self.bound = record.get("bound") or self.bound
        self.tensor, self.index = record.get("tensor"), record.get("index")
        self.display = record.get("display") or IDENTITY
        self.attention = record.get("attention")
        logged = record.get("summary")
        if logged:
            self.logged_elements = int(logged.get("elements", 0))

    @property
    def group(self) -> str:
        """The tensor this scale is an element of, or its own name."""
        return self.tensor or self.name

    @property
    def upper_warning(self) -> float:
        """``near_upper`` fires above this (NaN without an upper bound), in raw units."""
        return as_float(upper_warning(as_bound(self.max), self.warn_fraction))

    @property
    def lower_warning(self) -> float:
        """``near_lower`` fires below this (NaN without a lower bound), in raw units."""
        return as_float(lower_warning(as_bound(self.min), as_bound(self.max), self.warn_fraction))

    def shown(self, value: float) -> float:
        """A raw-unit value of the scale (or a bound) as dashboards show it (``exp`` for ``display="exp"``)."""
        return value if self.display == IDENTITY or value != value else display_value(value, self.display)

    def range_text(self, fmt: str = "g") -> str:
        """The bounds as shown, a missing side open: ``[0.5, 5]``, ``(-inf, 4.605]``, exp: ``[1, 100]``."""
        return format_range(as_bound(self.min), as_bound(self.max), self.display, fmt)

    def bounds_text(self, fmt: str = "g") -> str:
        """The bounds for a title, a legend or a table: a scale's range (:meth:`range_text`); an attention
        statistic has at most a threshold (``threshold 100``: max_logit's), else ``no bound``."""
        if self.attention is None:
            return self.range_text(fmt)
        return "no bound" if self.max != self.max else f"threshold {format(self.shown(self.max), fmt)}"

    def bounds_phrase(self, fmt: str = "g") -> str:
        """:meth:`bounds_text` in a sentence: ``range [0.5, 5]``, ``threshold 100``, ``no bound``."""
        return f"range {self.range_text(fmt)}" if self.attention is None else self.bounds_text(fmt)

    @property
    def members(self) -> str:
        """What the elements of its tensor are: an attention statistic's are heads."""
        return "elements" if self.attention is None else "heads"


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
    #: per reading, 1 where it had no gradient (``grad`` holds NaN both for none and for a NaN one)
    no_grad: bytearray = field(default_factory=bytearray)
    #: indices of readings taken on checks whose step a gradient scaler skipped (``skipped_step``)
    skipped: List[int] = field(default_factory=list)

    def add(self, record: Dict[str, Any]) -> None:
        """Append one reading (the arrays must be ``array("d")``)."""
        self.take_bounds(record)
        last = self.bound_changes[-1] if self.bound_changes else None
        if last is None or not (_same(last[1], self.min) and _same(last[2], self.max)
                                and last[3] == self.warn_fraction):
            self.bound_changes.append((len(self.steps), self.min, self.max, self.warn_fraction))
        scale = as_float(record.get("scale"))
        self.last_raw, self.last_grad = as_float(record.get("raw")), as_float(record.get("grad"))
        self.no_grad.append(record.get("grad") is None)
        if record.get(SKIPPED_STEP):
            self.skipped.append(len(self.steps))
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
