"""Reading watched scales: value, raw parameter and gradient, in one host transfer."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch

from scalewatch.monitor.watched_scale import WatchedScale

# per scale: effective, raw, grad, clamp fraction
_FIELDS = 4


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
        return asdict(self)

    @property
    def finite(self) -> bool:
        return math.isfinite(self.raw) and (self.grad is None or math.isfinite(self.grad))


def read_scales(scales: Sequence[WatchedScale], step: int) -> List[Reading]:
    """Read every scale at ``step``.

    All values are gathered into one tensor per device and moved to the host in
    one transfer, so the cost of a check is one synchronisation however many
    scales are watched.
    """
    if not scales:
        return []
    by_device: Dict[torch.device, List[torch.Tensor]] = {}
    order = []
    with torch.no_grad():
        for s in scales:
            raw = s.raw.detach()
            nan = raw.new_full((), math.nan, dtype=torch.float32)
            grad = s.raw.grad
            frac = s.clamp_fraction()
            parts = [s.effective(), raw, nan if grad is None else grad.detach(),
                     nan if frac is None else frac.detach()]
            by_device.setdefault(raw.device, []).extend(p.reshape(()).float().to(raw.device) for p in parts)
            order.append(raw.device)
        host = {dev: torch.stack(vals).cpu().tolist() for dev, vals in by_device.items()}
    offset = {dev: 0 for dev in host}
    readings = []
    for s, dev in zip(scales, order):
        i = offset[dev]
        scale, raw, grad, frac = host[dev][i:i + _FIELDS]
        offset[dev] = i + _FIELDS
        readings.append(Reading(step=step, name=s.name, scale=scale, raw=raw,
                                grad=None if s.raw.grad is None else grad, min=s.min, max=s.max,
                                bound=s.bound, clamp_fraction=None if s.clamp_fraction() is None else frac))
    return readings
