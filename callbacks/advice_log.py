"""The end of fit's advice: what to change, logged once on rank zero (:mod:`scalewatch.monitor.advice`)."""
from __future__ import annotations

import logging
import os
from typing import Any, List

log = logging.getLogger("scalewatch")


def log_run_advice(watcher: Any) -> List[Any]:
    """Log the advice for ``watcher``'s whole record, once, on the process that writes it; return it.

    Reads the history the engine wrote (the gradients only of the scales a rule held for), or
    its records in memory when it keeps nothing on disk. Never raises into training.
    """
    history = getattr(watcher, "history", None)
    if not watcher.is_global_zero or history is None:
        return []
    try:
        from scalewatch.dashboards.advice_view import history_series_and_advice, records_series_and_advice
        from scalewatch.monitor.advice import advice_lines

        history.wait()
        if history.on_disk and os.path.exists(history.path):
            _, advice = history_series_and_advice(history.path)
        elif history.on_disk:
            return []
        else:
            _, advice = records_series_and_advice(history.records())
        for line in advice_lines(advice):
            log.info("scalewatch advice: %s", line)
        return advice
    except Exception as err:  # advice must never end training
        log.warning("scalewatch could not work out its advice: %s", err)
        return []
