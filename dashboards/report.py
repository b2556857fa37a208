"""A run's scales in numbers: last, min and max value, time near a bound, alerts.

One streaming pass over the records, so a history of any length fits in
memory; the result prints as a plain-text table or as JSON.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

from scalewatch.dashboards.series import ScaleBounds, as_float



@dataclass
class ScaleSummary(ScaleBounds):
    """What one scale did over a run.

    ``near_upper``/``near_lower`` count the readings beyond the warning lines
    (``scale > warn_fraction * max``, ``scale < min + (1 - warn_fraction)(max - min)``),
    the same lines the ``near_upper``/``near_lower`` alerts use.
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

    def add(self, record: Dict[str, Any]) -> None:
        """Fold one reading in."""
        self.take_bounds(record)
        step = int(record["step"])
        scale = as_float(record.get("scale"))
        self.readings += 1
        self.first_step = step if self.first_step is None else self.first_step
        self.last_step = step
        self.last_scale, self.last_raw, self.last_grad = scale, as_float(record.get("raw")), as_float(record.get("grad"))
        if math.isfinite(scale):
            self.scale_min = scale if math.isnan(self.scale_min) else min(self.scale_min, scale)
            self.scale_max = scale if math.isnan(self.scale_max) else max(self.scale_max, scale)
            self.near_upper += scale > self.upper_warning
            self.near_lower += scale < self.lower_warning
        else:
            self.non_finite += 1
        for kind in record.get("alerts") or ():
            self.alerts.append((step, kind, scale))

    @property
    def near_bound(self) -> int:
        return self.near_upper + self.near_lower

    def to_json(self) -> Dict[str, Any]:
        """A JSON-ready dict; non-finite numbers become ``null``."""
        return {
            "name": self.name, "min": _js(self.min), "max": _js(self.max), "bound": self.bound,
            "warn_fraction": _js(self.warn_fraction), "upper_warning": _js(self.upper_warning),
            "lower_warning": _js(self.lower_warning), "readings": self.readings,
            "first_step": self.first_step, "last_step": self.last_step,
            "last": {"step": self.last_step, "scale": _js(self.last_scale), "raw": _js(self.last_raw),
                     "grad": _js(self.last_grad)},
            "scale_min": _js(self.scale_min), "scale_max": _js(self.scale_max),
            "near_bound": {"readings": self.near_bound, "upper": self.near_upper, "lower": self.near_lower},
            "non_finite_readings": self.non_finite,
            "alerts": [{"step": s, "kind": k, "scale": _js(v)} for s, k, v in self.alerts],
        }


def _js(value: float) -> Optional[float]:
    return value if math.isfinite(value) else None


def summarize(records: Iterable[Dict[str, Any]]) -> List[ScaleSummary]:
    """One summary per scale, in the order the scales first appear."""
    out: Dict[str, ScaleSummary] = {}
    for record in records:
        name = record["name"]
        if name not in out:
            out[name] = ScaleSummary(name=name)
        out[name].add(record)
    return list(out.values())


def report_json(summaries: List[ScaleSummary], source: Dict[str, Any]) -> Dict[str, Any]:
    """The whole report as a JSON-ready dict; ``source`` says what was read."""
    return {"source": source, "readings": sum(s.readings for s in summaries),
            "scales": [s.to_json() for s in summaries],
            "alerts": [{"step": st, "name": s.name, "kind": k, "scale": _js(v)}
                       for st, s, k, v in _all_alerts(summaries)]}


def _all_alerts(summaries: List[ScaleSummary]) -> List[Tuple[int, ScaleSummary, str, float]]:
    return sorted(((st, s, k, v) for s in summaries for st, k, v in s.alerts), key=lambda a: a[0])


def _g(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4g}"


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
        warn = f"<{_g(s.lower_warning)} >{_g(s.upper_warning)}"
        pct = f" ({100.0 * s.near_bound / s.readings:.0f}%)" if s.readings else ""
        rows.append((s.name, str(s.readings), _g(s.last_scale), _g(s.scale_min), _g(s.scale_max),
                     f"[{_g(s.min)}, {_g(s.max)}]", warn, f"{s.near_bound}{pct}", _g(s.last_raw), _g(s.last_grad),
                     str(len(s.alerts))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    alerts = _all_alerts(summaries)
    if not alerts:
        lines.append("alerts: none")
    else:
        lines.append(f"alerts ({len(alerts)}):")
        for st, s, kind, value in alerts:
            lines.append(f"  step {st:>8}  {kind:<10}  {s.name}  scale={_g(value)}  range [{_g(s.min)}, {_g(s.max)}]")
    lines.append("")
    lines.append("near bound: readings beyond the warning lines (scale > warn_fraction x max, "
                 "or < min + (1 - warn_fraction)(max - min))")
    return "\n".join(lines)
