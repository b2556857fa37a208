"""The TensorBoard custom-scalars layout: each scale inside its band, live."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

CATEGORY = "scalewatch"


def margin_layout(names: Sequence[str]) -> Dict[str, Dict[str, List[Any]]]:
    """One Margin chart per scale: value = scale, lower = min, upper = max.

    The tags are the ones ScaleMonitor logs (``scalewatch/NAME/scale`` ...), so the
    chart fills in as training writes them.
    """
    charts = {name: ["Margin", [f"scalewatch/{name}/scale", f"scalewatch/{name}/min", f"scalewatch/{name}/max"]]
              for name in names}
    return {CATEGORY: charts}


def write_margin_layout(writer: Any, names: Sequence[str]) -> None:
    """Write the layout through a ``SummaryWriter`` (TensorBoardLogger.experiment)."""
    if names:
        writer.add_custom_scalars(margin_layout(names))
        writer.flush()
