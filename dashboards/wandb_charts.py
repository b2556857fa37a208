"""W&B views: metrics plotted against the trainer step, and a chart with the bounds."""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Sequence

import numpy as np

from scalewatch.dashboards.plot import envelope
from scalewatch.dashboards.series import ScaleSeries

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
                run.define_metric("scalewatch/*", step_metric=step_metric)
                continue
            run.define_metric(f"scalewatch/{name}/*", step_metric=step_metric)
    except Exception as err:  # a dashboard nicety must never end training
        log.warning("scalewatch could not define W&B metrics: %s", err)


def bounds_charts(series: List[ScaleSeries]) -> Dict[str, Any]:
    """One W&B line chart per scale: scale, min, max and the warning line over steps."""
    wandb = _wandb()
    charts = {}
    for s in series:
        steps = np.frombuffer(s.steps, dtype=np.float64)
        x, y = envelope(steps, np.frombuffer(s.scale, dtype=np.float64), MAX_CHART_POINTS)
        xs = [float(v) for v in x]
        ys = [[float(v) for v in y], [s.min] * len(xs), [s.max] * len(xs), [s.upper_warning] * len(xs)]
        charts[f"scalewatch_charts/{s.name}"] = wandb.plot.line_series(
            xs=xs, ys=ys, keys=["scale", "min", "max", "warning"], title=f"{s.name} against its bounds",
            xname="optimizer step")
    return charts


def log_plot(run: Any, fig: Any, series: List[ScaleSeries], step: int, final: bool,
             step_metric: str = STEP_METRIC) -> None:
    """Send the matplotlib plot as an image, and at the end of fit the bounds charts of the drawn series."""
    wandb = _wandb()

    try:
        payload: Dict[str, Any] = {"scalewatch/plot": wandb.Image(fig)}
        if final:
            payload.update(bounds_charts(series))
        payload[step_metric] = step
        run.log(payload)
    except Exception as err:
        log.warning("scalewatch could not send the plot to W&B: %s", err)
