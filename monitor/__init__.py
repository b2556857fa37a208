"""Framework-free core of scalewatch: bounded scales, reading them, saturation rules, history.

Imports torch only (no Lightning, no plotting).
"""
from scalewatch.monitor.attention_bias import SOFTMAX_EDGE, AttentionBiasGenerator
from scalewatch.monitor.bounded_scale import BoundedScale, check_bounds
from scalewatch.monitor.history import HISTORY_FILENAME, HistoryWriter, ReadProblems, copy_history, iter_history
from scalewatch.monitor.learnable_scale import LearnableScale
from scalewatch.monitor.presets import PRESETS, preset
from scalewatch.monitor.reading import Reading, read_scales
from scalewatch.monitor.schedule import EveryNSteps
from scalewatch.monitor.saturation import (ALERT_KINDS, NEAR_LOWER, NEAR_UPPER, NON_FINITE, PINNED, Alert,
                                           SaturationTracker, is_pinned, lower_warning, upper_warning)
from scalewatch.monitor.watched_scale import WatchedScale, find_bounded_scales, watch_parameters

__all__ = [
    "ALERT_KINDS", "Alert", "EveryNSteps", "AttentionBiasGenerator", "BoundedScale", "HISTORY_FILENAME", "HistoryWriter",
    "LearnableScale", "NEAR_LOWER", "NEAR_UPPER", "NON_FINITE", "PINNED", "PRESETS", "ReadProblems", "Reading",
    "SOFTMAX_EDGE", "SaturationTracker", "WatchedScale", "check_bounds", "copy_history", "find_bounded_scales",
    "is_pinned", "iter_history", "lower_warning", "preset", "read_scales", "upper_warning", "watch_parameters",
]
