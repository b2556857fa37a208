"""A run's scales in numbers: last, min and max value, time near a bound, alerts.

The numbers come from per-scale series (:class:`ScaleSeries`) with numpy, a
block of readings at a time, so a history of any length fits in memory; the
result prints as a plain-text table or as JSON.

Per-head scales are reported per tensor (:class:`TensorReport`): one row with the
element count, the last values' range across elements, readings near a bound and
elements pinned now, then one row per element that alerted. A scale watched with
``display="exp"`` shows its scale and bounds as exp(value); ``last raw`` and
``last grad`` stay in raw (optimizer) units. In JSON every object whose numbers
are shown that way says ``"display": "exp"`` and carries ``raw_units``: the same
keys in raw units.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from scalewatch.dashboards.element_groups import ElementGroup, grouped
from scalewatch.dashboards.series import ScaleBounds, ScaleSeries, as_bound, value_name
from scalewatch.dashboards.sources import HISTORY, Source
from scalewatch.monitor.display import IDENTITY, format_number
from scalewatch.monitor.history import ReadProblems
from scalewatch.monitor.rules import NON_FINITE, PINNED, condition_columns, conditions, near_counts

#: readings per block when summarising a stream of records
BLOCK = 65536
NEAR_BOUND_NOTE = ("near bound: readings beyond the warning lines (scale > warn_fraction x max, "
                   "or < min + (1 - warn_fraction)(max - min))")


@dataclass
class ScaleSummary(ScaleBounds):
    """What one scale did over a run.

    ``near_upper``/``near_lower`` count the readings beyond the warning lines
    (``scale > warn_fraction * max``, ``scale < min + (1 - warn_fraction)(max - min)``),
    the same lines the ``near_upper``/``near_lower`` alerts use, each reading
    judged by the bounds it was recorded with.
    """

    readings: int = 0
    first_step: Optional[int] = None
    last_step: Optional[int] = None
    last_scale: float = math.nan
    last_raw: float = math.nan
    last_grad: float = math.nan
    scale_min: float = math.nan
    scale_max: float = math.nan
    near_upper: int = 0
    near_lower: int = 0
    non_finite: int = 0
    alerts: List[Tuple[int, str, float]] = field(default_factory=list)  # (step, kind, scale)

    @classmethod
    def of(cls, series: ScaleSeries) -> "ScaleSummary":
        """The summary of one whole series."""
        summary = cls(name=series.name)
        summary.fold(series)
        return summary

    def fold(self, s: ScaleSeries) -> None:
        """Fold in the readings of ``s``, which come after those already folded in."""
        n = len(s)
        if n == 0:
            return
        self.min, self.max, self.warn_fraction, self.bound = s.min, s.max, s.warn_fraction, s.bound
        self.tensor, self.index, self.display, self.attention = s.tensor, s.index, s.display, s.attention
        self.logged_elements = max(self.logged_elements, s.logged_elements)
        steps = np.asarray(s.steps, dtype=np.float64)
        scale = np.asarray(s.scale, dtype=np.float64)
        self.readings += n
        self.first_step = int(steps[0]) if self.first_step is None else self.first_step
        self.last_step = int(steps[-1])
        self.last_scale, self.last_raw, self.last_grad = float(scale[-1]), s.last_raw, s.last_grad
        finite = np.isfinite(scale)
        self.non_finite += non_finite_readings(s)
        if finite.any():
            lo, hi = float(scale[finite].min()), float(scale[finite].max())
            self.scale_min = lo if math.isnan(self.scale_min) else min(self.scale_min, lo)
            self.scale_max = hi if math.isnan(self.scale_max) else max(self.scale_max, hi)
        for start, end, lo_b, hi_b, w in s.bound_spans():
            # the rule book's lines; non-finite readings count as such, never as near a bound
            up, down = near_counts(scale[start:end], lo_b, hi_b, w)
            self.near_upper += up
            self.near_lower += down
        self.alerts.extend(s.alerts)

    @property
    def near_bound(self) -> int:
        return self.near_upper + self.near_lower

    @property
    def pinned_now(self) -> bool:
        """Whether the last reading meets the ``pinned`` rule (before ``patience``): at a hard bound, stuck."""
        grad = None if math.isnan(self.last_grad) else self.last_grad
        return conditions(self.last_scale, self.last_raw, grad, as_bound(self.min), as_bound(self.max),
                          self.bound)[PINNED]

    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready dict; non-finite numbers become ``null`` (so does a missing bound).

        With a display transform the scale values and bounds are shown values and
        ``raw_units`` holds them in raw units (see :func:`shown_json`).
        """
        out = {
            "name": self.name, "min": js_number(self.min), "max": js_number(self.max), "bound": self.bound,
            "warn_fraction": js_number(self.warn_fraction), "upper_warning": js_number(self.upper_warning),
            "lower_warning": js_number(self.lower_warning), "readings": self.readings,
            "first_step": self.first_step, "last_step": self.last_step,
            "last": {"step": self.last_step, "scale": js_number(self.last_scale), "raw": js_number(self.last_raw),
                     "grad": js_number(self.last_grad)},
            "scale_min": js_number(self.scale_min), "scale_max": js_number(self.scale_max),
            "near_bound": {"readings": self.near_bound, "upper": self.near_upper, "lower": self.near_lower},
            "non_finite_readings": self.non_finite,
            "alerts": [{"step": s, "kind": k, "scale": js_number(v)} for s, k, v in self.alerts],
        }
        if self.index is not None:
            out.update(tensor=self.tensor, index=self.index, pinned_now=self.pinned_now)
        return shown_json(out, self.display)


def non_finite_readings(s: ScaleSeries) -> int:
    """Readings of ``s`` where the rule book's ``non_finite`` holds: scale, raw or gradient (a series read
    without raw values: the scale alone), a gradient on a step a gradient scaler skipped excepted."""
    scale = np.asarray(s.scale, dtype=np.float64)
    if not s.has_gradient:
        return int(len(scale) - np.count_nonzero(np.isfinite(scale)))
    raw, grad = np.asarray(s.raw, dtype=np.float64), np.asarray(s.grad, dtype=np.float64)
    checked = np.ones(len(scale), dtype=bool)
    checked[s.skipped] = False
    if len(s.no_grad) == len(scale):
        has_grad = np.frombuffer(bytes(s.no_grad), dtype=np.uint8) == 0
    else:  # a reader that did not keep it: a NaN gradient cannot be told from none
        has_grad = ~np.isnan(grad)
    held = condition_columns(scale, raw, grad, has_grad, np.nan, np.nan, False, s.warn_fraction, checked)
    return int(np.count_nonzero(held[NON_FINITE]))


def js_number(value: float) -> Optional[float]:
    """A number for JSON: non-finite ones as ``None`` (``null``)."""
    return value if math.isfinite(value) else None


#: the keys of a report object whose values a display transform shows (``last``: its scale keys)
SHOWN_KEYS = ("min", "max", "upper_warning", "lower_warning", "scale_min", "scale_max")
SHOWN_LAST_KEYS = ("scale", "scale_min", "scale_max")


def shown_json(out: Dict[str, Any], display: str) -> Dict[str, Any]:
    """``out`` (raw units) with its scale values and bounds in display units, for ``display`` other than identity.

    Adds ``"display"`` and ``"raw_units"``: ``{key: raw value}`` for every key
    turned (:data:`SHOWN_KEYS`; ``last`` as ``{"scale": ...}``); each alert's
    ``scale`` is turned too and keeps its raw value in its own ``raw_units``.
    ``raw`` and ``grad`` are never turned. An identity display returns ``out`` as is.
    """
    if display == IDENTITY:
        return out
    b = ScaleBounds(name="", display=display)

    def turn(value: Optional[float]) -> Optional[float]:
        return None if value is None else js_number(b.shown(value))

    raw_units: Dict[str, Any] = {k: out[k] for k in SHOWN_KEYS if k in out}
    raw_units["last"] = {k: out["last"][k] for k in SHOWN_LAST_KEYS if k in out["last"]}
    shown = dict(out, display=display, raw_units=raw_units)
    shown.update({k: turn(v) for k, v in raw_units.items() if k != "last"})
    shown["last"] = dict(out["last"], **{k: turn(v) for k, v in raw_units["last"].items()})
    shown["alerts"] = [dict(a, scale=turn(a["scale"]), raw_units={"scale": a["scale"]}) for a in out["alerts"]]
    return shown


def summarize_records(records: Iterable[Dict[str, Any]]) -> List[ScaleSummary]:
    """One summary per scale, in the order the scales first appear (streamed a block at a time)."""
    out: Dict[str, ScaleSummary] = {}
    stream = iter(records)
    while True:
        block: Dict[str, ScaleSeries] = {}
        for record in islice(stream, BLOCK):
            name = record["name"]
            if name not in block:
                known = out.setdefault(name, ScaleSummary(name=name))
                # bounds carry over from the previous block for records that leave them out
                block[name] = ScaleSeries(name=name, min=known.min, max=known.max,
                                          warn_fraction=known.warn_fraction, bound=known.bound)
            block[name].add(record)
        if not block:
            return list(out.values())
        for name, series in block.items():
            out[name].fold(series)


def _total(attr: str) -> property:
    """A property: ``attr`` summed over the elements."""
    return property(lambda self: sum(getattr(e, attr) for e in self.elements), doc=f"{attr}, over the elements")


@dataclass
class TensorReport(ElementGroup):
    """What one tensor did: its element summaries (:class:`ScaleSummary`, one for a single-value scale).

    Counts add up over elements (``readings``, ``near_upper``/``near_lower``,
    ``non_finite``); ``pinned_now`` counts the elements pinned at their last
    reading; value ranges are across elements, in raw units.
    """

    readings = _total("readings")
    near_upper = _total("near_upper")
    near_lower = _total("near_lower")
    non_finite = _total("non_finite")
    pinned_now = _total("pinned_now")

    @property
    def first_step(self) -> Optional[int]:
        return min((e.first_step for e in self.elements if e.first_step is not None), default=None)

    @property
    def last_step(self) -> Optional[int]:
        return max((e.last_step for e in self.elements if e.last_step is not None), default=None)

    def last_range(self, what: str = "scale") -> Tuple[float, float]:
        """Smallest and largest finite last ``scale``/``raw``/``grad`` across elements (NaN when none)."""
        return finite_range(getattr(e, f"last_{what}") for e in self.elements)

    @property
    def scale_min(self) -> float:
        return finite_range(e.scale_min for e in self.elements)[0]

    @property
    def scale_max(self) -> float:
        return finite_range(e.scale_max for e in self.elements)[1]

    @property
    def near_bound(self) -> int:
        return self.near_upper + self.near_lower

    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready dict: a single-value scale's :meth:`ScaleSummary.to_json`; a tensor's totals.

        A tensor has ``element_count``, ``pinned_now`` (elements), ``last`` with the
        ranges across elements (``scale_min``/``scale_max``, ``raw_min``/``raw_max``,
        ``grad_min``/``grad_max``), its elements' alerts (each naming the ``element``
        and its ``index``) and ``elements``: the alerted elements, each as
        :meth:`ScaleSummary.to_json` with its ``index``.
        """
        if self.single:
            return self.elements[0].to_json()
        (lo, hi), (raw_lo, raw_hi), (g_lo, g_hi) = (self.last_range(w) for w in ("scale", "raw", "grad"))
        out = {
            "name": self.name, "element_count": self.element_count, "min": js_number(self.min),
            "max": js_number(self.max), "bound": self.bound, "warn_fraction": js_number(self.warn_fraction),
            "upper_warning": js_number(self.upper_warning), "lower_warning": js_number(self.lower_warning),
            "readings": self.readings, "first_step": self.first_step, "last_step": self.last_step,
            "last": {"step": self.last_step, "scale_min": js_number(lo), "scale_max": js_number(hi),
                     "raw_min": js_number(raw_lo), "raw_max": js_number(raw_hi), "grad_min": js_number(g_lo),
                     "grad_max": js_number(g_hi)},
            "scale_min": js_number(self.scale_min), "scale_max": js_number(self.scale_max),
            "near_bound": {"readings": self.near_bound, "upper": self.near_upper, "lower": self.near_lower},
            "non_finite_readings": self.non_finite, "pinned_now": self.pinned_now,
            "alerts": [{"step": st, "kind": k, "scale": js_number(v), "element": e.name, "index": e.index}
                       for st, e, k, v in _all_alerts(self.elements)],
        }
        out = shown_json(out, self.display)
        out["elements"] = [e.to_json() for e in self.alerted]
        return out


def finite_range(numbers: Iterable[float]) -> Tuple[float, float]:
    """``(smallest, largest)`` of the finite ``numbers``; NaN, NaN when there is none."""
    finite = [v for v in numbers if math.isfinite(v)]
    return (min(finite), max(finite)) if finite else (math.nan, math.nan)


def group_summaries(summaries: Iterable[ScaleSummary]) -> List[TensorReport]:
    """One :class:`TensorReport` per tensor, in the order the tensors first appear; elements by index."""
    return grouped(TensorReport.of, summaries)


def summarize_history(path: str, problems: Optional[ReadProblems] = None) -> List[ScaleSummary]:
    """:func:`summarize_records` of a history file, read with the column reader (no per-line JSON)."""
    from scalewatch.dashboards.history_columns import read_series  # numpy-heavy: only for history files

    return [ScaleSummary.of(s) for s in read_series(path, problems, gradient=False).values()]


def report_json(summaries: List[ScaleSummary], source: Dict[str, Any], advice: Optional[Sequence[Any]] = None
                ) -> Dict[str, Any]:
    """The whole report as a JSON-ready dict; ``source`` says what was read.

    ``scales`` has one entry per tensor (a single-value scale as ever, see
    :meth:`TensorReport.to_json`); ``alerts`` lists every alert of every scale or
    element by step; ``advice`` (when given) the :class:`~scalewatch.monitor.advice.Advice` list.
    """
    alerts = []
    for st, s, k, v in _all_alerts(summaries):
        entry = {"step": st, "name": s.name, "kind": k, "scale": js_number(v)}
        if s.display != IDENTITY:
            entry.update(scale=js_number(s.shown(v)), display=s.display, raw_units={"scale": js_number(v)})
        alerts.append(entry)
    out = {"source": source, "readings": sum(s.readings for s in summaries),
           "scales": [t.to_json() for t in group_summaries(summaries)], "alerts": alerts}
    if advice is not None:
        out["advice"] = [a.to_json() for a in advice]
    return out


def _all_alerts(summaries: List[ScaleSummary]) -> List[Tuple[int, ScaleSummary, str, float]]:
    return sorted(((st, s, k, v) for s in summaries for st, k, v in s.alerts), key=lambda a: a[0])


def bounds_cell(s: ScaleBounds) -> str:
    """``[min, max]`` for a table cell, as shown; a missing bound open: ``(-inf, 4.605]``; an attention
    statistic's threshold (``threshold 100``) or ``no bound``."""
    return s.bounds_text(".4g")


def shown_cell(s: ScaleBounds, value: float) -> str:
    """A scale value (raw units) as a table cell, in display units."""
    return format_number(s.shown(value))


def warn_cell(s: ScaleBounds) -> str:
    """Where the warning lines are, as shown: ``<0.95 >4.5``; only those that exist."""
    parts = ([] if math.isnan(s.lower_warning) else [f"<{shown_cell(s, s.lower_warning)}"]) + \
            ([] if math.isnan(s.upper_warning) else [f">{shown_cell(s, s.upper_warning)}"])
    return " ".join(parts) or "-"


def near_bound_cell(s: Any) -> str:
    """Readings near a bound, with their share: ``10 (83%)``."""
    return f"{s.near_bound}" + (f" ({100.0 * s.near_bound / s.readings:.0f}%)" if s.readings else "")


def table_lines(rows: Sequence[Sequence[str]], left: Sequence[int] = (0,)) -> List[str]:
    """Rows of cells as aligned lines: the ``left`` columns left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


def source_json(src: Source) -> Dict[str, Any]:
    """What was read, for a JSON report: kind, path, how it was found, what was skipped."""
    problems = {"torn_last_line": src.problems.torn_last_line, "bad_lines": src.problems.bad_count}
    out: Dict[str, Any] = {"kind": src.kind, "path": src.path, "note": src.note, "problems": problems}
    if src.kind != HISTORY:
        out["alerts_recomputed"] = {"warn_fraction": src.warn_fraction, "patience": src.patience}
    return out


def report_text(summaries: List[ScaleSummary], source: str, advice: Optional[Sequence[Any]] = None) -> str:
    """A plain-text table, one row per scale (per tensor, then its alerted elements), then every alert,
    then the advice (when given: :mod:`scalewatch.monitor.advice`)."""
    readings = sum(s.readings for s in summaries)
    steps = [s.first_step for s in summaries if s.first_step is not None]
    lasts = [s.last_step for s in summaries if s.last_step is not None]
    span = f", steps {min(steps)} to {max(lasts)}" if steps else ""
    tensors = group_summaries(summaries)
    per_head = any(not t.single for t in tensors)
    count = f"{len(tensors)} scale(s)" if not per_head else \
        f"{len(summaries)} value(s) in {len(tensors)} scale(s)"
    lines = [f"scalewatch report: {source}", f"{readings} reading(s) of {count}{span}", ""]
    lines += table_lines(_table(tensors) if per_head else _plain_table(summaries))
    lines.append("")
    alerts = _all_alerts(summaries)
    if not alerts:
        lines.append("alerts: none")
    else:
        lines.append(f"alerts ({len(alerts)}):")
        for st, s, kind, value in alerts:
            raw = "" if s.display == IDENTITY else f" (raw {format_number(value)})"
            lines.append(f"  step {st:>8}  {kind:<10}  {s.name}  {value_name(s.attention)}={shown_cell(s, value)}"
                         f"{raw}  {s.bounds_phrase('.4g')}")
    if advice is not None:
        from scalewatch.monitor.advice import advice_lines

        lines += ["", "advice:"] + [f"  {line}" for line in advice_lines(advice)]
    lines += ["", NEAR_BOUND_NOTE]
    shown = sorted({s.display for s in summaries if s.display != IDENTITY})
    for display in shown:
        lines.append(f"({display}): scale values, bounds and warning lines shown as {display}(value); "
                     "raw and grad in raw (optimizer) units")
    if per_head:
        lines.append("TENSOR rows: ranges across its elements; pinned: elements pinned at their last reading; "
                     "[i] rows: the elements that alerted")
    return "\n".join(lines)


def _name_cell(s: ScaleBounds, name: str) -> str:
    return name if s.display == IDENTITY else f"{name} ({s.display})"


def _plain_table(summaries: List[ScaleSummary]) -> List[Sequence[str]]:
    """Single-value scales only: the table as it always was."""
    rows: List[Sequence[str]] = [("scale", "readings", "last", "min", "max", "bounds", "warn at", "near bound",
                                  "last raw", "last grad", "alerts")]
    for s in summaries:
        rows.append((_name_cell(s, s.name), str(s.readings), shown_cell(s, s.last_scale), shown_cell(s, s.scale_min),
                     shown_cell(s, s.scale_max), bounds_cell(s), warn_cell(s), near_bound_cell(s),
                     format_number(s.last_raw), format_number(s.last_grad), str(len(s.alerts))))
    return rows


def _table(tensors: List[TensorReport]) -> List[Sequence[str]]:
    """With per-head scales: a row per tensor (ranges across elements), then a row per alerted element."""
    rows: List[Sequence[str]] = [("scale", "elements", "readings", "last", "min", "max", "bounds", "warn at",
                                  "near bound", "pinned", "last raw", "last grad", "alerts")]

    def pair(t: ScaleBounds, lo_hi: Tuple[float, float], shown: bool = True) -> str:
        lo, hi = (t.shown(v) for v in lo_hi) if shown else lo_hi
        return format_number(lo) if lo == hi else f"{format_number(lo)}..{format_number(hi)}"

    for t in tensors:
        rows.append((_name_cell(t, t.name), str(t.element_count), str(t.readings), pair(t, t.last_range()),
                     shown_cell(t, t.scale_min), shown_cell(t, t.scale_max), bounds_cell(t), warn_cell(t),
                     near_bound_cell(t), str(t.pinned_now), pair(t, t.last_range("raw"), False),
                     pair(t, t.last_range("grad"), False), str(len(_all_alerts(t.elements)))))
        for e in ([] if t.single else t.alerted):
            rows.append((f"  [{e.index}]", "", str(e.readings), shown_cell(e, e.last_scale), shown_cell(e, e.scale_min),
                         shown_cell(e, e.scale_max), "", "", near_bound_cell(e), "yes" if e.pinned_now else "-",
                         format_number(e.last_raw), format_number(e.last_grad), str(len(e.alerts))))
    return rows
