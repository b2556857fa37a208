"""Per-tensor summaries of element-wise readings, for loggers that cannot take 16k keys (torch-free).

A per-head scale gives one reading per head (``NAME[h]``). The history keeps every
one; TensorBoard and W&B stay usable with thousands of heads when, beyond a
per-element key cap, they get one summary per tensor instead: the range of the
scale and raw values across its elements and how many elements hold each
saturation condition at this check.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence

from scalewatch.monitor.display import IDENTITY
from scalewatch.monitor.reading import Reading
from scalewatch.monitor.rules import DEFAULT_WARN_FRACTION, NEAR_LOWER, NEAR_UPPER, NON_FINITE, PINNED
from scalewatch.monitor.saturation import condition_masks

if TYPE_CHECKING:
    import numpy

#: the fields of :meth:`TensorSummary.metrics`, as logger keys ``scalewatch/TENSOR/FIELD`` would use them
SUMMARY_FIELDS = ("elements", "scale_min", "scale_max", "raw_min", "raw_max", "near_upper", "near_lower", "pinned",
                  "non_finite")


@dataclass(frozen=True)
class TensorSummary:
    """One tensor's readings at one check, summarised across its elements.

    ``scale_*``/``raw_*`` are the smallest and largest finite values (NaN when no
    element is finite), in raw units. The counts use the saturation rules at this
    reading alone: ``pinned`` counts elements at or beyond a hard bound whose
    gradient cannot bring them back (the ``pinned`` alert also needs ``patience``
    checks in a row). A single-value scale is a "tensor" of one element.
    """

    tensor: str
    step: int
    elements: int
    scale_min: float
    scale_max: float
    raw_min: float
    raw_max: float
    near_upper: int
    near_lower: int
    pinned: int
    non_finite: int
    min: Optional[float]
    max: Optional[float]
    display: str = IDENTITY

    @property
    def near_bound(self) -> int:
        """Elements near either bound."""
        return self.near_upper + self.near_lower

    def metrics(self) -> Dict[str, float]:
        """``{field: value}`` for every field in :data:`SUMMARY_FIELDS` (numbers only, for loggers)."""
        return {name: float(getattr(self, name)) for name in SUMMARY_FIELDS}


def summarize(readings: Sequence[Reading], warn_fraction: float = DEFAULT_WARN_FRACTION, grad_must_be_finite: bool = True,
              masks: Optional[Dict[str, "numpy.ndarray"]] = None) -> List[TensorSummary]:
    """One :class:`TensorSummary` per tensor (``Reading.group``), in order of first appearance.

    Vectorised over the elements (numpy), so 16k readings cost a few milliseconds.

    Args:
        readings: one check's readings, e.g. from :func:`~scalewatch.monitor.read_scales`.
        warn_fraction: as :class:`~scalewatch.monitor.SaturationTracker`'s.
        grad_must_be_finite: ``False`` under a gradient scaler (a non-finite gradient
            is then not counted as ``non_finite``).
        masks: ``condition_masks(readings, warn_fraction, grad_must_be_finite)`` when the
            caller has them already (shared with ``SaturationTracker.update_all``).

    Example::

        masks = condition_masks(readings, 0.9)
        alerts = tracker.update_all(readings, masks=masks)
        for s in summarize(readings, 0.9, masks=masks):
            print(s.tensor, s.scale_min, s.scale_max, s.pinned, "of", s.elements, "pinned")
    """
    import numpy as np  # only here: the command line starts without numpy

    n = len(readings)
    if n == 0:
        return []
    if masks is None:
        masks = condition_masks(readings, warn_fraction, grad_must_be_finite)
    keys = np.array([r.name if r.tensor is None else r.tensor for r in readings], dtype=object)
    # read_scales puts a tensor's elements next to each other: summarise runs, merge repeats after
    starts = [0] + (np.flatnonzero(keys[1:] != keys[:-1]) + 1).tolist()
    with np.errstate(invalid="ignore"):
        scale = np.array([r.scale for r in readings], dtype=np.float64)
        raw = np.array([r.raw for r in readings], dtype=np.float64)
        columns = {
            "scale_min": np.fmin.reduceat(np.where(np.isfinite(scale), scale, np.nan), starts),
            "scale_max": np.fmax.reduceat(np.where(np.isfinite(scale), scale, np.nan), starts),
            "raw_min": np.fmin.reduceat(np.where(np.isfinite(raw), raw, np.nan), starts),
            "raw_max": np.fmax.reduceat(np.where(np.isfinite(raw), raw, np.nan), starts),
            **{kind: np.add.reduceat(masks[kind].astype(np.int64), starts)
               for kind in (NEAR_UPPER, NEAR_LOWER, PINNED, NON_FINITE)},
        }
    lists = {name: column.tolist() for name, column in columns.items()}
    ends = starts[1:] + [n]
    out: Dict[str, TensorSummary] = {}
    for j, (start, end) in enumerate(zip(starts, ends)):
        first = readings[start]
        run = TensorSummary(tensor=keys[start], step=first.step, elements=end - start,
                            **{name: values[j] for name, values in lists.items()},
                            min=first.min, max=first.max, display=first.display)
        earlier = out.get(run.tensor)
        out[run.tensor] = run if earlier is None else _merge(earlier, run)
    return list(out.values())


class SummaryColumns:
    """One check's per-tensor summaries as columns, one row per scale of the layout (``layout.group_names``).

    ``fields`` holds a numpy array per name in :data:`SUMMARY_FIELDS`; ``wanted`` marks the
    rows (scales) the loggers get as summaries. :meth:`summaries` makes the objects.
    """

    def __init__(self, columns: Any, fields: Dict[str, "numpy.ndarray"], wanted: "numpy.ndarray") -> None:
        self.columns, self.fields, self.wanted = columns, fields, wanted

    def summaries(self) -> List[TensorSummary]:
        """The wanted rows as :class:`TensorSummary` objects."""
        layout, step = self.columns.layout, self.columns.step
        lists = {name: column.tolist() for name, column in self.fields.items()}
        starts = layout.group_starts.tolist()
        return [TensorSummary(tensor=layout.group_names[j], step=step, **{name: lists[name][j] for name in lists},
                              min=layout.mins[starts[j]], max=layout.maxs[starts[j]],
                              display=layout.displays[starts[j]])
                for j in self.wanted.nonzero()[0].tolist()]


def summary_columns(columns: Any, masks: Dict[str, "numpy.ndarray"],
                    tensors: Optional[Iterable[str]] = None) -> SummaryColumns:
    """:func:`summarize` of one check's :class:`~scalewatch.monitor.check_columns.CheckColumns`, as columns,
    for the scales named in ``tensors`` (default: all), with the conditions ``masks`` the check computed."""
    import numpy as np

    layout = columns.layout
    starts = layout.group_starts
    if tensors is None:
        wanted = np.ones(len(starts), dtype=bool)
    else:
        key = ("summarised", tuple(tensors))
        wanted = layout.cache.get(key)
        if wanted is None:
            names = set(key[1])
            wanted = layout.cache[key] = np.array([n in names for n in layout.group_names], dtype=bool)
    if not len(starts):
        return SummaryColumns(columns, {name: np.zeros(0) for name in SUMMARY_FIELDS}, wanted)
    with np.errstate(invalid="ignore"):
        scale = np.where(np.isfinite(columns.scale), columns.scale, np.nan)
        raw = np.where(np.isfinite(columns.raw), columns.raw, np.nan)
        fields = {"elements": np.diff(np.append(starts, len(columns))),
                  "scale_min": np.fmin.reduceat(scale, starts), "scale_max": np.fmax.reduceat(scale, starts),
                  "raw_min": np.fmin.reduceat(raw, starts), "raw_max": np.fmax.reduceat(raw, starts),
                  **{kind: np.add.reduceat(masks[kind].astype(np.int64), starts)
                     for kind in (NEAR_UPPER, NEAR_LOWER, PINNED, NON_FINITE)}}
    return SummaryColumns(columns, {name: fields[name] for name in SUMMARY_FIELDS}, wanted)


def summarize_columns(columns: Any, masks: Dict[str, "numpy.ndarray"],
                      tensors: Optional[Iterable[str]] = None) -> List[TensorSummary]:
    """:func:`summary_columns` as :class:`TensorSummary` objects."""
    return summary_columns(columns, masks, tensors).summaries()


def _merge(a: TensorSummary, b: TensorSummary) -> TensorSummary:
    def lo(x: float, y: float) -> float:
        return y if x != x else x if y != y else min(x, y)  # NaN: no finite value in that run

    def hi(x: float, y: float) -> float:
        return y if x != x else x if y != y else max(x, y)

    return TensorSummary(tensor=a.tensor, step=a.step, elements=a.elements + b.elements,
                         scale_min=lo(a.scale_min, b.scale_min), scale_max=hi(a.scale_max, b.scale_max),
                         raw_min=lo(a.raw_min, b.raw_min), raw_max=hi(a.raw_max, b.raw_max),
                         near_upper=a.near_upper + b.near_upper, near_lower=a.near_lower + b.near_lower,
                         pinned=a.pinned + b.pinned, non_finite=a.non_finite + b.non_finite,
                         min=a.min, max=a.max, display=a.display)
