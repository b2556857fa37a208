"""Argument checks shared by the library's constructors (torch-free)."""
from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple


def check_finite_number(name: str, value: object) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a real number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value!r}")
    return float(value)


def check_bounds(min_scale: object, max_scale: object, *, min_name: str = "min_scale",
                 max_name: str = "max_scale", optional: bool = False) -> Tuple[Optional[float], Optional[float]]:
    """Validate a ``(min, max)`` pair: finite, ``max > 0``, ``min < max``.

    Args:
        optional: allow a missing side (``None``, a one-sided bound); not both.

    Raises:
        ValueError: naming the bad side and showing its value.
    """
    if optional and min_scale is None and max_scale is None:
        raise ValueError(f"`{min_name}` and `{max_name}` cannot both be None: give at least one bound")
    lo = None if optional and min_scale is None else check_finite_number(min_name, min_scale)
    hi = None if optional and max_scale is None else check_finite_number(max_name, max_scale)
    if hi is not None and hi <= 0:
        raise ValueError(f"`{max_name}` must be > 0, got {max_scale!r}")
    if lo is not None and hi is not None and lo >= hi:
        raise ValueError(f"`{min_name}` must be < `{max_name}`, got {min_name}={min_scale!r} >= {max_name}={max_scale!r}")
    return lo, hi
