"""Names of the files a run's dashboards read and write (kept free of heavy imports)."""
from scalewatch.monitor.history import HISTORY_FILENAME

#: the scale-against-bounds plot, written next to the history file
PLOT_FILENAME = "scale_history.png"
#: ``scalewatch compare -o DIR`` writes this inside DIR
COMPARE_FILENAME = "compare.png"

__all__ = ["COMPARE_FILENAME", "HISTORY_FILENAME", "PLOT_FILENAME"]
