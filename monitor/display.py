"""How a scale is shown: display transforms for log-parametrised scales (torch-free).

Some models store the logarithm of a scale and use ``exp(raw)``: open_clip's
``logit_scale`` (a temperature of 100 at its cap, stored as ln 100 = 4.605)
and Swin V2's per-head ``logit_scale``. People think of those in the exp
units. A scale watched with ``display="exp"`` is still read, bounded and
alerted on in raw (optimizer) units; the transform here is only how report,
plot and watch show its value, its bounds and its warning lines. The raw
parameter and its gradient are always shown as they are.

Example::

    params = {"logit_scale": ScaleSpec(min=0.0, max=math.log(100), display="exp")}
    shown = display_value(4.60517, "exp")                  # 100.0
    format_range(None, math.log(100), display="exp")        # '(0, 100]'

Numbers are written as text here too (:func:`format_number`), for every view.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np

IDENTITY = "identity"
EXP = "exp"


def _exp(value: float) -> float:
    try:
        return math.exp(value)
    except OverflowError:  # ln of a scale beyond ~1e308: the value is shown as infinite
        return math.inf


def _exp_array(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # beyond ~709 the shown value is inf, as _exp gives it
        return np.exp(values)


#: display name -> (transform of a raw-unit value, of an array of them, what a missing lower / upper bound shows as)
_TRANSFORMS: Dict[str, Tuple[Callable[[float], float], Callable[[np.ndarray], np.ndarray], float, float]] = {
    IDENTITY: (float, np.asarray, -math.inf, math.inf),
    EXP: (_exp, _exp_array, 0.0, math.inf),
}
DISPLAYS = tuple(_TRANSFORMS)
#: record fields a display transform maps (``raw`` and ``grad`` stay in optimizer units)
DISPLAYED_FIELDS = ("scale", "min", "max")


def check_display(display: object, name: str = "display") -> str:
    """Return ``display`` if it is a known transform, else raise ``ValueError`` naming ``name``."""
    if not isinstance(display, str) or display not in _TRANSFORMS:
        raise ValueError(f"`{name}` must be one of {DISPLAYS}, got {display!r}")
    return display


def display_value(value: Optional[float], display: str = IDENTITY) -> Optional[float]:
    """``value`` (raw units) as shown: ``exp(value)`` for ``"exp"``; ``None`` and NaN pass through.

    Raises:
        ValueError: for an unknown ``display``.
    """
    if value is None:
        return None
    return _TRANSFORMS[check_display(display)][0](value)


def display_values(values: np.ndarray, display: str = IDENTITY) -> np.ndarray:
    """:func:`display_value` for an array of raw-unit values (NaN stays NaN).

    Raises:
        ValueError: for an unknown ``display``.
    """
    return _TRANSFORMS[check_display(display)][1](values)


def format_number(value: Optional[float], fmt: str = ".4g", missing: str = "-") -> str:
    """A number as every view writes it: ``fmt`` (4 significant digits), ``nan`` and ``inf`` as
    such, and ``missing`` for ``None`` (a table's ``-``, an alert's ``None``).

    Example::

        format_number(4.605170185988092)    # '4.605'
        format_number(None, missing="n/a")  # 'n/a'
    """
    return missing if value is None else format(float(value), fmt)


def display_record(record: Mapping[str, Any]) -> Dict[str, Any]:
    """A copy of a history record with ``scale``, ``min`` and ``max`` in display units.

    Uses the record's own ``display`` field (absent means ``"identity"``); ``raw``,
    ``grad`` and everything else are left as they are.

    Example::

        display_record({"name": "logit_scale", "scale": 4.60517, "raw": 4.7, "min": 0.0,
                        "max": 4.60517, "display": "exp"})["scale"]   # 100.0
    """
    out = dict(record)
    display = out.get("display", IDENTITY)
    if display != IDENTITY:
        for field in DISPLAYED_FIELDS:
            value = out.get(field)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[field] = display_value(value, display)
    return out


def format_range(lo: Optional[float], hi: Optional[float], display: str = IDENTITY, fmt: str = "g") -> str:
    """A scale's range as text; a missing bound is shown open: ``(-inf, 4.605]``, ``[0.5, inf)``.

    With ``display="exp"`` the bounds are transformed first: ``(None, ln 100)`` reads ``(0, 100]``.
    """
    transform, _, missing_lo, missing_hi = _TRANSFORMS[check_display(display)]
    left = f"({missing_lo:{fmt}}" if lo is None else f"[{transform(lo):{fmt}}"
    right = f"{missing_hi:{fmt}})" if hi is None else f"{transform(hi):{fmt}}]"
    return f"{left}, {right}"
