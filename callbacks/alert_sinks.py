"""Where alerts go: Python logging, every sink (W&B alerts), notifications, a user callable."""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Sequence

from scalewatch.callbacks.logger_sinks import ScaleSink
from scalewatch.monitor.saturation import Alert

log = logging.getLogger("scalewatch")


def send_alerts(alerts: Sequence[Alert], step: int, sinks: Sequence[ScaleSink],
                user_fn: Optional[Callable[[Alert], None]], notifier: Optional[Any] = None) -> None:
    """Deliver one check's alerts on this (rank-zero) process to every sink.

    Notifications go out as one message per check, however many alerts fired, and
    on the notifier's own thread: nothing here waits on the network.
    """
    for alert in alerts:
        log.warning("⚠️ %s", alert.message)
        for sink in sinks:
            sink.alert(alert)
        if user_fn is not None:
            user_fn(alert)
    if notifier is not None and alerts:
        notifier.send(alerts, step)
