"""Front doors onto the one engine: ScaleWatcher (any loop), ScaleMonitor (Lightning, either package).

Names load on first use: ``from scalewatch.callbacks import ScaleWatcher`` needs no
Lightning, and ``ScaleMonitor`` imports whichever Lightning package is installed.
The HF Transformers and mmengine doors are ``scalewatch.callbacks.hf`` and
``scalewatch.callbacks.mmengine``; ``ScaleMonitorHandler`` (PyTorch Ignite) imports Ignite.
"""
import importlib
from typing import Any

_EXPORTS = {
    "ScaleWatcher": "watcher", "metric_key": "watcher", "reading_metrics": "watcher",
    "WatchSettings": "watch_settings",
    "ScaleSink": "logger_sinks", "MetricsSink": "logger_sinks", "TensorBoardSink": "logger_sinks",
    "WandbSink": "logger_sinks",
    "ScaleMonitor": "scale_monitor",
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
