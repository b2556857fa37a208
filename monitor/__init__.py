"""Framework-free core of scalewatch: bounded scales, reading them, saturation rules, history.

Imports torch only (no Lightning, no plotting). Names load on first use, so tools
that only read a history (the command line) start without importing torch.
"""
import importlib
from typing import Any

# The public API: what the README and DESIGN.md use. Everything else is reached through its
# module (``scalewatch.monitor.rules``, ``scalewatch.monitor.history``, ...).
_EXPORTS = {
    "AttentionBiasGenerator": "attention_bias", "SOFTMAX_EDGE": "attention_bias",
    "BoundedScale": "bounded_scale", "LearnableScale": "learnable_scale", "ScaleSpec": "scale_spec",
    "PRESETS": "presets", "preset": "presets",
    "Reading": "reading", "read_scales": "scale_reader", "find_bounded_scales": "watched_scale",
    "ALERT_KINDS": "rules", "NEAR_LOWER": "rules", "NEAR_UPPER": "rules", "NON_FINITE": "rules", "PINNED": "rules",
    "lower_warning": "rules", "upper_warning": "rules",
    "Alert": "saturation", "SaturationTracker": "saturation",
    "TensorSummary": "summary", "summarize": "summary",
    "HISTORY_FILENAME": "history", "HistoryWriter": "history", "ReadProblems": "history", "iter_history": "history",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"scalewatch.monitor.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'scalewatch.monitor' has no attribute {name!r}")


def __dir__() -> list:
    return __all__
