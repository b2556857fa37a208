"""The alert state that turns the rule book's conditions into one alert per crossing.

The rules themselves live in :mod:`scalewatch.monitor.rules`; their names are
re-exported here for code that imported them from this module.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from scalewatch.monitor.display import IDENTITY, display_value, format_number, format_range
from scalewatch.monitor.rules import (ALERT_KINDS, DEFAULT_PATIENCE, DEFAULT_WARN_FRACTION, NEAR_LOWER, NEAR_UPPER,
                                      NON_FINITE, PINNED, ZERO_GRAD_ATOL, is_pinned, lower_warning, reading_columns,
                                      reading_conditions, upper_warning)
from scalewatch.monitor.validation import check_finite_number

# Below this many readings the per-reading rules are faster than numpy's set-up.
_VECTORISE_FROM = 64

if TYPE_CHECKING:  # torch-free at run time: the command line imports these rules
    import numpy

    from scalewatch.monitor.reading import Reading


def check_warn_fraction(warn_fraction: object) -> float:
    w = check_finite_number("warn_fraction", warn_fraction)
    if not 0.0 < w <= 1.0:
        raise ValueError(f"`warn_fraction` must lie in (0, 1], got {warn_fraction!r}")
    return w


def check_patience(patience: object) -> int:
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ValueError(f"`patience` must be an integer >= 1, got {patience!r}")
    return patience


@dataclass(frozen=True)
class Alert:
    """One alert: which rule fired, for which scale, at which step, and why.

    ``min`` or ``max`` is ``None`` for a one-sided bound; numbers are in raw units.
    """

    kind: str
    name: str
    step: int
    scale: float
    raw: float
    grad: Optional[float]
    min: Optional[float]
    max: Optional[float]
    message: str
    #: the softmax statistic an attention reading is (``max_logit``, ...; its ``max`` is a threshold), else None
    attention: Optional[str] = None

    def to_record(self) -> Dict[str, Any]:
        record = asdict(self)
        if record["attention"] is None:  # a scale's alert: its record as it always was
            del record["attention"]
        return record


def _message(kind: str, r: Reading, warn_fraction: float, patience: int, attention: Optional[str] = None) -> str:
    if attention is not None and kind in (NEAR_UPPER, NON_FINITE):  # a statistic of the softmax, not a scale
        where = f"{r.name} at step {r.step}: {attention}={r.scale:.4g}"
        if r.max is not None:  # (near_upper has one)
            where += f" (threshold {format_number(r.max)})"
        if kind == NEAR_UPPER:
            return (f"Attention {attention} near its threshold! {where}; above {warn_fraction:g} x threshold = "
                    f"{format_number(upper_warning(r.max, warn_fraction))}: the softmax is saturating")
        return f"Attention {attention} is not finite! {where}"
    where = (f"{r.name} at step {r.step}: scale={r.scale:.4g} (range {format_range(r.min, r.max)}), "
             f"raw={r.raw:.4g}, grad={format_number(r.grad, '.3g', missing='None')}")
    if r.display != IDENTITY:
        where += (f" [shown as {r.display}: scale={format_number(display_value(r.scale, r.display))}, "
                  f"range {format_range(r.min, r.max, r.display, '.4g')}]")
    if kind == NEAR_UPPER:
        return f"Scale near upper bound! {where}; above {warn_fraction:g} x max_scale = {format_number(upper_warning(r.max, warn_fraction))}"
    if kind == NEAR_LOWER:
        return f"Scale near lower bound! {where}; below {format_number(lower_warning(r.min, r.max, warn_fraction))}"
    if kind == PINNED:
        return (f"Scale pinned at its bound! {where}; the raw parameter is at or beyond the bound and its "
                f"gradient cannot bring it back ({patience} checks in a row): a clamp in forward has cut the "
                f"gradient, or a clamp after the step undoes every update")
    return f"Scale value is not finite! {where}"


def condition_masks(readings: Sequence[Reading], warn_fraction: float,
                    grad_must_be_finite: bool = True) -> Dict[str, "numpy.ndarray"]:
    """The saturation conditions of one check's readings at once: :func:`~scalewatch.monitor.rules.reading_columns`."""
    return reading_columns(readings, warn_fraction, grad_must_be_finite)


class SaturationTracker:
    """Applies the saturation rules to readings, one alert per crossing.

    A rule fires when its condition starts to hold (``pinned``: after
    ``patience`` consecutive checks) and is re-armed once the condition is
    clear at a check. The state is small (only scales with an active alert or a
    pinned streak are kept) and goes into checkpoints.

    Args:
        warn_fraction: w in ``scale > w * max`` and ``scale < min + (1 - w)(max - min)``.
        patience: consecutive pinned checks before ``pinned`` fires.

    Example::

        tracker = SaturationTracker(warn_fraction=0.9, patience=3)
        alerts = tracker.update_all(read_scales(scales, step))
    """

    def __init__(self, warn_fraction: float = DEFAULT_WARN_FRACTION, patience: int = DEFAULT_PATIENCE) -> None:
        self.warn_fraction = check_warn_fraction(warn_fraction)
        self.patience = check_patience(patience)
        # name -> kinds currently active (fired and not yet cleared); no empty lists
        self._active: Dict[str, List[str]] = {}
        # name -> consecutive checks the pinned condition has held; no zeros
        self._pinned_streak: Dict[str, int] = {}

    def conditions(self, r: Reading, grad_must_be_finite: bool = True) -> Dict[str, bool]:
        """The rule book's conditions of one reading (:func:`~scalewatch.monitor.rules.reading_conditions`)."""
        return reading_conditions(r, self.warn_fraction, grad_must_be_finite)

    def update(self, r: Reading, grad_must_be_finite: bool = True) -> List[Alert]:
        """Apply the rules to one reading; return the alerts that fire now.

        Args:
            grad_must_be_finite: ``False`` under a gradient scaler, whose overflow
                steps have non-finite gradients by design and are skipped.
        """
        return self._apply(r, self.conditions(r, grad_must_be_finite))

    def update_all(self, readings: Sequence[Reading], grad_must_be_finite: bool = True,
                   masks: Optional[Dict[str, "numpy.ndarray"]] = None) -> List[Alert]:
        """:meth:`update` for every reading of a check, in order; the alerts that fire now.

        Same result as calling :meth:`update` on each, computed column-wise
        (:func:`condition_masks`) so that only readings where a condition holds, or
        an alert or pinned streak is open, take the per-reading path.

        Args:
            masks: ``condition_masks(readings, self.warn_fraction, grad_must_be_finite)``
                when the caller has them already (:func:`~scalewatch.monitor.summarize`
                takes the same), to compute them once per check.
        """
        if masks is None:
            if len(readings) < _VECTORISE_FROM:
                return [a for r in readings for a in self.update(r, grad_must_be_finite)]
            masks = condition_masks(readings, self.warn_fraction, grad_must_be_finite)
        any_held = masks[NEAR_UPPER] | masks[NEAR_LOWER] | masks[PINNED] | masks[NON_FINITE]
        todo = set(any_held.nonzero()[0].tolist())
        if self._active or self._pinned_streak:
            tracked = self._active.keys() | self._pinned_streak.keys()
            todo.update(i for i, r in enumerate(readings) if r.name in tracked)
        alerts: List[Alert] = []
        for i in sorted(todo):
            held = {kind: bool(masks[kind][i]) for kind in ALERT_KINDS}
            alerts.extend(self._apply(readings[i], held))
        return alerts

    def update_columns(self, columns: Any, masks: Dict[str, "numpy.ndarray"]) -> List[Alert]:
        """:meth:`update_all` of one check's :class:`~scalewatch.monitor.check_columns.CheckColumns` and
        its condition ``masks``: a :class:`Reading` is built only for rows where a condition holds or
        an alert or pinned streak is open."""
        any_held = masks[NEAR_UPPER] | masks[NEAR_LOWER] | masks[PINNED] | masks[NON_FINITE]
        todo = set(any_held.nonzero()[0].tolist())
        for name in self._active.keys() | self._pinned_streak.keys():
            row = columns.layout.row(name)
            if row is not None:  # not read at this check (another optimizer's scale): its state stays
                todo.add(row)
        alerts: List[Alert] = []
        fields = columns.layout.record_fields
        for i in sorted(todo):
            attention = (fields[i] or {}).get("attention")
            alerts.extend(self._apply(columns.reading(i), {kind: bool(masks[kind][i]) for kind in ALERT_KINDS},
                                      attention))
        return alerts

    def _apply(self, r: Reading, held: Dict[str, bool], attention: Optional[str] = None) -> List[Alert]:
        name = r.name
        streak = self._pinned_streak.get(name, 0) + 1 if held[PINNED] else 0
        if streak:
            self._pinned_streak[name] = streak
        else:
            self._pinned_streak.pop(name, None)
        held[PINNED] = streak >= self.patience
        active = self._active.get(name, [])
        fired = []
        for kind in ALERT_KINDS:
            if held[kind] and kind not in active:
                active.append(kind)
                fired.append(Alert(kind=kind, name=name, step=r.step, scale=r.scale, raw=r.raw, grad=r.grad,
                                   min=r.min, max=r.max, attention=attention,
                                   message=_message(kind, r, self.warn_fraction, self.patience, attention)))
            elif not held[kind] and kind in active and (kind != PINNED or streak == 0):
                active.remove(kind)
        if active:
            self._active[name] = active
        else:
            self._active.pop(name, None)
        return fired

    def is_active(self, name: str, kind: str) -> bool:
        """True while alert ``kind`` of scale (or element) ``name`` has fired and not cleared."""
        return kind in self._active.get(name, ())

    def state_dict(self) -> Dict[str, Any]:
        return {"active": {k: list(v) for k, v in self._active.items()},
                "pinned_streak": dict(self._pinned_streak)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._active = {k: list(v) for k, v in state.get("active", {}).items() if v}
        self._pinned_streak = {k: int(v) for k, v in state.get("pinned_streak", {}).items() if int(v)}


__all__ = ["ALERT_KINDS", "Alert", "NEAR_LOWER", "NEAR_UPPER", "NON_FINITE", "PINNED", "SaturationTracker",
           "ZERO_GRAD_ATOL", "check_patience", "check_warn_fraction", "condition_masks", "is_pinned",
           "lower_warning", "upper_warning"]
