"""Argument checks shared by the library's constructors (torch-free)."""
from __future__ import annotations

import math
import numbers
from typing import Tuple


def check_finite_number(name: str, value: object) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a real number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value!r}")
    return float(value)


def check_bounds(min_scale: object, max_scale: object, *, min_name: str = "min_scale",
                 max_name: str = "max_scale") -> Tuple[float, float]:
    """Validate a ``(min, max)`` pair: finite, ``max > 0``, ``min < max``."""
    lo = check_finite_number(min_name, min_scale)
    hi = check_finite_number(max_name, max_scale)
    if hi <= 0:
        raise ValueError(f"`{max_name}` must be > 0, got {max_scale!r}")
    if lo >= hi:
        raise ValueError(f"`{min_name}` must be < `{max_name}`, got {min_name}={min_scale!r} >= {max_name}={max_scale!r}")
    return lo, hi
