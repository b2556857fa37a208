"""A trackio run (local: a sqlite file under ``TRACKIO_DIR``, ``~/.cache/huggingface/trackio`` by default)
as the engine's sink: the keys at the reading steps, each alert as a trackio alert, the final plot as its image.

Reached through HF ``report_to=["trackio"]`` (transformers' ``TrackioCallback``, whose run is trackio's
current run) or a ``trackio.Run`` handed to a door as a plain object (``trackio.init(project=...)``).
The keys go to the run directly with the reading's step: through HF's ``on_log`` they would be renamed
``train/...`` and land at trackio's own counter, not at the step. trackio has no tags and keeps a run's
config from its start, so the alerts are its own alerts (title ``scalewatch.alert.KIND``, level
warn, at the alert's step; trackio prints them and posts them to its webhook if one is set).
"""
from __future__ import annotations

import io
from typing import Any, Dict

from scalewatch.callbacks.mlflow_sink import ALERT_TAG
from scalewatch.callbacks.tracker_sinks import RunSink
from scalewatch.monitor.saturation import Alert

#: the plot's key among the run's logged values
IMAGE_KEY = "scalewatch/scale_history"


class TrackioSink(RunSink):
    """One trackio ``Run`` (``trackio.init``'s, or trackio's current run under HF's ``TrackioCallback``)."""

    tracker = "trackio"

    def send_metrics(self, metrics: Dict[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def send_alert(self, alert: Alert, tags: Dict[str, str]) -> None:
        import trackio

        self.run.alert(title=ALERT_TAG.format(kind=alert.kind), text=f"{alert.name}@{alert.step}: {alert.message}",
                       level=trackio.AlertLevel.WARN, step=alert.step)

    def send_plot(self, fig: Any, step: int) -> None:
        import trackio
        from PIL import Image

        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=110)
        png.seek(0)
        with Image.open(png) as image:
            image.load()
            self.run.log({IMAGE_KEY: trackio.Image(image.copy())}, step=step)


__all__ = ["IMAGE_KEY", "TrackioSink"]
