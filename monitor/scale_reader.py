"""Reading watched scales: value, raw parameter and gradient, in one host transfer."""
from __future__ import annotations

from itertools import repeat
from operator import attrgetter, is_not
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch._utils import _flatten_dense_tensors

from scalewatch.monitor.bounded_scale import BoundedScale
from scalewatch.monitor.check_columns import CheckColumns, ScaleLayout
from scalewatch.monitor.reading import Reading
from scalewatch.monitor.watched_scale import WatchedScale


_GRAD = attrgetter("grad")
_DATA_PTR = torch.Tensor.data_ptr
_DTYPE = attrgetter("dtype")
_CLAMP_FRACTION = attrgetter("clamp_fraction")


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
    (:func:`read_columns` is the same read as columns, what the engine uses.)

    Raises:
        ValueError: when a scale's effective value or clamp fraction does not hold one
            value per raw element (a custom :class:`BoundedScale` subclass).

    Example::

        readings = read_scales(find_bounded_scales(model), step=99)
    """
    if not scales:
        return []
    return read_columns(scales, step, ScaleLayout(scales)).readings()


def read_columns(scales: Sequence[WatchedScale], step: int, layout: ScaleLayout) -> CheckColumns:
    """Read every scale at ``step`` in one host transfer, as one check's columns.

    Args:
        layout: ``ScaleLayout(scales)``, kept by the caller from check to check.
    """
    fast = _gather_fast(scales, layout)
    host, slots, base = fast if fast is not None else _gather(scales)
    return _columns(step, layout, scales, host, slots, base)


class _FastGather:
    """The common case, gathered with list comprehensions instead of a loop of branches per scale:
    every scale host-clamped (its effective value is clamp(raw)), raw tensors float32 on one device."""

    def __init__(self, scales: Sequence[WatchedScale]) -> None:
        self.raws = [s.raw for s in scales]
        self.modules = [s.module for s in scales]
        self.all_modules = all(m is not None for m in self.modules)  # library modules only: attrgetter in C
        self.counts = [r.numel() for r in self.raws]
        self.device = self.raws[0].device
        self.all_scalar = all(r.dim() == 0 for r in self.raws)
        self.slots: Dict[Tuple[bytes, bytes], List[tuple]] = {}
        # single values on the CPU, plain tensors: read in place through numpy views (see raws_on_host)
        self.in_place = self.all_scalar and self.device.type == "cpu" and all(
            type(r) in (torch.Tensor, torch.nn.Parameter) for r in self.raws)
        self.views: List[np.ndarray] = []
        self.addresses: List[int] = []
        self.dtypes: List[torch.dtype] = []

    def raws_on_host(self) -> Optional[np.ndarray]:
        """The raw values, read where they lie; None unless :attr:`in_place`.

        A numpy view of each 0-dim CPU parameter is made once and kept: reading a
        thousand of them is one ``np.array`` call (~0.1 ms) where stacking them costs
        ~1 ms, a C++ view and a dispatch per tensor. Each check compares the
        parameters' data addresses and dtypes with the views' (a ``p.data = ...`` or
        ``set_`` moves them, a ``.view(dtype)`` retypes them) and makes new views if one
        changed; the views keep the storage they show alive, so an address is never
        reused behind them. A parameter that is no longer one float32 value ends the
        in-place read for this watch (the stacked read converts it).
        """
        if not self.in_place:
            return None
        addresses, dtypes = list(map(_DATA_PTR, self.raws)), list(map(_DTYPE, self.raws))
        if addresses != self.addresses or dtypes != self.dtypes:
            if not all(r.dim() == 0 and r.dtype == torch.float32 for r in self.raws):
                self.in_place = False
                return None
            self.views = [r.numpy(force=True) for r in self.raws]  # (force: a parameter, detached)
            self.addresses, self.dtypes = addresses, dtypes
        return np.array(self.views, dtype=np.float32)

    @staticmethod
    def eligible(scales: Sequence[WatchedScale]) -> bool:
        device = scales[0].raw.device
        return all(_clamped_raw(s) and s.raw.dtype == torch.float32 and s.raw.device == device for s in scales)

    def slots_for(self, has_grad: bytes, has_fraction: bytes) -> List[tuple]:
        """The slots :func:`_gather` would give, for parts ordered raws, then gradients, then fractions."""
        slots = self.slots.get((has_grad, has_fraction))
        if slots is None:
            at = sum(self.counts)
            raw_at = np.concatenate(([0], np.cumsum(self.counts)[:-1])).tolist()
            grad_at: List[Optional[int]] = []
            for n, g in zip(self.counts, has_grad):
                grad_at.append(at if g else None)
                at += n if g else 0
            frac_at: List[Optional[int]] = []
            for f in has_fraction:
                frac_at.append(at if f else None)
                at += 1 if f else 0
            slots = self.slots[(has_grad, has_fraction)] = [
                (self.device, n, r, None, g, f, False) for n, r, g, f in zip(self.counts, raw_at, grad_at, frac_at)]
        return slots


def _gather_fast(scales: Sequence[WatchedScale],
                 layout: ScaleLayout) -> Optional[Tuple[np.ndarray, List[tuple], Dict[torch.device, int]]]:
    recipe = layout.cache.get("fast_gather")
    if recipe is None:
        recipe = layout.cache["fast_gather"] = _FastGather(scales) if _FastGather.eligible(scales) else False
    if recipe is False:
        return None
    grads = list(map(_GRAD, recipe.raws))  # map with attrgetter: no Python frame per scale
    fractions = list(map(_CLAMP_FRACTION, recipe.modules)) if recipe.all_modules else \
        [None if m is None else m.clamp_fraction for m in recipe.modules]
    # which are there, in C (map with operator.is_not): no Python frame per scale
    has_grad, has_fraction = bytes(map(is_not, grads, repeat(None))), bytes(map(is_not, fractions, repeat(None)))
    present_f = fractions if all(has_fraction) else [f for f in fractions if f is not None] if any(has_fraction) else []
    device = recipe.device
    # A per-element fraction, or one computed on another device, goes the general way. All-scalar
    # gathers need no look at each fraction: torch.stack itself refuses another shape or device.
    if not recipe.all_scalar and not all(f.dim() == 0 and f.device == device for f in present_f):
        return None
    present_g = grads if all(has_grad) else [g for g in grads if g is not None]
    raws = recipe.raws_on_host()
    parts = [*present_g, *present_f] if raws is not None else [*recipe.raws, *present_g, *present_f]
    with torch.no_grad():
        if not parts:
            host = raws
        elif recipe.all_scalar:
            try:
                joined = torch.stack(parts)
            except RuntimeError:  # a fraction of another shape or on another device
                return None
            host = joined.cpu().numpy() if raws is None else np.concatenate((raws, joined.cpu().numpy()))
        else:
            host = _flatten_dense_tensors(parts).cpu().numpy()
    if host.dtype != np.float32:
        host = host.astype(np.float32)
    slots = recipe.slots_for(has_grad, has_fraction)
    return host, slots, {device: 0}


def _gather(scales: Sequence[WatchedScale]) -> Tuple[np.ndarray, List[tuple], Dict[torch.device, int]]:
    """Every value a check needs, flattened per device and brought to the host in one transfer."""
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
            if s.effective_is_raw:  # (an attention statistic) its raw values are its values: read once
                eff_at = raw_at
            elif not _clamped_raw(s):
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
    return host, slots, base


def _positions(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``[start, start + 1, ..., start + count - 1]`` for each pair, concatenated (vectorised)."""
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return np.repeat(starts - first, counts) + np.arange(int(counts.sum()), dtype=np.int64)


class _Plan:
    """Where each column's values sit in the host array, for one shape of gather (cached: the same
    scales with the same gradients present give the same shape at every check)."""

    def __init__(self, scales: Sequence[WatchedScale], slots: Sequence[tuple], base: Dict[torch.device, int]) -> None:
        counts = np.array([sl[1] for sl in slots], dtype=np.int64)
        at = lambda k, sl: base[sl[0]] + sl[k]  # noqa: E731
        self.raw = _positions(np.array([at(2, sl) for sl in slots], dtype=np.int64), counts)
        per_row = np.repeat(np.arange(len(slots)), counts)
        own = np.array([sl[3] is not None for sl in slots], dtype=bool)
        self.own_rows = own[per_row]  # rows whose effective value the scale computed itself
        own_idx = np.flatnonzero(own)
        self.own = _positions(np.array([at(3, slots[i]) for i in own_idx], dtype=np.int64), counts[own_idx])
        lows = np.array([-np.inf if s.min is None else s.min for s in scales], dtype=np.float32)
        highs = np.array([np.inf if s.max is None else s.max for s in scales], dtype=np.float32)
        # float32 bounds, as torch.clamp casts a Python bound to the tensor's dtype
        self.lows, self.highs = lows[per_row], highs[per_row]
        has_grad = np.array([sl[4] is not None for sl in slots], dtype=bool)
        self.has_grad = has_grad[per_row]
        grad_idx = np.flatnonzero(has_grad)
        self.grad = _positions(np.array([at(4, slots[i]) for i in grad_idx], dtype=np.int64), counts[grad_idx])
        has_frac = np.array([sl[5] is not None for sl in slots], dtype=bool)
        self.has_fraction = has_frac[per_row]
        frac_idx = np.flatnonzero(has_frac)
        frac_counts = np.array([counts[i] if slots[i][6] else 1 for i in frac_idx], dtype=np.int64)
        frac_at = _positions(np.array([at(5, slots[i]) for i in frac_idx], dtype=np.int64), frac_counts)
        # a single clamp fraction serves every element of its scale
        per_element = np.array([slots[i][6] for i in frac_idx], dtype=bool)
        self.fraction = np.repeat(frac_at, np.repeat(np.where(per_element, 1, counts[frac_idx]), frac_counts))


def _columns(step: int, layout: ScaleLayout, scales: Sequence[WatchedScale], host: np.ndarray,
             slots: List[tuple], base: Dict[torch.device, int]) -> CheckColumns:
    cached = layout.cache.get("read_plan")
    if cached is not None and (cached[0] is slots or cached[0] == slots) and cached[1] == base:
        p = cached[2]
    else:
        p = _Plan(scales, slots, base)
        layout.cache["read_plan"] = (slots, dict(base), p)
    raw32 = host[p.raw]
    scale32 = np.clip(raw32, p.lows, p.highs)  # the host clamp, bit for bit torch.clamp in float32
    if len(p.own):
        scale32[p.own_rows] = host[p.own]
    n = len(raw32)
    grad = np.full(n, np.nan)
    grad[p.has_grad] = host[p.grad]
    fraction = np.full(n, np.nan)
    fraction[p.has_fraction] = host[p.fraction]
    return CheckColumns(step, layout, scale32.astype(np.float64), raw32.astype(np.float64), grad, p.has_grad,
                        fraction, p.has_fraction)
