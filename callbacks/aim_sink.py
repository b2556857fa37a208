"""An Aim ``Run`` (a local repository, ``.aim`` under the logger's ``repo``) as the engine's sink:
each alert as the run's params and tag, the final plot as its image.

The keys reach the run through the door (Lightning's ``aim.pytorch_lightning.AimLogger``, mmengine's
``AimVisBackend`` by LoggerHook), so they are its metrics ``scalewatch/NAME/FIELD`` at the reading
steps. Each alert sets the params ``scalewatch.alerts`` and ``scalewatch.alert.KIND(.last)`` (MLflow's
tag names, searchable as ``run["scalewatch.alerts"]``), the tag ``scalewatch:KIND`` and a warning in the
run's log records; the plot is the image sequence ``scalewatch/scale_history``. Every call writes the
local repository.
"""
from __future__ import annotations

from typing import Any, Dict

from scalewatch.callbacks.tracker_sinks import RunSink
from scalewatch.monitor.saturation import Alert

#: the plot's image sequence on the run
IMAGE_NAME = "scalewatch/scale_history"


class AimSink(RunSink):
    """One Aim run (``AimLogger.experiment``, ``AimVisBackend.experiment``)."""

    tracker = "Aim"

    def send_metrics(self, metrics: Dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.run.track(value, name=key, step=step)

    def send_alert(self, alert: Alert, tags: Dict[str, str]) -> None:
        for key, value in tags.items():
            self.run[key] = value
        if len(self._fired[alert.kind]) == 1:  # a tag once per kind
            self.run.add_tag(f"scalewatch:{alert.kind}")
        self.run.log_warning(alert.message)

    def send_plot(self, fig: Any, step: int) -> None:
        from aim import Image

        self.run.track(Image(fig), name=IMAGE_NAME, step=step)


__all__ = ["AimSink", "IMAGE_NAME"]
