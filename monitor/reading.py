"""What one scale looked like at one step (torch-free: the command line reads these)."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Dict, Optional

from scalewatch.monitor.display import IDENTITY


@dataclass(frozen=True)
class Reading:
    """What one scale (or one element of a multi-element scale) looked like at one optimizer step.

    ``grad`` is ``None`` when the raw tensor has no gradient (a buffer, or a
    parameter that took no part in the backward pass); ``clamp_fraction`` is
    ``None`` for scales that do not clamp their output. ``min`` or ``max`` is
    ``None`` for a one-sided bound. An element of a multi-element tensor (a
    per-head scale) is named ``TENSOR[index]`` (flat index) and carries ``tensor``
    and ``index``; a single-value scale leaves both ``None``. ``display`` says how
    dashboards show the value (``"exp"`` for a log-parametrised scale, see
    :mod:`scalewatch.monitor.display`); every number here is in raw units.
    """

    step: int
    name: str
    scale: float
    raw: float
    grad: Optional[float]
    min: Optional[float]
    max: Optional[float]
    bound: str = "hard"
    clamp_fraction: Optional[float] = None
    tensor: Optional[str] = None
    index: Optional[int] = None
    display: str = IDENTITY

    @property
    def group(self) -> str:
        """The tensor this reading belongs to: ``tensor`` for an element, else ``name``."""
        return self.name if self.tensor is None else self.tensor

    def to_record(self) -> Dict[str, Any]:
        """The reading as a history record (JSON-ready; a missing bound is ``None``, JSON null).

        ``tensor``/``index`` appear only for elements of multi-element tensors and
        ``display`` only when it is not ``"identity"``, so a single-value scale's
        record is what it always was.
        """
        # A copy of the instance dict (which holds exactly the fields, in order) costs a
        # fraction of ``dataclasses.asdict``, which counts at 16k readings a check.
        record = self.__dict__.copy()
        if record["index"] is None:
            del record["tensor"], record["index"]
        if record["display"] == IDENTITY:
            del record["display"]
        return record

    @property
    def finite(self) -> bool:
        return math.isfinite(self.raw) and (self.grad is None or math.isfinite(self.grad))


READING_FIELDS = tuple(f.name for f in fields(Reading))
_new = object.__new__
_set = object.__setattr__


def reading_from_values(values: Dict[str, Any]) -> Reading:
    """A :class:`Reading` whose instance dict is ``values`` (every field, in field order).

    For readers that build thousands of readings a check: it skips the generated
    ``__init__`` (one ``object.__setattr__`` per field of a frozen dataclass),
    about twice as fast. ``values`` is used as is, not copied or checked.
    """
    r = _new(Reading)
    _set(r, "__dict__", values)
    return r
