"""What one scale looked like at one step (torch-free: the command line reads these)."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Dict, Optional


@dataclass(frozen=True)
class Reading:
    """What one scale looked like at one optimizer step.

    ``grad`` is ``None`` when the raw tensor has no gradient (a buffer, or a
    parameter that took no part in the backward pass); ``clamp_fraction`` is
    ``None`` for scales that do not clamp their output.
    """

    step: int
    name: str
    scale: float
    raw: float
    grad: Optional[float]
    min: float
    max: float
    bound: str = "hard"
    clamp_fraction: Optional[float] = None

    def to_record(self) -> Dict[str, Any]:
        # Every field is a plain value: a flat dict equals ``dataclasses.asdict`` at a
        # fraction of its cost (asdict deep-copies field by field), which counts when
        # a check records a thousand scales.
        return {name: getattr(self, name) for name in _RECORD_FIELDS}

    @property
    def finite(self) -> bool:
        return math.isfinite(self.raw) and (self.grad is None or math.isfinite(self.grad))


_RECORD_FIELDS = tuple(f.name for f in fields(Reading))
