"""Reading watched scales: value, raw parameter and gradient, in one host transfer."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from scalewatch.monitor.bounded_scale import BoundedScale
from scalewatch.monitor.reading import Reading
from scalewatch.monitor.watched_scale import WatchedScale


def _scalar(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a 0-dim float32 tensor, converting only what needs it.

    Each conversion is a kernel launch that a check of many scales pays per scale,
    so the common case (a 0-dim float32 tensor) costs none.
    """
    if t.dim() != 0:
        t = t.reshape(())
    if t.dtype != torch.float32:
        t = t.float()
    return t


def _clamped_raw(s: WatchedScale) -> bool:
    """True when the effective value is ``clamp(raw, min, max)``: a hard bound, on a bare
    parameter or on a library module that keeps :attr:`BoundedScale.scale` as it is.

    Those effective values are computed on the host, all at once, from the raw values
    the transfer brings anyway (bit for bit what ``torch.clamp`` gives on the device),
    instead of one clamp kernel per scale before it. Any other scale is asked for
    its own ``effective()``.
    """
    return s.bound == "hard" and (s.module is None or type(s.module).scale is BoundedScale.scale)


def read_scales(scales: Sequence[WatchedScale], step: int) -> List[Reading]:
    """Read every scale at ``step``.

    All values are gathered into one tensor per device and moved to the host in
    one transfer, so the cost of a check is one synchronisation however many
    scales are watched.
    """
    if not scales:
        return []
    by_device: Dict[torch.device, List[torch.Tensor]] = {}
    # per scale: its device and where its values sit in that device's list
    # (raw, effective unless computed on the host, then grad and clamp fraction where they exist)
    slots: List[Tuple[torch.device, int, Optional[int], Optional[int], Optional[int]]] = []
    with torch.no_grad():
        for s in scales:
            raw = s.raw
            device = raw.device
            values = by_device.setdefault(device, [])
            grad = raw.grad
            frac = s.clamp_fraction()
            raw_at = len(values)
            # raw, its gradient and the effective value live on one device
            values.append(_scalar(raw))
            eff_at = grad_at = frac_at = None
            if not _clamped_raw(s):
                eff_at = len(values)
                values.append(_scalar(s.effective()))
            if grad is not None:
                grad_at = len(values)
                values.append(_scalar(grad))
            if frac is not None:
                frac_at = len(values)
                # computed in forward, on the input's device (a 0-dim CPU scale may meet CUDA inputs)
                values.append(_scalar(frac) if frac.device == device else _scalar(frac).to(device))
            slots.append((device, raw_at, eff_at, grad_at, frac_at))
        host = {device: torch.stack(values).cpu().tolist() for device, values in by_device.items()}
        clamped = [i for i, slot in enumerate(slots) if slot[2] is None]
        effective: Dict[int, float] = {}
        if clamped:
            raws, lows, highs = torch.tensor([[host[slots[i][0]][slots[i][1]] for i in clamped],
                                              [scales[i].min for i in clamped],
                                              [scales[i].max for i in clamped]], dtype=torch.float32)
            effective = dict(zip(clamped, torch.clamp(raws, lows, highs).tolist()))
    readings = []
    for i, (s, (device, raw_at, eff_at, grad_at, frac_at)) in enumerate(zip(scales, slots)):
        h = host[device]
        readings.append(Reading(step=step, name=s.name, scale=effective[i] if eff_at is None else h[eff_at],
                                raw=h[raw_at], grad=None if grad_at is None else h[grad_at], min=s.min,
                                max=s.max, bound=s.bound, clamp_fraction=None if frac_at is None else h[frac_at]))
    return readings
