"""Where a check's values, alerts and plot go: TensorBoard, W&B, and any ``log_metrics`` logger.

A front door translates its trainer's loggers into these sinks (a Lightning
``TensorBoardLogger`` becomes a :class:`TensorBoardSink` over its writer, a
``CSVLogger`` a :class:`MetricsSink`); the engine only talks to sinks, so every
door gives the same keys, the same TensorBoard layout and the same W&B charts.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from scalewatch.callbacks.tensorboard_crc import use_c_crc32c
from scalewatch.dashboards import tensorboard_layout, wandb_charts
from scalewatch.dashboards.tensor_series import TensorSeries
from scalewatch.monitor.history.keys import PLOT_TAG, CheckMetrics
from scalewatch.monitor.saturation import Alert

log = logging.getLogger("scalewatch")

#: TensorBoard is flushed after a check at most this often, so its live view lags by no more
TENSORBOARD_FLUSH_SECS = 2.0
#: seconds W&B waits before it sends another alert of the same title. Each alert here is a
#: new crossing, so none may be dropped; W&B reads 0 as "use the default" (one minute).
WANDB_WAIT_DURATION = 0.001

MetricsFn = Callable[[Dict[str, float], int], None]


class ScaleSink:
    """One destination of the engine's output; every method is optional (a no-op here)."""

    def start(self, names: Sequence[str], summarised: Sequence[str] = ()) -> None:
        """Training starts: ``names`` are logged per scale (or element, ``NAME[i]``) as
        ``scalewatch/NAME/FIELD``; the tensors in ``summarised`` as their per-tensor
        summary (``scalewatch/TENSOR/{scale_min,scale_max,...}``). Set up layouts and charts."""

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        """One check's ``scalewatch/NAME/FIELD`` values at ``step``."""

    def log_check(self, metrics: CheckMetrics, step: int) -> None:
        """What the engine calls with a check's values: :meth:`log_metrics` of their dict, unless
        a sink can use the arrays themselves (TensorBoard's event is made from them)."""
        self.log_metrics(metrics.as_dict(), step)

    def alert(self, alert: Alert) -> None:
        """One alert, on rank zero."""

    def log_figure(self, fig: Any, series: List[TensorSeries], step: int, final: bool) -> None:
        """The plot (``final``: the end-of-training one)."""

    def flush(self) -> None:
        """Make what was logged visible to readers now."""


class MetricsSink(ScaleSink):
    """Any logger with ``log_metrics(metrics, step)``: Lightning's CSVLogger, MLFlowLogger, ..."""

    def __init__(self, logger: Any) -> None:
        if not callable(getattr(logger, "log_metrics", None)):
            raise ValueError(f"`loggers` entries need a log_metrics(metrics, step) method, got {logger!r}")
        self.logger = logger

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        self.logger.log_metrics(metrics, step=step)


class TensorBoardSink(ScaleSink):
    """A ``torch.utils.tensorboard.SummaryWriter``: scalars, the Margin layout, the plot image.

    Args:
        writer: the SummaryWriter (``TensorBoardLogger.experiment`` under Lightning).
        log_metrics: how values are logged when the writer has no file writer of its
            own to take one summary event (tensorboardX); default ``add_scalar``.
    """

    def __init__(self, writer: Any, log_metrics: Optional[MetricsFn] = None) -> None:
        if not callable(getattr(writer, "add_scalar", None)):
            raise ValueError(f"`tensorboard` must be a torch.utils.tensorboard.SummaryWriter, got {writer!r}")
        self.writer = writer
        self._fallback = log_metrics
        self._last_flush = -float("inf")
        use_c_crc32c()  # a 1000-scale check's event: 56 ms of pure-Python checksum otherwise

    def start(self, names: Sequence[str], summarised: Sequence[str] = ()) -> None:
        tensorboard_layout.write_margin_layout(self.writer, names, summarised)

    def log_check(self, metrics: CheckMetrics, step: int) -> None:
        write = tensorboard_layout.event_bytes_writer(self.writer)
        if write is None:  # no event queue to write to: log_metrics's way
            super().log_check(metrics, step)
            return
        write(tensorboard_layout.scalars_event_bytes(metrics, step, time.time()))
        self._flush_if_due()

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        file_writer = getattr(self.writer, "_get_file_writer", None)
        if file_writer is not None:
            file_writer().add_event(tensorboard_layout.scalars_event(metrics), step=step)
        elif self._fallback is not None:
            self._fallback(metrics, step)
        else:
            for tag, value in metrics.items():
                self.writer.add_scalar(tag, value, global_step=step)
        self._flush_if_due()

    def _flush_if_due(self) -> None:
        if time.monotonic() - self._last_flush >= TENSORBOARD_FLUSH_SECS:
            # SummaryWriter flushes every 120 s by default; flush after checks (at most every
            # few seconds: it waits on the writer thread) so the live view follows training.
            self.flush()

    def log_figure(self, fig: Any, series: List[TensorSeries], step: int, final: bool) -> None:
        self.writer.add_figure(PLOT_TAG, fig, global_step=step, close=False)

    def flush(self) -> None:
        self.writer.flush()
        self._last_flush = time.monotonic()


class WandbSink(ScaleSink):
    """A W&B run: metrics against the trainer's step, alerts, the plot and the bounds charts.

    Args:
        run: the ``wandb`` Run (``WandbLogger.experiment`` under Lightning).
        log_metrics: how values are logged; default ``run.log`` with the step as
            ``step_metric``.
        step_metric: the W&B key of the x-axis: ``trainer/global_step`` (default,
            what Lightning's WandbLogger writes) or the trainer's own, e.g.
            ``train/global_step`` for HF Transformers, so the scales share the loss's axis.
    """

    def __init__(self, run: Any, log_metrics: Optional[MetricsFn] = None,
                 step_metric: str = wandb_charts.STEP_METRIC) -> None:
        if not callable(getattr(run, "log", None)):
            raise ValueError(f"`wandb_run` must be a wandb Run (wandb.init(...)), got {run!r}")
        self.run = run
        self._log_metrics = log_metrics
        self.step_metric = step_metric

    def start(self, names: Sequence[str], summarised: Sequence[str] = ()) -> None:
        wandb_charts.define_scale_metrics(self.run, list(names) + list(summarised), self.step_metric)

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        if self._log_metrics is not None:
            self._log_metrics(metrics, step)
        else:
            self.run.log(dict(metrics, **{self.step_metric: step}))

    def alert(self, alert: Alert) -> None:
        try:
            import wandb

            self.run.alert(title=f"scalewatch {alert.kind}: {alert.name}", text=alert.message,
                           level=wandb.AlertLevel.WARN, wait_duration=WANDB_WAIT_DURATION)
        except Exception as err:  # an alert must never end training
            log.warning("scalewatch could not send a W&B alert: %s", err)

    def log_figure(self, fig: Any, series: List[TensorSeries], step: int, final: bool) -> None:
        wandb_charts.log_plot(self.run, fig, series, step, final=final, step_metric=self.step_metric)
