"""One check's readings as columns: a numpy array per field, from the host transfer to the record.

A check of a thousand scales (or 16k per-head elements) is a few arrays, not thousands of
:class:`~scalewatch.monitor.reading.Reading` objects: the rules (:mod:`scalewatch.monitor.rules`),
the per-tensor summaries, the logger values and the history lines all work on the arrays,
and a :class:`Reading` is built only where one is needed (an alert, the progress bar).

What the readings of a watch share from check to check (names, tensors, bounds, kinds,
display units) is worked out once, in :class:`ScaleLayout`; a check carries only its numbers.
"""
from __future__ import annotations

from itertools import count
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from scalewatch.monitor.history.keys import KEY_PREFIX
from scalewatch.monitor.reading import Reading, reading_from_values


def _nan_for_none(values: Sequence[Optional[float]]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


_SERIALS = count()


class ScaleLayout:
    """The fixed part of a watch's readings, element by element, in the order the reader returns them.

    Args:
        scales: the watched scales (each with ``name``, ``numel``, ``element_names()``,
            ``min``, ``max``, ``bound``, ``display``); a multi-element scale's elements
            are ``NAME[i]`` with ``tensor=NAME``, ``index=i``.
    """

    def __init__(self, scales: Sequence[Any]) -> None:
        names: List[str] = []
        tensors: List[Optional[str]] = []
        indexes: List[Optional[int]] = []
        lows: List[Optional[float]] = []
        highs: List[Optional[float]] = []
        bounds: List[str] = []
        displays: List[str] = []
        fields: List[Optional[Mapping[str, Any]]] = []
        group_starts: List[int] = []
        group_names: List[str] = []
        for s in scales:
            n = s.numel
            group_starts.append(len(names))
            group_names.append(s.name)
            names.extend(s.element_names())
            tensors.extend([None] * n if n == 1 else [s.name] * n)
            indexes.extend([None] if n == 1 else range(n))
            lows.extend([s.min] * n)
            highs.extend([s.max] * n)
            bounds.extend([s.bound] * n)
            displays.extend([s.display] * n)
            fields.extend([getattr(s, "record_fields", None)] * n)
        self.names, self.tensors, self.indexes = names, tensors, indexes
        self.mins, self.maxs, self.bounds, self.displays = lows, highs, bounds, displays
        #: per row, the fields its scale adds to its history lines (``record_fields``; mostly ``None``)
        self.record_fields = fields
        #: bounds as float64 columns, NaN where a side is missing (the rule book's convention)
        self.lo, self.hi = _nan_for_none(lows), _nan_for_none(highs)
        self.hard = np.array([b == "hard" for b in bounds], dtype=bool)
        self.has_lo, self.has_hi = ~np.isnan(self.lo), ~np.isnan(self.hi)
        #: per-tensor runs: where each scale's elements start, its name, whether it is multi-element
        self.group_starts = np.array(group_starts, dtype=np.int64)
        self.group_names = group_names
        self.is_element = np.array([t is not None for t in tensors], dtype=bool)
        self._row: Optional[Dict[str, int]] = None
        self._keys: Dict[str, np.ndarray] = {}
        self.cache: Dict[str, Any] = {}  # for encoders that keep per-watch text (the history lines)
        #: unique for the process's life (an id() may be reused once a layout is gone): names this layout's keys
        self.serial = next(_SERIALS)

    def __len__(self) -> int:
        return len(self.names)

    def row(self, name: str) -> Optional[int]:
        """The row of reading ``name`` (``None`` if it is not in this layout)."""
        if self._row is None:
            self._row = {n: i for i, n in enumerate(self.names)}
        return self._row.get(name)

    def group_keys(self, field: str) -> np.ndarray:
        """``scalewatch/NAME/FIELD`` of every scale (a per-tensor summary's keys), worked out once per field."""
        keys = self._keys.get("/" + field)
        if keys is None:
            keys = self._keys["/" + field] = np.array([f"{KEY_PREFIX}{n}/{field}" for n in self.group_names],
                                                     dtype=object)
        return keys

    def keys(self, field: str) -> np.ndarray:
        """``scalewatch/NAME/FIELD`` of every row, as an object array (worked out once per field)."""
        keys = self._keys.get(field)
        if keys is None:
            keys = self._keys[field] = np.array([f"{KEY_PREFIX}{n}/{field}" for n in self.names], dtype=object)
        return keys


#: a check's per-row arrays, in :class:`CheckColumns`' argument order
ARRAYS = ("scale", "raw", "grad", "has_grad", "clamp_fraction", "has_fraction")


class CheckColumns:
    """One check's numbers, a float64 array per field, row ``i`` being ``layout.names[i]``.

    ``grad`` and ``clamp_fraction`` hold NaN where there is none; ``has_grad`` /
    ``has_fraction`` tell "none" from a NaN value.
    """

    __slots__ = ("step", "layout") + ARRAYS

    def __init__(self, step: int, layout: ScaleLayout, scale: np.ndarray, raw: np.ndarray, grad: np.ndarray,
                 has_grad: np.ndarray, clamp_fraction: np.ndarray, has_fraction: np.ndarray) -> None:
        self.step, self.layout = step, layout
        self.scale, self.raw, self.grad, self.has_grad = scale, raw, grad, has_grad
        self.clamp_fraction, self.has_fraction = clamp_fraction, has_fraction

    def __len__(self) -> int:
        return len(self.scale)

    @classmethod
    def joined(cls, layout: ScaleLayout, parts: Sequence["CheckColumns"]) -> "CheckColumns":
        """``parts`` of one check, their rows one after the other, under ``layout`` (theirs in that order)."""
        return cls(parts[0].step, layout, *(np.concatenate([getattr(p, a) for p in parts]) for a in ARRAYS))

    def reading(self, i: int) -> Reading:
        """Row ``i`` as a :class:`Reading`."""
        lay = self.layout
        return reading_from_values({
            "step": self.step, "name": lay.names[i], "scale": float(self.scale[i]), "raw": float(self.raw[i]),
            "grad": float(self.grad[i]) if self.has_grad[i] else None, "min": lay.mins[i], "max": lay.maxs[i],
            "bound": lay.bounds[i],
            "clamp_fraction": float(self.clamp_fraction[i]) if self.has_fraction[i] else None,
            "tensor": lay.tensors[i], "index": lay.indexes[i], "display": lay.displays[i]})

    def readings(self, rows: Optional[Sequence[int]] = None) -> List[Reading]:
        """Rows ``rows`` (default: every row) as :class:`Reading` objects."""
        lay = self.layout
        rows = range(len(self)) if rows is None else rows
        scale, raw, grad, frac = (a.tolist() for a in (self.scale, self.raw, self.grad, self.clamp_fraction))
        has_grad, has_frac = self.has_grad.tolist(), self.has_fraction.tolist()
        step = self.step
        return [reading_from_values({
            "step": step, "name": lay.names[i], "scale": scale[i], "raw": raw[i],
            "grad": grad[i] if has_grad[i] else None, "min": lay.mins[i], "max": lay.maxs[i], "bound": lay.bounds[i],
            "clamp_fraction": frac[i] if has_frac[i] else None, "tensor": lay.tensors[i], "index": lay.indexes[i],
            "display": lay.displays[i]}) for i in rows]

    def grads_finite(self) -> bool:
        """Whether every gradient there is is finite."""
        return bool(np.isfinite(self.grad[self.has_grad]).all())


__all__ = ["CheckColumns", "ScaleLayout"]
