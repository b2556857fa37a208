"""W&B views: metrics plotted against the trainer step, and a chart with the bounds."""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, List, Sequence

import numpy as np

from scalewatch.dashboards.thinning import envelope
from scalewatch.dashboards.tensor_series import TensorSeries, shown_values
from scalewatch.monitor.history.keys import ALL_KEYS_GLOB, PLOT_TAG, name_glob

log = logging.getLogger("scalewatch")

STEP_METRIC = "trainer/global_step"
#: points per W&B line chart (W&B tables get slow beyond a few thousand rows)
MAX_CHART_POINTS = 1000


def _wandb() -> Any:
    try:
        import wandb
    except ImportError as err:
        raise ModuleNotFoundError("scalewatch's W&B charts need wandb: pip install 'scalewatch[wandb]' "
                                  "(or pip install wandb)") from err
    return wandb


def define_scale_metrics(run: Any, names: Sequence[str], step_metric: str = STEP_METRIC) -> None:
    """Plot every ``scalewatch/NAME/*`` key against the trainer step (``step_metric``), per scale."""
    try:
        run.define_metric(step_metric)
        for name in names:
            if "[" in name:  # NAME[i]: brackets are glob syntax, so one glob covers every key
                run.define_metric(ALL_KEYS_GLOB, step_metric=step_metric)
                continue
            run.define_metric(name_glob(name), step_metric=step_metric)
    except Exception as err:  # a dashboard nicety must never end training
        log.warning("scalewatch could not define W&B metrics: %s", err)


def bounds_charts(series: List[TensorSeries]) -> Dict[str, Any]:
    """One W&B line chart per scale: scale, min, max and the warning line over steps.

    A per-head tensor's chart has the smallest and largest element instead of the
    scale; values are shown as the plot shows them (exp for ``display="exp"``);
    a missing bound has no line.
    """
    wandb = _wandb()
    charts = {}
    for t in series:
        steps, low, high = t.band("scale")
        x, lo = envelope(steps, shown_values(t, low), MAX_CHART_POINTS)
        xs = [float(v) for v in x]
        if t.single:
            keys, ys = ["scale"], [[float(v) for v in lo]]
        else:
            hi = np.interp(x, steps, shown_values(t, high))
            keys, ys = ["scale min", "scale max"], [[float(v) for v in lo], [float(v) for v in hi]]
        for key, value in (("min", t.min), ("max", t.max), ("warning", t.upper_warning)):
            if math.isfinite(value):
                keys.append(key)
                ys.append([t.shown(value)] * len(xs))
        charts[f"scalewatch_charts/{t.name}"] = wandb.plot.line_series(
            xs=xs, ys=ys, keys=keys, title=f"{t.name} against its bounds", xname="optimizer step")
    return charts


def log_plot(run: Any, fig: Any, series: List[TensorSeries], step: int, final: bool,
             step_metric: str = STEP_METRIC) -> None:
    """Send the matplotlib plot as an image, and at the end of fit the bounds charts of the drawn series."""
    wandb = _wandb()

    try:
        payload: Dict[str, Any] = {PLOT_TAG: wandb.Image(fig)}
        if final:
            payload.update(bounds_charts(series))
        payload[step_metric] = step
        run.log(payload)
    except Exception as err:
        log.warning("scalewatch could not send the plot to W&B: %s", err)
