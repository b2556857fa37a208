"""Framework-free core of scalewatch: bounded scales, reading them, saturation rules, history.

Imports torch only (no Lightning, no plotting). Names load on first use, so tools
that only read a history (the command line) start without importing torch.
"""
import importlib
from typing import Any

_EXPORTS = {
    "AttentionBiasGenerator": "attention_bias", "SOFTMAX_EDGE": "attention_bias",
    "BoundedScale": "bounded_scale",
    "check_bounds": "validation",
    "HISTORY_FILENAME": "history", "HistoryWriter": "history", "ReadProblems": "history",
    "copy_history": "history", "iter_history": "history",
    "LearnableScale": "learnable_scale",
    "PRESETS": "presets", "preset": "presets",
    "Reading": "reading", "read_scales": "scale_reader",
    "EveryNSteps": "schedule",
    "ALERT_KINDS": "saturation", "NEAR_LOWER": "saturation", "NEAR_UPPER": "saturation",
    "NON_FINITE": "saturation", "PINNED": "saturation", "Alert": "saturation", "SaturationTracker": "saturation",
    "is_pinned": "saturation", "lower_warning": "saturation", "upper_warning": "saturation",
    "WatchedScale": "watched_scale", "find_bounded_scales": "watched_scale", "watch_parameters": "watched_scale",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"scalewatch.monitor.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'scalewatch.monitor' has no attribute {name!r}")


def __dir__() -> list:
    return __all__
