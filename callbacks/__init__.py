"""Lightning glue: decides when to read, hands readings to loggers, history and alert sinks."""
from scalewatch.callbacks.scale_monitor import PLOT_FILENAME, ScaleMonitor, metric_key

__all__ = ["PLOT_FILENAME", "ScaleMonitor", "metric_key"]
