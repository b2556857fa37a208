"""A DVCLive ``Live`` as the engine's sink: each alert as its params, the final plot as its image.

The keys reach DVCLive through the door (Lightning's ``DVCLiveLogger``, HF's ``DVCLiveCallback``,
mmengine's ``DVCLiveVisBackend`` by LoggerHook), so they land in ``plots/metrics/scalewatch/...``
at the reading steps. DVCLive has no tags: the alerts are params (``params.yaml``, shown by
``dvc exp show`` and DVC's VS Code and Studio views) under MLflow's tag names; the plot is
``plots/images/scalewatch/scale_history.png``. Every call writes a local file.
"""
from __future__ import annotations

from typing import Any, Dict

from scalewatch.callbacks.tracker_sinks import RunSink
from scalewatch.dashboards.filenames import PLOT_FILENAME
from scalewatch.monitor.saturation import Alert

#: where the plot goes under the run's ``plots/images``
IMAGE_NAME = f"scalewatch/{PLOT_FILENAME}"


class DvcliveSink(RunSink):
    """One DVCLive ``Live`` (``DVCLiveLogger.experiment``, ``DVCLiveCallback.live``, the backend's experiment)."""

    tracker = "DVCLive"

    def send_metrics(self, metrics: Dict[str, float], step: int) -> None:
        self.run.step = step
        for key, value in metrics.items():
            self.run.log_metric(key, value)

    def send_alert(self, alert: Alert, tags: Dict[str, str]) -> None:
        self.run.log_params(tags)

    def send_plot(self, fig: Any, step: int) -> None:
        self.run.log_image(IMAGE_NAME, fig)


__all__ = ["DvcliveSink", "IMAGE_NAME"]
