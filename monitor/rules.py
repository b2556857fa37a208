"""The rule book: every saturation condition, its tolerances and defaults, written once.

The engine (alerts), ``scalewatch watch`` (what holds now), ``report`` (counts near a
bound), ``plot`` (outside shading), ``compare`` and the per-tensor views all call
these functions on the same numbers, so they cannot disagree.

Each rule is written once, in :func:`_conditions` and :func:`_outside`, over a tiny
set of operations (:class:`_Ops`) that exists twice: plain Python for one reading
(torch- and numpy-free: the live view starts without numpy) and numpy for columns
(a check of 16k per-head readings, a whole history). Numbers are in raw units; a
missing (one-sided) bound is NaN here, ``None`` in a :class:`Reading` or a record.

Whatever a rule needs beyond the reading is in the history line too, so a view
re-evaluates a record exactly as the engine did: ``warn_fraction`` and, on the
checks where a gradient scaler skipped the optimizer step, ``skipped_step: true``
(a non-finite gradient there is by design, not ``non_finite``).
"""
from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

if TYPE_CHECKING:  # torch- and numpy-free at run time
    import numpy

    from scalewatch.monitor.reading import Reading

# ---- names and defaults -------------------------------------------------------------------

NEAR_UPPER = "near_upper"
NEAR_LOWER = "near_lower"
PINNED = "pinned"
NON_FINITE = "non_finite"
#: every condition, in the order alerts and views list them
ALERT_KINDS = (NEAR_UPPER, NEAR_LOWER, PINNED, NON_FINITE)

#: w in ``scale > w * max`` (the original rule: warn above 0.9 x max_scale)
DEFAULT_WARN_FRACTION = 0.9
#: consecutive pinned checks before ``pinned`` fires
DEFAULT_PATIENCE = 3
#: how many scales a plot draws (those most at risk)
DEFAULT_MAX_PLOT_PANELS = 6

#: a raw value this close to a bound (relative, 4 float32 ulps, at least absolute for |bound| < 1)
#: is at it: open_clip clamps a float32 ``logit_scale`` onto the float64 ``ln 100``
AT_BOUND_RTOL = 4 * 2.0 ** -23
#: a gradient this small counts as zero: a saturated softmax leaves rounding noise of either
#: sign (1e-27 and the like) where the true gradient vanishes
ZERO_GRAD_ATOL = 1e-12
#: the history field that marks a check whose optimizer step a gradient scaler skipped
SKIPPED_STEP = "skipped_step"

# ---- the two backends of the one definition ---------------------------------------------


class _Ops(NamedTuple):
    isfinite: Callable[[Any], Any]
    abs: Callable[[Any], Any]
    maximum: Callable[[Any, Any], Any]
    where: Callable[[Any, Any, Any], Any]
    not_: Callable[[Any], Any]


_SCALAR = _Ops(math.isfinite, abs, max, lambda c, a, b: a if c else b, operator.not_)


def _columns() -> _Ops:
    import numpy as np  # only for columns: the live view and the CLI start without numpy

    return _Ops(np.isfinite, np.abs, np.maximum, np.where, np.logical_not)


def bound_tolerance(o: _Ops, bound: Any) -> Any:
    """How close to ``bound`` a raw value counts as at it (see :data:`AT_BOUND_RTOL`)."""
    return AT_BOUND_RTOL * o.maximum(o.abs(bound), 1.0)


def _upper_line(hi: Any, w: float) -> Any:
    return w * hi


def _lower_line(o: _Ops, lo: Any, hi: Any, w: float) -> Any:
    # Two-sided: the upper rule's margin from the bottom. Lower bound only: the mirror of
    # ``w * max`` taken from the bound itself, so a lower bound of 0 warns only by ``pinned``.
    return o.where(hi == hi, lo + (1.0 - w) * (hi - lo), lo + (1.0 - w) * o.abs(lo))


def _conditions(o: _Ops, scale: Any, raw: Any, grad: Any, has_grad: Any, lo: Any, hi: Any, hard: Any,
                w: float, grad_checked: Any) -> Dict[str, Any]:
    """THE rules. ``lo``/``hi`` NaN where a bound is missing; ``grad`` NaN where ``has_grad`` is False.

    ``pinned`` is this reading's condition alone; :class:`SaturationTracker` applies ``patience``.
    """
    has_lo, has_hi = lo == lo, hi == hi
    raw_ok, grad_ok = o.isfinite(raw), o.isfinite(grad)
    at_upper = has_hi & (raw >= hi - bound_tolerance(o, hi))
    at_lower = o.not_(at_upper) & has_lo & (raw <= lo + bound_tolerance(o, lo))
    return {
        NEAR_UPPER: has_hi & (scale > _upper_line(hi, w)),
        NEAR_LOWER: has_lo & (scale < _lower_line(o, lo, hi, w)),
        # At/beyond a hard bound with a gradient that cannot bring it back: gradient descent moves
        # against the gradient, so at the upper bound a gradient <= 0 (zero: a clamp in forward)
        # keeps it there or pushes further out; at the lower bound, >= 0.
        PINNED: hard & has_grad & raw_ok & grad_ok & ((at_upper & (grad <= ZERO_GRAD_ATOL))
                                                      | (at_lower & (grad >= -ZERO_GRAD_ATOL))),
        NON_FINITE: o.not_(raw_ok) | o.not_(o.isfinite(scale)) | (has_grad & o.not_(grad_ok) & grad_checked),
    }


def _outside(o: _Ops, raw: Any, lo: Any, hi: Any, hard: Any) -> Tuple[Any, Any]:
    """Raw strictly beyond a hard bound (past its tolerance): ``(above, below)``. NaN is never outside."""
    return (hard & (raw > hi + bound_tolerance(o, hi)), hard & (raw < lo - bound_tolerance(o, lo)))


def _nan(value: Optional[float]) -> float:
    return math.nan if value is None else float(value)


# ---- one reading --------------------------------------------------------------------------


def upper_warning(max_scale: Optional[float], warn_fraction: float) -> Optional[float]:
    """``near_upper`` fires above this: the original rule, ``scale > 0.9 * max_scale``.

    ``None`` without an upper bound (a one-sided scale has no ``near_upper``).
    """
    return None if max_scale is None else _upper_line(max_scale, warn_fraction)


def lower_warning(min_scale: Optional[float], max_scale: Optional[float], warn_fraction: float) -> Optional[float]:
    """``near_lower`` fires below this: the same margin as the upper rule, from the bottom.

    Two-sided: ``min + (1 - w)(max - min)``. With only a lower bound the margin is
    taken from the bound itself, ``min + (1 - w)|min|`` (the mirror of ``w * max``),
    so a lower bound of 0 warns only by ``pinned``. ``None`` without a lower bound.
    """
    return None if min_scale is None else _lower_line(_SCALAR, min_scale, _nan(max_scale), warn_fraction)


def conditions(scale: float, raw: float, grad: Optional[float], min: Optional[float], max: Optional[float],
               bound: str = "hard", warn_fraction: float = DEFAULT_WARN_FRACTION,
               grad_must_be_finite: bool = True) -> Dict[str, bool]:
    """Which conditions hold for one reading (``pinned`` at this reading alone, before ``patience``).

    Args:
        grad_must_be_finite: ``False`` where a gradient scaler skipped the step (its
            overflow gradients are non-finite by design).
    """
    held = _conditions(_SCALAR, float(scale), float(raw), _nan(grad), grad is not None, _nan(min), _nan(max),
                       bound == "hard", warn_fraction, grad_must_be_finite)
    return {kind: bool(v) for kind, v in held.items()}


def reading_conditions(r: "Reading", warn_fraction: float, grad_must_be_finite: bool = True) -> Dict[str, bool]:
    """:func:`conditions` of a :class:`~scalewatch.monitor.reading.Reading`."""
    return conditions(r.scale, r.raw, r.grad, r.min, r.max, r.bound, warn_fraction, grad_must_be_finite)


def is_pinned(r: "Reading") -> bool:
    """The raw parameter is at/beyond a hard bound and its gradient cannot bring it back."""
    return reading_conditions(r, DEFAULT_WARN_FRACTION)[PINNED]


def _record_number(record: Mapping[str, Any], key: str) -> float:
    value = record.get(key)
    return math.nan if value is None else float(value)


def record_warn_fraction(record: Mapping[str, Any]) -> float:
    """The warn fraction a history line was judged with (histories from before the field: the default)."""
    w = record.get("warn_fraction")
    return DEFAULT_WARN_FRACTION if w is None or not math.isfinite(float(w)) else float(w)


def record_conditions(record: Mapping[str, Any]) -> List[str]:
    """The conditions that hold at one history line, as the engine judged it, in :data:`ALERT_KINDS` order."""
    grad = record.get("grad")
    held = conditions(_record_number(record, "scale"), _record_number(record, "raw"),
                      None if grad is None else float(grad), record.get("min"), record.get("max"),
                      str(record.get("bound") or "hard"), record_warn_fraction(record),
                      grad_must_be_finite=not record.get(SKIPPED_STEP, False))
    return [kind for kind in ALERT_KINDS if held[kind]]


def raw_side(raw: float, min: Optional[float], max: Optional[float], bound: str = "hard") -> str:
    """``>`` when the raw parameter is beyond a hard upper bound, ``<`` below a hard lower one, else ``''``.

    A float32 raw value clamped onto a float64 bound is at it, not beyond.
    """
    above, below = _outside(_SCALAR, float(raw), _nan(min), _nan(max), bound == "hard")
    return ">" if above else "<" if below else ""


# ---- columns ------------------------------------------------------------------------------


def condition_columns(scale: "numpy.ndarray", raw: "numpy.ndarray", grad: "numpy.ndarray",
                      has_grad: "numpy.ndarray", lo: Any, hi: Any, hard: Any, warn_fraction: float,
                      grad_must_be_finite: Any = True) -> Dict[str, "numpy.ndarray"]:
    """:func:`conditions` of many readings at once, as boolean arrays (``lo``/``hi``/``hard`` may be scalars).

    Missing bounds and gradients are NaN (``has_grad`` tells a missing gradient from a NaN one);
    ``grad_must_be_finite`` may be a column (``~skipped_step``).
    """
    import numpy as np

    with np.errstate(invalid="ignore", over="ignore"):
        held = _conditions(_columns(), scale, raw, grad, has_grad, lo, hi, hard, warn_fraction, grad_must_be_finite)
    n = len(scale)
    return {kind: np.broadcast_to(v, (n,)) if np.ndim(v) == 0 else v for kind, v in held.items()}


def reading_columns(readings: Sequence["Reading"], warn_fraction: float,
                    grad_must_be_finite: bool = True) -> Dict[str, "numpy.ndarray"]:
    """:func:`condition_columns` of one check's readings: ``{kind: mask}`` for every kind in :data:`ALERT_KINDS`."""
    import numpy as np

    def column(values: List[Optional[float]]) -> "numpy.ndarray":
        return np.array(values, dtype=np.float64)  # None -> NaN

    grads = [r.grad for r in readings]
    return condition_columns(column([r.scale for r in readings]), column([r.raw for r in readings]),
                             column(grads), np.array([g is not None for g in grads], dtype=bool),
                             column([r.min for r in readings]), column([r.max for r in readings]),
                             np.array([r.bound == "hard" for r in readings], dtype=bool), warn_fraction,
                             grad_must_be_finite)


def outside_columns(raw: "numpy.ndarray", lo: float, hi: float, hard: bool = True) -> "numpy.ndarray":
    """Per reading, whether the raw parameter was strictly beyond a hard bound (``lo``/``hi`` NaN: missing)."""
    import numpy as np

    with np.errstate(invalid="ignore"):
        above, below = _outside(_columns(), raw, lo, hi, hard)
    return np.asarray(above | below, dtype=bool)


def near_counts(scale: "numpy.ndarray", lo: float, hi: float, warn_fraction: float) -> Tuple[int, int]:
    """How many readings of ``scale`` hold ``near_upper`` and ``near_lower`` (non-finite ones count in neither)."""
    import numpy as np

    finite = np.isfinite(scale)
    nan = np.full(len(scale), np.nan)
    held = condition_columns(np.where(finite, scale, np.nan), nan, nan, np.zeros(len(scale), dtype=bool),
                             lo, hi, False, warn_fraction)
    return int(np.count_nonzero(held[NEAR_UPPER])), int(np.count_nonzero(held[NEAR_LOWER]))


# ---- closeness and risk -------------------------------------------------------------------


def closeness(scale: float, lo: Optional[float], hi: Optional[float]) -> float:
    """How far ``scale`` is from its nearest bound: 0 at a bound (or non-finite), 0.5 mid-range.

    The distance is a share of the range ``hi - lo``; with one bound (the other
    missing: ``None`` or NaN) a share of that bound's magnitude (at least 1), so
    one-sided scales rank too.
    """
    lo, hi = _nan(lo), _nan(hi)
    if not math.isfinite(scale):
        return 0.0
    has_lo, has_hi = lo == lo, hi == hi
    if has_lo and has_hi:
        if hi <= lo:
            return 0.0
        return max(0.0, min(scale - lo, hi - scale) / (hi - lo))
    if has_hi:
        return max(0.0, (hi - scale) / max(abs(hi), 1.0))
    if has_lo:
        return max(0.0, (scale - lo) / max(abs(lo), 1.0))
    return 1.0


def record_closeness(record: Mapping[str, Any]) -> float:
    """:func:`closeness` of a history line's scale to its bounds."""
    return closeness(_record_number(record, "scale"), record.get("min"), record.get("max"))


def risk_key(alerted: bool, closest: float, name: str = "") -> Tuple[int, float, str]:
    """Sort key, most at risk first: anything that alerted (or holds a condition), then the
    closest approach to a bound (:func:`closeness`), then the name. Every view ranks with it."""
    return (0 if alerted else 1), closest, name


__all__ = ["ALERT_KINDS", "AT_BOUND_RTOL", "DEFAULT_MAX_PLOT_PANELS", "DEFAULT_PATIENCE", "DEFAULT_WARN_FRACTION",
           "NEAR_LOWER", "NEAR_UPPER", "NON_FINITE", "PINNED", "SKIPPED_STEP", "ZERO_GRAD_ATOL", "bound_tolerance",
           "closeness", "condition_columns", "conditions", "is_pinned", "lower_warning", "near_counts",
           "outside_columns", "raw_side", "reading_columns", "reading_conditions", "record_closeness",
           "record_conditions", "record_warn_fraction", "risk_key", "upper_warning"]
