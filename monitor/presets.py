"""Named configurations of the attention-bias scale (see DESIGN.md)."""
from __future__ import annotations

from typing import Dict

#: preset name -> keyword arguments for AttentionBiasGenerator
PRESETS: Dict[str, Dict[str, float]] = {
    # most runs, first training, unknown data quality
    "conservative": dict(bias_scale=2.5, min_scale=0.5, max_scale=5.0),
    # noisy sensors, strong modulation needed, experiments
    "aggressive": dict(bias_scale=3.5, min_scale=1.0, max_scale=8.0),
    # high-quality features, stability first
    "ultra-conservative": dict(bias_scale=2.0, min_scale=0.5, max_scale=3.0),
}


def preset(name: str) -> Dict[str, float]:
    """Return a copy of preset ``name``'s arguments, or raise ``ValueError``."""
    key = name.replace("_", "-") if isinstance(name, str) else name
    if key not in PRESETS:
        raise ValueError(f"unknown `preset` {name!r}; choose one of {sorted(PRESETS)}")
    return dict(PRESETS[key])
