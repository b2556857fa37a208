"""Turns history into pictures and views: plots, TensorBoard layout, W&B charts, the CLI.

Imports scalewatch.monitor, never scalewatch.callbacks. Names load on first use, so
the command line starts without matplotlib unless it draws.
"""
import importlib
from typing import Any

_EXPORTS = {
    "PLOT_FILENAME": "scalewatch.dashboards.filenames",
    "ScaleSeries": "scalewatch.dashboards.series",
    "TensorSeries": "scalewatch.dashboards.tensor_series",
    "collect_series": "scalewatch.dashboards.series",
    "group_series": "scalewatch.dashboards.tensor_series",
    "margin_layout": "scalewatch.dashboards.tensorboard_layout",
    "plot_history": "scalewatch.dashboards.plot",
    "save_plot": "scalewatch.dashboards.plot",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'scalewatch.dashboards' has no attribute {name!r}")
