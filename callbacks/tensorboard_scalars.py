"""Writing a check's scalars to TensorBoard as one event instead of one event per value."""
from __future__ import annotations

from typing import Dict

from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import Summary


def log_scalars(logger: TensorBoardLogger, metrics: Dict[str, float], step: int) -> None:
    """Log ``metrics`` at ``step`` through ``logger`` in a single summary event.

    ``TensorBoardLogger.log_metrics`` calls ``add_scalar`` once per value, each
    building and queueing its own event: with a thousand scales (6000 values) that
    is ~0.4 s a check. One ``Summary`` holding every value is the same on disk for
    TensorBoard's readers (``simple_value`` scalars, the format ``add_scalar``
    writes) at a fraction of the cost. Writers without a file writer (tensorboardX)
    go through ``log_metrics``.
    """
    writer = logger.experiment
    file_writer = getattr(writer, "_get_file_writer", None)
    if file_writer is None:
        logger.log_metrics(metrics, step=step)
        return
    summary = Summary()
    for tag, value in metrics.items():
        summary.value.add(tag=tag, simple_value=value)
    file_writer().add_summary(summary, global_step=step)
