"""What ``params={NAME: ...}`` says about a bare parameter: its bounds and how to show it (torch-free)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from scalewatch.monitor.display import IDENTITY, check_display
from scalewatch.monitor.validation import check_bounds

_SPEC_KEYS = ("min", "max", "display")


@dataclass(frozen=True)
class ScaleSpec:
    """How to watch a bare parameter clamped elsewhere.

    Bounds are in raw units, the values the clamp compares (for open_clip's
    ``logit_scale.clamp_(0, math.log(100))`` that is ``max=math.log(100)``). Either
    bound may be ``None`` for a one-sided clamp (Swin V2's ``logit_scale`` is
    clamped only from above), not both.

    Args:
        min: lower bound, or ``None``.
        max: upper bound (``> 0``), or ``None``.
        display: ``"identity"``, or ``"exp"`` for a log-parametrised scale: report,
            plot and watch show ``exp(value)`` and the bounds transformed the same way;
            readings, alerts and the raw value stay in raw units (see
            :mod:`scalewatch.monitor.display`).

    Example::

        ScaleMonitor(params={"logit_scale": ScaleSpec(min=0.0, max=math.log(100), display="exp"),
                             "*.attn.logit_scale": (None, math.log(100))})

    In YAML the same is a list or a mapping::

        params:
          logit_scale: {min: 0.0, max: 4.60517, display: exp}
          "*.attn.logit_scale": [null, 4.60517]
    """

    min: Optional[float] = None
    max: Optional[float] = None
    display: str = IDENTITY


def check_scale_spec(value: object, where: str = "params") -> ScaleSpec:
    """Validate one ``params`` value: a ``(min, max)`` pair, a mapping, or a :class:`ScaleSpec`.

    Args:
        value: what the user gave for one parameter name.
        where: how the value is named in errors, e.g. ``"params['logit_scale']"``.

    Raises:
        ValueError: naming ``where`` and the value, for a pair of the wrong length,
            unknown mapping keys, ``(None, None)``, non-finite or inconsistent bounds,
            or an unknown ``display``.
    """
    if isinstance(value, ScaleSpec):
        lo, hi, display = value.min, value.max, value.display
    elif isinstance(value, Mapping):
        unknown = sorted(str(k) for k in value if k not in _SPEC_KEYS)
        if unknown:
            raise ValueError(f"`{where}` may only have the keys {_SPEC_KEYS}, got {unknown} in {dict(value)!r}")
        lo, hi, display = value.get("min"), value.get("max"), value.get("display", IDENTITY)
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if len(value) != 2:
            raise ValueError(f"`{where}` must be a (min, max) pair (either may be None), a ScaleSpec or a "
                             f"mapping with min/max/display, got {value!r} ({len(value)} values)")
        (lo, hi), display = value, IDENTITY
    else:
        raise ValueError(f"`{where}` must be a (min, max) pair (either may be None), a ScaleSpec or a mapping "
                         f"with min/max/display, got {value!r}")
    if lo is None and hi is None:
        raise ValueError(f"`{where}` needs at least one bound (min or max), got {value!r}")
    lo, hi = check_bounds(lo, hi, min_name=f"{where} min", max_name=f"{where} max", optional=True)
    return ScaleSpec(min=lo, max=hi, display=check_display(display, name=f"{where} display"))
