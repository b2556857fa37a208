"""A Comet experiment (online, or ``OfflineExperiment`` for ``COMET_START_ONLINE=false``) as the engine's sink.

The keys as the experiment's metrics at the reading steps (through the door's logger), each alert
as the experiment's "others" (``scalewatch.alerts``, ``scalewatch.alert.KIND``, as MLflow's tags)
and a tag ``scalewatch:KIND``, the final plot as its image ``scale_history.png`` and the history
as its asset ``scalewatch/scalewatch_history.jsonl``. Comet queues every call for its own
streamer thread, so nothing here waits on the network.
"""
from __future__ import annotations

import io
import os
from typing import Any, Dict

from scalewatch.callbacks.tracker_sinks import RunSink
from scalewatch.dashboards.filenames import PLOT_FILENAME
from scalewatch.monitor.history import HISTORY_FILENAME
from scalewatch.monitor.saturation import Alert

#: the asset folder of the experiment that holds scalewatch's history
ASSET_DIR = "scalewatch"


class CometSink(RunSink):
    """One Comet experiment (``CometLogger.experiment``, HF ``CometCallback``'s experiment)."""

    tracker = "Comet"

    def send_metrics(self, metrics: Dict[str, float], step: int) -> None:
        self.run.log_metrics(metrics, step=step)

    def send_alert(self, alert: Alert, tags: Dict[str, str]) -> None:
        self.run.log_others(tags)
        self.run.add_tag(f"scalewatch:{alert.kind}")

    def send_plot(self, fig: Any, step: int) -> None:
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=110)
        png.seek(0)
        self.run.log_image(png, name=PLOT_FILENAME, step=step)

    def send_end(self) -> None:
        history = os.path.join(self.log_dir, HISTORY_FILENAME) if self.log_dir else None
        if history and os.path.isfile(history):
            self.run.log_asset(history, file_name=f"{ASSET_DIR}/{HISTORY_FILENAME}")


__all__ = ["ASSET_DIR", "CometSink"]
