"""Handles on the scales a monitor watches: library modules and bare parameters."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from scalewatch.monitor.bounded_scale import BoundedScale
from scalewatch.monitor.validation import check_bounds


@dataclass(eq=False)
class WatchedScale:
    """One scale to read: its name, raw tensor, bounds and how it becomes effective.

    ``module`` is set for scales of the library (their own ``scale`` is the
    effective value); bare parameters clamped elsewhere use ``clamp(raw, min, max)``.
    """

    name: str
    raw: Tensor
    min: float
    max: float
    bound: str = "hard"
    module: Optional[BoundedScale] = None

    def effective(self) -> Tensor:
        if self.module is not None:
            return self.module.scale
        return torch.clamp(self.raw.detach().float(), self.min, self.max)

    def clamp_fraction(self) -> Optional[Tensor]:
        return None if self.module is None else self.module.clamp_fraction


def find_bounded_scales(root: nn.Module) -> List[WatchedScale]:
    """Every :class:`BoundedScale` inside ``root``, named by its module path."""
    found = []
    for path, module in root.named_modules():
        if isinstance(module, BoundedScale):
            found.append(WatchedScale(name=path or type(module).__name__, raw=module.raw_scale,
                                      min=module.min_scale, max=module.max_scale, bound=module.bound,
                                      module=module))
    return found


def check_param_bounds(params: Mapping[str, object]) -> Dict[str, Tuple[float, float]]:
    """Validate ``{name: (min, max)}`` as given to ScaleMonitor(params=...)."""
    if not isinstance(params, Mapping):
        raise ValueError(f"`params` must map parameter names to (min, max) bounds, got {params!r}")
    checked = {}
    for name, bounds in params.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"`params` keys must be parameter names, got {name!r}")
        if isinstance(bounds, (str, bytes)) or not isinstance(bounds, Sequence) or len(bounds) != 2:
            raise ValueError(f"`params[{name!r}]` must be a (min, max) pair, got {bounds!r}")
        checked[name] = check_bounds(bounds[0], bounds[1], min_name=f"params[{name!r}][0] (min)",
                                     max_name=f"params[{name!r}][1] (max)")
    return checked


def watch_parameters(root: nn.Module, params: Mapping[str, Tuple[float, float]]) -> List[WatchedScale]:
    """Handles on bare scalar parameters (or buffers) of ``root`` named in ``params``.

    Raises:
        ValueError: for a name that is not a parameter or buffer of ``root``, or one
            that holds more than one value.
    """
    tensors = dict(root.named_parameters())
    tensors.update(dict(root.named_buffers()))
    watched = []
    for name, (lo, hi) in params.items():
        if name not in tensors:
            scalars = sorted(n for n, t in tensors.items() if t.numel() == 1)
            raise ValueError(f"`params` names {name!r}, which is not a parameter or buffer of "
                             f"{type(root).__name__}; scalar ones are: {scalars}")
        tensor = tensors[name]
        if tensor.numel() != 1:
            raise ValueError(f"`params` names {name!r}, which has shape {tuple(tensor.shape)}; "
                             "only single-value (scalar) parameters can be watched as a scale")
        watched.append(WatchedScale(name=name, raw=tensor, min=lo, max=hi))
    return watched
