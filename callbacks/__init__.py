"""Every front door onto the one engine: ScaleWatcher (any loop), ScaleMonitor (Lightning, either package),
ScaleMonitorCallback (HF Transformers), ScaleMonitorHook (mmengine), ScaleMonitorHandler (PyTorch Ignite).

Names load on first use: ``from scalewatch.callbacks import ScaleWatcher`` needs no
trainer, and each door imports its framework only when it is asked for (an
ImportError naming the extra when that framework is missing). mmengine's config
still names ``custom_imports=dict(imports=["scalewatch.callbacks.mmengine"])`` so
that the hook is registered before the Runner builds its hooks.
"""
import importlib
from typing import Any

_EXPORTS = {
    "ScaleWatcher": "watcher", "metric_key": "watcher", "reading_metrics": "watcher",
    "WatchSettings": "watch_settings",
    "ScaleSink": "logger_sinks", "MetricsSink": "logger_sinks", "TensorBoardSink": "logger_sinks",
    "WandbSink": "logger_sinks",
    "ScaleMonitor": "scale_monitor",
    "ScaleMonitorCallback": "hf", "ScaleMonitorHook": "mmengine",
    "ScaleMonitorHandler": "ignite_handler",
}
_ELSEWHERE = {"PLOT_FILENAME": "scalewatch.dashboards.filenames"}

__all__ = sorted([*_EXPORTS, *_ELSEWHERE])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"scalewatch.callbacks.{_EXPORTS[name]}"), name)
    if name in _ELSEWHERE:
        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    raise AttributeError(f"module 'scalewatch.callbacks' has no attribute {name!r}")


def __dir__() -> list:
    return __all__
