"""A run's scales in numbers: last, min and max value, time near a bound, alerts.

The numbers come from per-scale series (:class:`ScaleSeries`) with numpy, a
block of readings at a time, so a history of any length fits in memory; the
result prints as a plain-text table or as JSON.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from scalewatch.dashboards.series import ScaleBounds, ScaleSeries
from scalewatch.dashboards.sources import HISTORY, Source
from scalewatch.monitor.saturation import lower_warning, upper_warning

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
        steps = np.asarray(s.steps, dtype=np.float64)
        scale = np.asarray(s.scale, dtype=np.float64)
        self.readings += n
        self.first_step = int(steps[0]) if self.first_step is None else self.first_step
        self.last_step = int(steps[-1])
        self.last_scale, self.last_raw, self.last_grad = float(scale[-1]), s.last_raw, s.last_grad
        finite = np.isfinite(scale)
        self.non_finite += int(n - np.count_nonzero(finite))
        if finite.any():
            lo, hi = float(scale[finite].min()), float(scale[finite].max())
            self.scale_min = lo if math.isnan(self.scale_min) else min(self.scale_min, lo)
            self.scale_max = hi if math.isnan(self.scale_max) else max(self.scale_max, hi)
        judged = np.where(finite, scale, np.nan)  # non-finite readings count as such, never as near a bound
        for start, end, lo_b, hi_b, w in s.bound_spans():
            part = judged[start:end]
            self.near_upper += int(np.count_nonzero(part > upper_warning(hi_b, w)))
            self.near_lower += int(np.count_nonzero(part < lower_warning(lo_b, hi_b, w)))
        self.alerts.extend(s.alerts)

    @property
    def near_bound(self) -> int:
        return self.near_upper + self.near_lower

    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready dict; non-finite numbers become ``null``."""
        return {
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


def js_number(value: float) -> Optional[float]:
    """A number for JSON: non-finite ones as ``None`` (``null``)."""
    return value if math.isfinite(value) else None


def summarize(records: Iterable[Dict[str, Any]]) -> List[ScaleSummary]:
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


def report_json(summaries: List[ScaleSummary], source: Dict[str, Any]) -> Dict[str, Any]:
    """The whole report as a JSON-ready dict; ``source`` says what was read."""
    return {"source": source, "readings": sum(s.readings for s in summaries),
            "scales": [s.to_json() for s in summaries],
            "alerts": [{"step": st, "name": s.name, "kind": k, "scale": js_number(v)}
                       for st, s, k, v in _all_alerts(summaries)]}


def _all_alerts(summaries: List[ScaleSummary]) -> List[Tuple[int, ScaleSummary, str, float]]:
    return sorted(((st, s, k, v) for s in summaries for st, k, v in s.alerts), key=lambda a: a[0])


def fmt_number(value: float) -> str:
    """A number for a table cell: 4 significant digits."""
    return "nan" if math.isnan(value) else f"{value:.4g}"


def bounds_cell(s: ScaleBounds) -> str:
    """``[min, max]`` for a table cell."""
    return f"[{fmt_number(s.min)}, {fmt_number(s.max)}]"


def near_bound_cell(s: ScaleSummary) -> str:
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


def report_text(summaries: List[ScaleSummary], source: str) -> str:
    """A plain-text table, one row per scale, then every alert with its step."""
    readings = sum(s.readings for s in summaries)
    steps = [s.first_step for s in summaries if s.first_step is not None]
    lasts = [s.last_step for s in summaries if s.last_step is not None]
    span = f", steps {min(steps)} to {max(lasts)}" if steps else ""
    lines = [f"scalewatch report: {source}",
             f"{readings} reading(s) of {len(summaries)} scale(s){span}", ""]
    head = ("scale", "readings", "last", "min", "max", "bounds", "warn at", "near bound", "last raw", "last grad",
            "alerts")
    rows = [head]
    for s in summaries:
        warn = f"<{fmt_number(s.lower_warning)} >{fmt_number(s.upper_warning)}"
        rows.append((s.name, str(s.readings), fmt_number(s.last_scale), fmt_number(s.scale_min),
                     fmt_number(s.scale_max), bounds_cell(s), warn, near_bound_cell(s), fmt_number(s.last_raw),
                     fmt_number(s.last_grad), str(len(s.alerts))))
    lines += table_lines(rows)
    lines.append("")
    alerts = _all_alerts(summaries)
    if not alerts:
        lines.append("alerts: none")
    else:
        lines.append(f"alerts ({len(alerts)}):")
        for st, s, kind, value in alerts:
            lines.append(f"  step {st:>8}  {kind:<10}  {s.name}  scale={fmt_number(value)}  range {bounds_cell(s)}")
    lines += ["", NEAR_BOUND_NOTE]
    return "\n".join(lines)
