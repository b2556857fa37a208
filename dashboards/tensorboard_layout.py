"""The TensorBoard custom-scalars layout: each scale inside its band, live."""
from __future__ import annotations

import struct
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


def scalars_event_bytes(metrics: Any, step: int, wall_time: float) -> bytes:
    """The wire bytes of the ``Event`` that ``FileWriter.add_event(scalars_event(...), step)`` writes,
    made from a check's :class:`~scalewatch.monitor.history.keys.CheckMetrics` without protobuf:
    the template is looked up by the metrics' signature (no hashing of thousands of tags) and the
    event is neither parsed nor serialised again.

    ``Event`` fields, in the order protobuf writes them: ``wall_time`` (1, a double),
    ``step`` (2, an int64 varint), ``summary`` (5, length-delimited).
    """
    template = _TEMPLATES.get(metrics.signature)
    if template is None:
        template = _keep_template(metrics.signature, tuple(metrics.keys.tolist()))
    summary = _fill(template, metrics.values)
    head = b"\x09" + struct.pack("<d", wall_time)
    if step:  # proto3 leaves a zero step out
        head += b"\x10" + _varint(int(step) & 0xFFFFFFFFFFFFFFFF)  # a negative int64 is its 10-byte two's complement
    return head + b"\x2a" + _varint(len(summary)) + summary


def event_bytes_writer(writer: Any) -> Any:
    """The callable that queues an event's wire bytes in ``writer``'s event file, or ``None``.

    A ``torch.utils.tensorboard.SummaryWriter`` writes through TensorBoard's
    ``EventFileWriter``, whose ``add_event`` only serialises the event and queues the
    bytes for its writer thread; made here, they go to that queue directly. Any other
    writer (tensorboardX, a writer of another version without that queue) gets ``None``
    and the caller logs the values its own way.
    """
    get_file_writer = getattr(writer, "_get_file_writer", None)
    if get_file_writer is None:
        return None
    queue = getattr(getattr(get_file_writer(), "event_writer", None), "_async_writer", None)
    write = getattr(queue, "write", None)
    return write if callable(write) else None


def _summary_bytes(metrics: Dict[str, float]) -> bytes:
    import numpy as np

    tags = tuple(metrics)
    template = _TEMPLATES.get(tags)
    if template is None:
        template = _keep_template(tags, tags)
    return _fill(template, np.fromiter(metrics.values(), dtype=np.float64, count=len(tags)))


def _keep_template(key: Any, tags: Sequence[str]) -> Any:
    if len(_TEMPLATES) >= _TEMPLATES_KEPT:
        _TEMPLATES.clear()
    template = _TEMPLATES[key] = _summary_template(tags)
    return template


def _fill(template: Any, values: Any) -> bytes:
    """The template's bytes with ``values`` as its float32 ``simple_value``s."""
    import numpy as np

    buffer, slots = template
    data = buffer.copy()
    with np.errstate(over="ignore"):  # beyond float32's range is inf, as protobuf's own cast gives
        data[slots] = np.asarray(values, dtype="<f4").view(np.uint8)
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
