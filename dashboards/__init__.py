"""Turns history into pictures and views: plots, TensorBoard layout, W&B charts, the CLI.

Imports scalewatch.monitor, never scalewatch.callbacks.
"""
from scalewatch.dashboards.plot import plot_history, save_plot
from scalewatch.dashboards.series import ScaleSeries, collect_series
from scalewatch.dashboards.tensorboard_layout import margin_layout

__all__ = ["ScaleSeries", "collect_series", "margin_layout", "plot_history", "save_plot"]
