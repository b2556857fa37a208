"""The end of fit's advice: what to change, logged once on rank zero (:mod:`scalewatch.monitor.advice`)."""
from __future__ import annotations

import logging
import os
from typing import Any, List

log = logging.getLogger("scalewatch")

#: pieces of advice written into the training log at the end of fit (the report has them all)
MAX_LOGGED_ADVICE = 10


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
        # a thousand scales would be two thousand lines: the most urgent, then where the rest is
        for line in advice_lines(advice, max_loud=MAX_LOGGED_ADVICE, more=f"scalewatch report {watcher.log_dir}"):
            log.info("scalewatch advice: %s", line)
        return advice
    except Exception as err:  # advice must never end training
        log.warning("scalewatch could not work out its advice: %s", err)
        return []
