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
    the format ``add_scalar`` writes) at a fraction of the cost.
    """
    from tensorboard.compat.proto.summary_pb2 import Summary

    summary = Summary()
    add = summary.value.add
    for tag, value in metrics.items():
        add(tag=tag, simple_value=value)
    return summary
