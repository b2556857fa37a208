"""The TensorBoard custom-scalars layout: each scale inside its band, live."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

from scalewatch.monitor.history.keys import margin_tags, summary_margin_tags

CATEGORY = "scalewatch"


def margin_layout(names: Sequence[str], summarised: Sequence[str] = ()) -> Dict[str, Dict[str, List[Any]]]:
    """One Margin chart per scale: value = scale, lower = min, upper = max.

    The tags are the ones the watcher logs (``scalewatch/NAME/scale`` ...), so the
    chart fills in as training writes them. A tensor in ``summarised`` (a per-head
    scale logged as its per-tensor summary) gets the band of its elements instead:
    value = the largest element, lower = the smallest, upper = the largest.
    """
    charts = {name: ["Margin", margin_tags(name)] for name in names}
    for tensor in summarised:
        charts[f"{tensor} (elements min..max)"] = ["Margin", summary_margin_tags(tensor)]
    return {CATEGORY: charts}


def write_margin_layout(writer: Any, names: Sequence[str], summarised: Sequence[str] = ()) -> None:
    """Write the layout through a ``SummaryWriter`` (TensorBoardLogger.experiment)."""
    if names or summarised:
        writer.add_custom_scalars(margin_layout(names, summarised))
        writer.flush()


def scalars_summary(metrics: Dict[str, float]) -> Any:
    """One TensorBoard ``Summary`` holding every value of a check.

    ``SummaryWriter.add_scalar`` builds and queues one event per value: with a
    thousand scales (6000 values) that is ~0.4 s a check. One summary holding every
    value is the same on disk for TensorBoard's readers (``simple_value`` scalars,
    the format ``add_scalar`` writes) at a fraction of the cost. Its wire bytes are
    made from a template of the tags, kept while the tags stay the same, with the
    check's float32 values written into it by numpy, and parsed by protobuf's C
    parser: no Python call per value.
    """
    from tensorboard.compat.proto.summary_pb2 import Summary

    return Summary.FromString(_summary_bytes(metrics))


def scalars_event(metrics: Dict[str, float]) -> Any:
    """An ``Event`` holding :func:`scalars_summary` (without a step or a time: ``FileWriter.add_event`` sets
    them), parsed once from its wire bytes instead of copying a parsed summary into a new event."""
    from tensorboard.compat.proto.event_pb2 import Event

    summary = _summary_bytes(metrics)
    return Event.FromString(b"\x2a" + _varint(len(summary)) + summary)  # Event.summary: field 5


def _summary_bytes(metrics: Dict[str, float]) -> bytes:
    import numpy as np

    tags = tuple(metrics)
    template = _TEMPLATES.get(tags)
    if template is None:
        if len(_TEMPLATES) >= _TEMPLATES_KEPT:
            _TEMPLATES.clear()
        template = _TEMPLATES[tags] = _summary_template(tags)
    buffer, slots = template
    data = buffer.copy()
    with np.errstate(over="ignore"):  # beyond float32's range is inf, as protobuf's own cast gives
        data[slots] = np.fromiter(metrics.values(), dtype="<f4", count=len(tags)).view(np.uint8)
    return data.tobytes()


#: templates kept (one per set of tags: a watch has one or two, e.g. with and without a gradient)
_TEMPLATES_KEPT = 8
_TEMPLATES: Dict[tuple, Any] = {}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _summary_template(tags: Sequence[str]) -> Any:
    """The wire bytes of ``Summary(value=[Value(tag=t, simple_value=0.0) ...])`` and where each float goes.

    ``Summary.value`` is field 1 (length-delimited), ``Value.tag`` field 1 (a string),
    ``Value.simple_value`` field 2 (a 32-bit float, little-endian).
    """
    import numpy as np

    parts, slots, at = [], [], 0
    for tag in tags:
        name = tag.encode("utf-8")
        value = b"\x0a" + _varint(len(name)) + name + b"\x15"
        head = b"\x0a" + _varint(len(value) + 4) + value
        parts.append(head + b"\x00\x00\x00\x00")
        slots.append(at + len(head))
        at += len(head) + 4
    buffer = np.frombuffer(b"".join(parts), dtype=np.uint8).copy()
    starts = np.array(slots, dtype=np.int64)
    return buffer, (starts[:, None] + np.arange(4)).ravel()
