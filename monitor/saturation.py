"""Saturation rules and the alert state that turns them into one alert per crossing."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

from typing import TYPE_CHECKING

from scalewatch.monitor.validation import check_finite_number

if TYPE_CHECKING:  # torch-free at run time: the command line imports these rules
    from scalewatch.monitor.reading import Reading

NEAR_UPPER = "near_upper"
NEAR_LOWER = "near_lower"
PINNED = "pinned"
NON_FINITE = "non_finite"
ALERT_KINDS = (NEAR_UPPER, NEAR_LOWER, PINNED, NON_FINITE)

# A raw value this close to a bound (relative, a few float32 ulps) counts as at it.
_AT_BOUND_RTOL = 4 * 2.0 ** -23
# A gradient this small counts as zero: a saturated softmax leaves float rounding
# noise of either sign (1e-27 and the like) where the true gradient vanishes.
ZERO_GRAD_ATOL = 1e-12


def check_warn_fraction(warn_fraction: object) -> float:
    w = check_finite_number("warn_fraction", warn_fraction)
    if not 0.0 < w <= 1.0:
        raise ValueError(f"`warn_fraction` must lie in (0, 1], got {warn_fraction!r}")
    return w


def check_patience(patience: object) -> int:
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ValueError(f"`patience` must be an integer >= 1, got {patience!r}")
    return patience


def upper_warning(max_scale: float, warn_fraction: float) -> float:
    """``near_upper`` fires above this: the original rule, ``scale > 0.9 * max_scale``."""
    return warn_fraction * max_scale


def lower_warning(min_scale: float, max_scale: float, warn_fraction: float) -> float:
    """``near_lower`` fires below this: the same margin as the upper rule, from the bottom."""
    return min_scale + (1.0 - warn_fraction) * (max_scale - min_scale)


def _at_or_beyond(raw: float, bound: float, upper: bool) -> bool:
    tol = _AT_BOUND_RTOL * max(abs(bound), 1.0)
    return raw >= bound - tol if upper else raw <= bound + tol


def is_pinned(r: Reading) -> bool:
    """The raw parameter is at/beyond a hard bound and its gradient cannot bring it back.

    With gradient descent a parameter moves against its gradient, so at the upper
    bound a gradient <= 0 keeps it there or pushes it further out (zero is what a
    clamp in forward gives); at the lower bound, a gradient >= 0. Gradients within
    ``ZERO_GRAD_ATOL`` of zero count as zero.
    """
    if r.bound != "hard" or r.grad is None or not (math.isfinite(r.raw) and math.isfinite(r.grad)):
        return False
    if _at_or_beyond(r.raw, r.max, upper=True):
        return r.grad <= ZERO_GRAD_ATOL
    if _at_or_beyond(r.raw, r.min, upper=False):
        return r.grad >= -ZERO_GRAD_ATOL
    return False


@dataclass(frozen=True)
class Alert:
    """One alert: which rule fired, for which scale, at which step, and why."""

    kind: str
    name: str
    step: int
    scale: float
    raw: float
    grad: Optional[float]
    min: float
    max: float
    message: str

    def to_record(self) -> Dict[str, Any]:
        return asdict(self)


def _message(kind: str, r: Reading, warn_fraction: float, patience: int) -> str:
    where = f"{r.name} at step {r.step}: scale={r.scale:.4g} (range [{r.min:g}, {r.max:g}]), raw={r.raw:.4g}, grad={r.grad if r.grad is None else format(r.grad, '.3g')}"
    if kind == NEAR_UPPER:
        return f"Scale near upper bound! {where}; above {warn_fraction:g} x max_scale = {upper_warning(r.max, warn_fraction):.4g}"
    if kind == NEAR_LOWER:
        return f"Scale near lower bound! {where}; below {lower_warning(r.min, r.max, warn_fraction):.4g}"
    if kind == PINNED:
        return (f"Scale pinned at its bound! {where}; the raw parameter is at or beyond the bound and its "
                f"gradient cannot bring it back ({patience} checks in a row): a clamp in forward has cut the "
                f"gradient, or a clamp after the step undoes every update")
    return f"Scale value is not finite! {where}"


class SaturationTracker:
    """Applies the saturation rules to readings, one alert per crossing.

    A rule fires when its condition starts to hold (``pinned``: after
    ``patience`` consecutive checks) and is re-armed once the condition is
    clear at a check. The state is small and goes into checkpoints.

    Args:
        warn_fraction: w in ``scale > w * max`` and ``scale < min + (1 - w)(max - min)``.
        patience: consecutive pinned checks before ``pinned`` fires.
    """

    def __init__(self, warn_fraction: float = 0.9, patience: int = 3) -> None:
        self.warn_fraction = check_warn_fraction(warn_fraction)
        self.patience = check_patience(patience)
        # name -> kinds currently active (fired and not yet cleared)
        self._active: Dict[str, List[str]] = {}
        # name -> consecutive checks the pinned condition has held
        self._pinned_streak: Dict[str, int] = {}

    def conditions(self, r: Reading, grad_must_be_finite: bool = True) -> Dict[str, bool]:
        w = self.warn_fraction
        grad_bad = grad_must_be_finite and r.grad is not None and not math.isfinite(r.grad)
        return {
            NEAR_UPPER: r.scale > upper_warning(r.max, w),
            NEAR_LOWER: r.scale < lower_warning(r.min, r.max, w),
            PINNED: is_pinned(r),
            NON_FINITE: (not math.isfinite(r.raw)) or (not math.isfinite(r.scale)) or grad_bad,
        }

    def update(self, r: Reading, grad_must_be_finite: bool = True) -> List[Alert]:
        """Apply the rules to one reading; return the alerts that fire now.

        Args:
            grad_must_be_finite: ``False`` under a gradient scaler, whose overflow
                steps have non-finite gradients by design and are skipped.
        """
        held = self.conditions(r, grad_must_be_finite)
        streak = self._pinned_streak.get(r.name, 0) + 1 if held[PINNED] else 0
        self._pinned_streak[r.name] = streak
        held[PINNED] = streak >= self.patience
        active = self._active.setdefault(r.name, [])
        fired = []
        for kind in ALERT_KINDS:
            if held[kind] and kind not in active:
                active.append(kind)
                fired.append(Alert(kind=kind, name=r.name, step=r.step, scale=r.scale, raw=r.raw, grad=r.grad,
                                   min=r.min, max=r.max, message=_message(kind, r, self.warn_fraction, self.patience)))
            elif not held[kind] and kind in active and (kind != PINNED or streak == 0):
                active.remove(kind)
        return fired

    def state_dict(self) -> Dict[str, Any]:
        return {"active": {k: list(v) for k, v in self._active.items()},
                "pinned_streak": dict(self._pinned_streak)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._active = {k: list(v) for k, v in state.get("active", {}).items()}
        self._pinned_streak = {k: int(v) for k, v in state.get("pinned_streak", {}).items()}
