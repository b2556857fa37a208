"""The logger-key codec: what a check sends to TensorBoard, W&B, CSV and ``log_metrics`` loggers, and back.

Per watched scale (or element ``TENSOR[i]``) NAME, every check logs
``scalewatch/NAME/FIELD`` for FIELD in :data:`READING_KEY_FIELDS` (those it has:
a one-sided scale has no ``min`` or ``max``, a buffer no ``grad``). A tensor
watched beyond ``max_logged_elements`` is logged as its per-tensor summary
instead: ``scalewatch/TENSOR/FIELD`` for FIELD in :data:`SUMMARY_KEY_FIELDS`
(:data:`~scalewatch.monitor.summary.SUMMARY_FIELDS`, then the bounds it has).
:func:`parse_metric_key` reads any of these keys back.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

from scalewatch.monitor.reading import Reading
from scalewatch.monitor.summary import SUMMARY_FIELDS, TensorSummary

KEY_PREFIX = "scalewatch/"
#: the fields a reading logs, in this order (its ``scale`` and ``raw`` always; the others when it has them)
READING_KEY_FIELDS = ("scale", "raw", "min", "max", "grad", "clamp_fraction")
#: the bounds: logged both per reading and per summary
BOUND_KEY_FIELDS = ("min", "max")
#: the fields a summarised tensor logs, in this order (its bounds when it has them)
SUMMARY_KEY_FIELDS = SUMMARY_FIELDS + BOUND_KEY_FIELDS
#: fields only a summary logs: a key with one of these is a summary's (all but the bounds)
SUMMARY_ONLY_FIELDS = SUMMARY_FIELDS
#: the image of the plot (not a scale's key)
PLOT_TAG = KEY_PREFIX + "plot"
#: every scalewatch key, as a W&B ``define_metric`` glob
ALL_KEYS_GLOB = KEY_PREFIX + "*"

assert not set(SUMMARY_FIELDS) & set(READING_KEY_FIELDS), "a summary field must tell a summary's key"


def metric_key(name: str, field: str) -> str:
    """The logger key of one field of one scale: ``scalewatch/NAME/FIELD``."""
    return f"{KEY_PREFIX}{name}/{field}"


def name_glob(name: str) -> str:
    """Every key of one scale, as a W&B glob: ``scalewatch/NAME/*``."""
    return f"{KEY_PREFIX}{name}/*"


class MetricKey(NamedTuple):
    """A parsed ``scalewatch/NAME/FIELD`` key; ``is_summary``: FIELD is one only a per-tensor summary logs."""

    name: str
    field: str
    is_summary: bool


_READING_FIELDS = frozenset(READING_KEY_FIELDS)
_SUMMARY_ONLY = frozenset(SUMMARY_ONLY_FIELDS)


#: an element's index just before the field: ``NAME[3]/FIELD``, and MLflow's spelling of it, ``NAME:3/FIELD``
_ELEMENT_KEY = re.compile(r"\[(\d+)\](?=/[^/]+$)")
_MLFLOW_ELEMENT_KEY = re.compile(r":(\d+)(?=/[^/]+$)")


def mlflow_metric_key(key: str) -> str:
    """A logger key as MLflow takes it: ``scalewatch/NAME[3]/scale`` -> ``scalewatch/NAME:3/scale``.

    MLflow refuses ``[`` and ``]`` in metric names (``:`` it takes); any other key is returned as it is.
    """
    return _ELEMENT_KEY.sub(r":\1", key) if "[" in key else key


def key_from_mlflow(key: str) -> str:
    """The inverse of :func:`mlflow_metric_key`: ``scalewatch/NAME:3/scale`` -> ``scalewatch/NAME[3]/scale``."""
    return _MLFLOW_ELEMENT_KEY.sub(r"[\1]", key) if ":" in key else key


def parse_metric_key(key: str, mlflow: bool = False) -> Optional[MetricKey]:
    """``"scalewatch/NAME/FIELD"`` -> ``(NAME, FIELD, is_summary)``; ``None`` for any other key.

    NAME may hold ``/``; FIELD is the part after the last one. ``min`` and ``max``
    are both a reading's and a summary's (``is_summary`` False): a NAME is a
    summarised tensor when any of its keys ``is_summary``.

    Args:
        key: the logged key.
        mlflow: the key is MLflow's spelling (:func:`mlflow_metric_key`): an element ``NAME:3`` is read
            as ``NAME[3]``.
    """
    if not key.startswith(KEY_PREFIX):
        return None
    if mlflow:
        key = key_from_mlflow(key)
    name, _, field = key[len(KEY_PREFIX):].rpartition("/")
    if not name:
        return None
    if field in _READING_FIELDS:
        return MetricKey(name, field, False)
    if field in _SUMMARY_ONLY:
        return MetricKey(name, field, True)
    return None


def reading_metrics(readings: Sequence[Reading],
                    summaries: Optional[Sequence[TensorSummary]] = None) -> Dict[str, float]:
    """One check's readings as ``scalewatch/NAME/{scale,raw,min,max,grad,clamp_fraction}`` values.

    With ``summaries`` (of the multi-element tensors), their elements are left out
    and each such tensor is logged as ``scalewatch/TENSOR/{elements,scale_min,scale_max,raw_min,
    raw_max,near_upper,near_lower,pinned,non_finite,min,max}`` instead.
    """
    metrics: Dict[str, float] = {}
    for r in readings:
        if summaries is not None and r.index is not None:
            continue
        prefix = f"{KEY_PREFIX}{r.name}/"
        values = r.__dict__  # the fields, without a getattr each
        for field in READING_KEY_FIELDS:
            value = values[field]
            if value is not None:  # a missing bound, gradient or clamp fraction is not logged
                metrics[prefix + field] = value
    _add_summaries(metrics, summaries)
    return metrics


def _add_summaries(metrics: Dict[str, float], summaries: Optional[Sequence[TensorSummary]]) -> None:
    """Each summarised tensor's ``scalewatch/TENSOR/FIELD`` values (its bounds when it has them)."""
    for summary in summaries or ():
        prefix = f"{KEY_PREFIX}{summary.tensor}/"
        for field in SUMMARY_FIELDS:
            metrics[prefix + field] = float(getattr(summary, field))
        for field in BOUND_KEY_FIELDS:
            bound = getattr(summary, field)
            if bound is not None:
                metrics[prefix + field] = bound


class CheckMetrics:
    """One check's logger values as two aligned arrays, what :func:`column_metrics` gives as a dict.

    ``keys`` (an object array of ``scalewatch/NAME/FIELD``) and ``values`` (float64)
    are in the dict's order. ``signature`` is equal for two checks whose keys are
    equal (the same layouts' keys with the same rows present): a sink that keeps
    per-key work from check to check (TensorBoard's wire template) looks it up by
    the signature instead of comparing thousands of keys. :meth:`as_dict` is made
    once, however many sinks ask.
    """

    __slots__ = ("keys", "values", "signature", "_dict")

    def __init__(self, keys: Any, values: Any, signature: tuple) -> None:
        self.keys, self.values, self.signature = keys, values, signature
        self._dict: Optional[Dict[str, float]] = None

    def __len__(self) -> int:
        return len(self.keys)

    def as_dict(self) -> Dict[str, float]:
        if self._dict is None:
            self._dict = dict(zip(self.keys.tolist(), self.values.tolist()))
        return self._dict


def check_metrics(columns: Any, summaries: Any = None) -> CheckMetrics:
    """One check's :class:`~scalewatch.monitor.check_columns.CheckColumns` as :class:`CheckMetrics`:
    the keys and values of :func:`reading_metrics`, field by field from the columns (keys worked out
    once per watch, no Python object per value).

    ``summaries``: a :class:`~scalewatch.monitor.summary.SummaryColumns` (or a list of
    :class:`~scalewatch.monitor.summary.TensorSummary`) of the summarised tensors.
    """
    import numpy as np

    layout = columns.layout
    keys: List[Any] = []
    values: List[Any] = []
    signature: List[Any] = []

    def put(group: bool, field: str, column: Any, present: Any, rows: Any = None) -> None:
        if rows is not None:
            present = rows if present is None else present & rows
        if present is not None and present.all():
            present = None
        if present is not None and not present.any():
            return
        all_keys = layout.group_keys(field) if group else layout.keys(field)
        keys.append(all_keys if present is None else all_keys[present])
        values.append(column if present is None else column[present])
        signature.append((group, field, None if present is None else present.tobytes()))

    rows = None if summaries is None else ~layout.is_element  # summarised: the elements are left out
    present = {"scale": None, "raw": None, "min": layout.has_lo, "max": layout.has_hi, "grad": columns.has_grad,
               "clamp_fraction": columns.has_fraction}
    fields = {"scale": columns.scale, "raw": columns.raw, "min": layout.lo, "max": layout.hi, "grad": columns.grad,
              "clamp_fraction": columns.clamp_fraction}
    for field in READING_KEY_FIELDS:
        put(False, field, fields[field], present[field], rows)
    if summaries is not None and not isinstance(summaries, list):
        # per-tensor summaries as columns: one row per scale, keys worked out once per watch
        starts, wanted = layout.group_starts, summaries.wanted
        for field in SUMMARY_FIELDS:
            put(True, field, summaries.fields[field].astype(float), wanted)
        for field, bounds, has in (("min", layout.lo, layout.has_lo), ("max", layout.hi, layout.has_hi)):
            put(True, field, bounds[starts], wanted & has[starts])
    elif summaries:
        listed: Dict[str, float] = {}
        _add_summaries(listed, summaries)
        keys.append(np.array(list(listed), dtype=object))
        values.append(np.array(list(listed.values()), dtype=np.float64))
        signature.append(tuple(listed))
    joined_keys = np.concatenate(keys) if keys else np.array([], dtype=object)
    joined_values = np.concatenate(values).astype(np.float64, copy=False) if values else np.array([])
    return CheckMetrics(joined_keys, joined_values, (layout.serial, *signature))


def column_metrics(columns: Any, summaries: Any = None) -> Dict[str, float]:
    """:func:`reading_metrics` of one check's :class:`~scalewatch.monitor.check_columns.CheckColumns`:
    the same keys and values (:func:`check_metrics` as a dict)."""
    return check_metrics(columns, summaries).as_dict()


def margin_tags(name: str) -> List[str]:
    """The TensorBoard Margin chart of a scale: value, lower, upper = its scale, min, max."""
    return [metric_key(name, "scale"), metric_key(name, "min"), metric_key(name, "max")]


def summary_margin_tags(tensor: str) -> List[str]:
    """The Margin chart of a summarised tensor: value = its largest element, lower = smallest, upper = largest."""
    return [metric_key(tensor, "scale_max"), metric_key(tensor, "scale_min"), metric_key(tensor, "scale_max")]


__all__ = ["ALL_KEYS_GLOB", "BOUND_KEY_FIELDS", "KEY_PREFIX", "MetricKey", "PLOT_TAG", "READING_KEY_FIELDS",
           "SUMMARY_KEY_FIELDS", "SUMMARY_ONLY_FIELDS", "CheckMetrics", "check_metrics", "column_metrics", "key_from_mlflow", "margin_tags",
           "metric_key", "mlflow_metric_key", "name_glob", "parse_metric_key", "reading_metrics", "summary_margin_tags"]
