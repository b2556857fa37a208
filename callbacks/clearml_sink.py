"""A ClearML ``Task`` (also offline: ``Task.set_offline(True)`` or ``CLEARML_OFFLINE_MODE=1``) as the engine's sink.

The keys reach the task through the door (HF's ``ClearMLCallback``, mmengine's ``ClearMLVisBackend``
by LoggerHook); each alert becomes a tag ``scalewatch:KIND``, the task's parameters
``scalewatch/alerts`` and ``scalewatch/alert.KIND`` (MLflow's tag names) and a warning line in
its console log; the final plot is its image ``scalewatch / scale_history``. ClearML's reporter
sends everything on its own thread.
"""
from __future__ import annotations

import logging
from typing import Any, Dict

from scalewatch.callbacks.tracker_sinks import RunSink
from scalewatch.monitor.saturation import Alert

#: the plot's title and series in the task's debug samples
PLOT_TITLE, PLOT_SERIES = "scalewatch", "scale_history"


class ClearmlSink(RunSink):
    """One ClearML task (HF ``ClearMLCallback``'s, ``ClearMLVisBackend``'s or ``Task.current_task()``)."""

    tracker = "ClearML"

    def send_metrics(self, metrics: Dict[str, float], step: int) -> None:
        report = self.run.get_logger().report_scalar
        for key, value in metrics.items():
            title, _, series = key.rpartition("/")
            report(title=title, series=series, value=value, iteration=step)

    def send_alert(self, alert: Alert, tags: Dict[str, str]) -> None:
        self.run.add_tags([f"scalewatch:{alert.kind}"])
        # "scalewatch.alert.pinned" -> section "scalewatch", name "alert.pinned"; update_, as set_parameters
        # would replace every parameter the task has (the trainer's arguments among them)
        self.run.update_parameters({key.replace(".", "/", 1): value for key, value in tags.items()})
        self.run.get_logger().report_text(alert.message, level=logging.WARNING)

    def send_plot(self, fig: Any, step: int) -> None:
        self.run.get_logger().report_matplotlib_figure(title=PLOT_TITLE, series=PLOT_SERIES, figure=fig,
                                                       iteration=step, report_image=True)


__all__ = ["ClearmlSink", "PLOT_SERIES", "PLOT_TITLE"]
