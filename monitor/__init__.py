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
    "DISPLAYS": "display", "display_record": "display", "display_value": "display", "format_range": "display",
    "gc_paused": "gc_pause",
    "HISTORY_FILENAME": "history", "HistoryWriter": "history", "ReadProblems": "history",
    "copy_history": "history", "iter_history": "history",
    "LearnableScale": "learnable_scale",
    "PRESETS": "presets", "preset": "presets",
    "Reading": "reading", "read_scales": "scale_reader", "reading_lines": "record_encoding",
    "ScaleSpec": "scale_spec",
    "SUMMARY_FIELDS": "summary", "TensorSummary": "summary", "summarize": "summary",
    "EveryNSteps": "schedule",
    "ALERT_KINDS": "saturation", "NEAR_LOWER": "saturation", "NEAR_UPPER": "saturation",
    "NON_FINITE": "saturation", "PINNED": "saturation", "Alert": "saturation", "SaturationTracker": "saturation",
    "condition_masks": "saturation", "is_pinned": "saturation", "lower_warning": "saturation", "upper_warning": "saturation",
    "WatchedScale": "watched_scale", "check_param_bounds": "watched_scale", "find_bounded_scales": "watched_scale",
    "watch_parameters": "watched_scale",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"scalewatch.monitor.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'scalewatch.monitor' has no attribute {name!r}")


def __dir__() -> list:
    return __all__
