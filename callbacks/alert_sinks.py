"""Where alerts go: Python logging, W&B alerts, and a user callable."""
from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger

from scalewatch.monitor.saturation import Alert

log = logging.getLogger("scalewatch")


def send_alerts(alerts: Sequence[Alert], trainer: "pl.Trainer", user_fn: Optional[Callable[[Alert], None]]) -> None:
    """Deliver alerts on this (rank-zero) process to every sink."""
    for alert in alerts:
        log.warning("⚠️ %s", alert.message)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                _wandb_alert(logger, alert)
        if user_fn is not None:
            user_fn(alert)


#: seconds W&B waits before it sends another alert of the same title. Each alert here is a
#: new crossing, so none may be dropped; W&B reads 0 as "use the default" (one minute).
WANDB_WAIT_DURATION = 0.001


def _wandb_alert(logger: WandbLogger, alert: Alert) -> None:
    import wandb

    try:
        logger.experiment.alert(title=f"scalewatch {alert.kind}: {alert.name}", text=alert.message,
                                level=wandb.AlertLevel.WARN, wait_duration=WANDB_WAIT_DURATION)
    except Exception as err:  # an alert must never end training
        log.warning("scalewatch could not send a W&B alert: %s", err)
