"""Reading watched scales: value, raw parameter and gradient, in one host transfer."""
from __future__ import annotations

from itertools import repeat
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch._utils import _flatten_dense_tensors

from scalewatch.monitor.bounded_scale import BoundedScale
from scalewatch.monitor.gc_pause import gc_paused
from scalewatch.monitor.reading import Reading, reading_from_values
from scalewatch.monitor.watched_scale import WatchedScale


def _clamped_raw(s: WatchedScale) -> bool:
    """True when the effective value is ``clamp(raw, min, max)``: a hard bound, on a bare
    parameter or on a library module that keeps :attr:`BoundedScale.scale` as it is.

    Those effective values are computed on the host, all at once, from the raw values
    the transfer brings anyway (bit for bit what ``torch.clamp`` gives on the device),
    instead of one clamp kernel per scale before it. Any other scale is asked for
    its own ``effective()``.
    """
    known = s.__dict__.get("_host_clamp")
    if known is None:  # fixed for the scale's life: worked out once, not at every check
        known = s.__dict__["_host_clamp"] = s.bound == "hard" and (
            s.module is None or type(s.module).scale is BoundedScale.scale)
    return known


def _float32(t: torch.Tensor) -> torch.Tensor:
    # one by one: cat's type promotion could lose range (an int buffer next to a half one)
    return t if t.dtype == torch.float32 else t.float()


def _to_host(tensors: Dict[torch.device, List[torch.Tensor]]) -> Tuple[np.ndarray, Dict[torch.device, int]]:
    """One flatten-and-concatenate and one device-to-host copy per device, into one host array.

    ``_flatten_dense_tensors`` is the C++ ``cat`` of flattened views that DDP uses to
    bucket gradients: one call instead of a ``reshape`` per tensor.
    """
    arrays, base, offset = [], {}, 0
    for device, parts in tensors.items():
        # all single values (scalar scales): stack is the cheaper C++ gather of the two
        joined = torch.stack(parts) if all(p.dim() == 0 for p in parts) else _flatten_dense_tensors(parts)
        array = joined.cpu().numpy()
        arrays.append(array)
        base[device] = offset
        offset += array.size
    return (arrays[0] if len(arrays) == 1 else np.concatenate(arrays)), base


def _check_size(s: WatchedScale, what: str, t: torch.Tensor, n: int) -> None:
    if t.numel() != n:
        raise ValueError(f"{what} of scale {s.name!r} holds {t.numel()} values, its raw tensor {n}: "
                         f"they must match (or {what} be a single value)")


def read_scales(scales: Sequence[WatchedScale], step: int) -> List[Reading]:
    """Read every scale at ``step``: one :class:`Reading` per value, in order.

    A single-value scale gives one reading named as the scale; a multi-element one
    (a per-head scale) one reading per element, named ``NAME[i]`` (flat index) with
    ``tensor=NAME`` and ``index=i``. All values of all scales are flattened into
    one float32 tensor per device and moved to the host in one transfer, so a
    check costs one synchronisation however many scales and elements are watched;
    hard clamps of the effective value are applied on the host, vectorised.

    Raises:
        ValueError: when a scale's effective value or clamp fraction does not hold one
            value per raw element (a custom :class:`BoundedScale` subclass).

    Example::

        readings = read_scales(find_bounded_scales(model), step=99)
    """
    if not scales:
        return []
    tensors: Dict[torch.device, List[torch.Tensor]] = {}
    sizes: Dict[torch.device, int] = {}
    # per scale: (device, values, raw at, effective at or None (host clamp), grad at or None,
    # clamp fraction at or None, clamp fraction per element?); "at" counts within its device
    slots: List[Tuple[torch.device, int, int, Optional[int], Optional[int], Optional[int], bool]] = []
    with torch.no_grad():
        for s in scales:
            raw = s.raw
            n = raw.numel()
            device = raw.device
            parts = tensors.get(device)
            if parts is None:
                parts = tensors[device] = []
                sizes[device] = 0
            raw_at = at = sizes[device]
            parts.append(_float32(raw))
            at += n
            eff_at = grad_at = frac_at = None
            if not _clamped_raw(s):
                eff = s.effective()
                _check_size(s, "effective()", eff, n)
                parts.append(_float32(eff))
                eff_at, at = at, at + n
            grad = raw.grad
            if grad is not None:
                parts.append(_float32(grad))
                grad_at, at = at, at + n
            frac = s.clamp_fraction()
            per_element = False
            if frac is not None:
                if frac.numel() != 1:
                    _check_size(s, "clamp_fraction", frac, n)
                    per_element = True
                # computed in forward, on the input's device (a 0-dim CPU scale may meet CUDA inputs)
                parts.append(_float32(frac if frac.device == device else frac.to(device)))
                frac_at, at = at, at + (n if per_element else 1)
            sizes[device] = at
            slots.append((device, n, raw_at, eff_at, grad_at, frac_at, per_element))
        host, base = _to_host(tensors)
    effective = _host_effective(scales, slots, host, base)
    values = host.tolist()
    with gc_paused():
        return _readings(scales, slots, values, effective, base, step)


def _host_effective(scales: Sequence[WatchedScale], slots: Sequence[tuple], host: np.ndarray,
                    base: Dict[torch.device, int]) -> Dict[int, List[float]]:
    """``clamp(raw, min, max)`` in float32 for every host-clamped scale, as one vectorised clip."""
    clamped = [i for i, slot in enumerate(slots) if slot[3] is None]
    if not clamped:
        return {}
    counts = np.array([slots[i][1] for i in clamped], dtype=np.int64)
    starts = np.array([base[slots[i][0]] + slots[i][2] for i in clamped], dtype=np.int64)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    positions = np.repeat(starts - first, counts) + np.arange(int(counts.sum()))
    lows = np.array([-np.inf if scales[i].min is None else scales[i].min for i in clamped], dtype=np.float32)
    highs = np.array([np.inf if scales[i].max is None else scales[i].max for i in clamped], dtype=np.float32)
    # float32 bounds, as torch.clamp casts a Python bound to the tensor's dtype
    values = np.clip(host[positions], np.repeat(lows, counts), np.repeat(highs, counts)).tolist()
    out, at = {}, 0
    for i, n in zip(clamped, counts.tolist()):
        out[i] = values[at:at + n]
        at += n
    return out


def _readings(scales: Sequence[WatchedScale], slots: Sequence[tuple], values: List[float],
              effective: Dict[int, List[float]], base: Dict[torch.device, int], step: int) -> List[Reading]:
    readings: List[Reading] = []
    append = readings.append
    for k, (s, (device, n, raw_at, eff_at, grad_at, frac_at, per_element)) in enumerate(zip(scales, slots)):
        b = base[device]
        raw_at += b
        # Built without the dataclass __init__: at 16k readings a check that is half the cost.
        if n == 1:
            append(reading_from_values({
                "step": step, "name": s.name, "scale": effective[k][0] if eff_at is None else values[b + eff_at],
                "raw": values[raw_at], "grad": None if grad_at is None else values[b + grad_at], "min": s.min,
                "max": s.max, "bound": s.bound, "clamp_fraction": None if frac_at is None else values[b + frac_at],
                "tensor": None, "index": None, "display": s.display}))
            continue
        scale_values = effective[k] if eff_at is None else values[b + eff_at:b + eff_at + n]
        grads: Iterable[Optional[float]] = repeat(None) if grad_at is None else values[b + grad_at:b + grad_at + n]
        fracs: Iterable[Optional[float]]
        if frac_at is None:
            fracs = repeat(None)
        elif per_element:
            fracs = values[b + frac_at:b + frac_at + n]
        else:
            fracs = repeat(values[b + frac_at])
        lo, hi, bound, display, tensor = s.min, s.max, s.bound, s.display, s.name
        for index, (name, value, raw, grad, frac) in enumerate(zip(s.element_names(), scale_values,
                                                                   values[raw_at:raw_at + n], grads, fracs)):
            append(reading_from_values({
                "step": step, "name": name, "scale": value, "raw": raw, "grad": grad, "min": lo, "max": hi,
                "bound": bound, "clamp_fraction": frac, "tensor": tensor, "index": index, "display": display}))
    return readings
