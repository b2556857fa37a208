"""Handles on the scales a monitor watches: library modules and bare parameters."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

import torch
from torch import Tensor, nn

from scalewatch.monitor.bounded_scale import BoundedScale
from scalewatch.monitor.display import IDENTITY
from scalewatch.monitor.name_patterns import check_pattern, is_pattern, match_names, no_match_hint
from scalewatch.monitor.scale_spec import ScaleSpec, check_scale_spec

#: a watched tensor holding more values than this is refused: each value becomes one
#: reading (one history line per check), so this is a weight matrix matched by mistake
MAX_ELEMENTS = 65536


@dataclass(eq=False)
class WatchedScale:
    """One scale to read: its name, raw tensor, bounds and how it becomes effective.

    ``module`` is set for scales of the library (their own ``scale`` is the
    effective value); bare parameters clamped elsewhere use ``clamp(raw, min, max)``
    (a ``None`` bound is no clamp on that side). A tensor of more than one value is
    read element-wise: :attr:`numel` readings named by :meth:`element_names`.
    ``display`` is how dashboards show it (see :mod:`scalewatch.monitor.display`).
    """

    name: str
    raw: Tensor
    min: Optional[float]
    max: Optional[float]
    bound: str = "hard"
    module: Optional[BoundedScale] = None
    display: str = IDENTITY
    _element_names: Optional[List[str]] = field(default=None, init=False, repr=False)

    @property
    def numel(self) -> int:
        """How many values (readings) the scale holds: 1, or e.g. the heads of a per-head scale."""
        return self.raw.numel()

    def element_names(self) -> List[str]:
        """The reading names: ``[name]`` for a single value, ``NAME[i]`` (flat index) per element else.

        Built once and reused (the list must not be modified).
        """
        names = self._element_names
        n = self.numel
        if names is None or len(names) != n:
            names = [self.name] if n == 1 else [f"{self.name}[{i}]" for i in range(n)]
            self._element_names = names
        return names

    def effective(self) -> Tensor:
        if self.module is not None:
            return self.module.scale
        return torch.clamp(self.raw.detach().float(), self.min, self.max)

    def clamp_fraction(self) -> Optional[Tensor]:
        return None if self.module is None else self.module.clamp_fraction


def find_bounded_scales(root: nn.Module) -> List[WatchedScale]:
    """Every :class:`BoundedScale` inside ``root``, named by its module path.

    A per-head module (``AttentionBiasGenerator(num_heads=H)``) is one entry whose
    :attr:`WatchedScale.numel` is ``H``: its heads are read as ``NAME[h]``.
    """
    found = []
    for path, module in root.named_modules():
        if isinstance(module, BoundedScale):
            found.append(WatchedScale(name=path or type(module).__name__, raw=module.raw_scale,
                                      min=module.min_scale, max=module.max_scale, bound=module.bound,
                                      module=module))
    return found


def check_param_bounds(params: Mapping[str, object]) -> Dict[str, ScaleSpec]:
    """Validate ``params`` as given to ScaleMonitor / ScaleWatcher, before any model exists.

    Keys are parameter (or buffer) names or glob patterns (see
    :mod:`scalewatch.monitor.name_patterns`); values are ``(min, max)`` pairs
    (either may be ``None``), mappings ``{min, max, display}`` or
    :class:`ScaleSpec`\\ s. Checking an already checked mapping returns it unchanged.

    Returns:
        ``{key: ScaleSpec}`` in the given order.

    Raises:
        ValueError: naming ``params[KEY]`` and the value, for a malformed pattern, a
            bound pair of the wrong length, ``(None, None)``, bad bounds or display.

    Example::

        check_param_bounds({"*.attn.logit_scale": (None, math.log(100))})
    """
    if not isinstance(params, Mapping):
        raise ValueError(f"`params` must map parameter names (or glob patterns) to (min, max) bounds, got {params!r}")
    return {check_pattern(key): check_scale_spec(spec, where=f"params[{key!r}]") for key, spec in params.items()}


def watch_parameters(root: nn.Module, params: Mapping[str, object]) -> List[WatchedScale]:
    """Handles on the bare parameters (or buffers) of ``root`` that ``params`` names.

    A plain key names one tensor; a glob key (``"*.attn.logit_scale"``) every
    tensor it matches, in ``named_parameters()`` then ``named_buffers()`` order,
    except those of :class:`BoundedScale` modules (:func:`find_bounded_scales`
    watches them already). Tensors of more than one value are read element-wise.

    Raises:
        ValueError: for a plain name that is not a parameter or buffer of ``root``,
            a pattern that matches none, a tensor two keys name, a complex or empty
            tensor, or one of more than :data:`MAX_ELEMENTS` values (plus the errors of
            :func:`check_param_bounds`).
    """
    specs = check_param_bounds(params)
    tensors: Dict[str, Tensor] = dict(root.named_parameters())
    tensors.update(dict(root.named_buffers()))
    owned = {id(m.raw_scale) for m in root.modules() if isinstance(m, BoundedScale)}
    claimed: Dict[str, str] = {}
    watched = []
    for key, spec in specs.items():
        if is_pattern(key):
            names = [n for n in match_names(key, tensors) if id(tensors[n]) not in owned]
            if not names:
                raise ValueError(f"`params` pattern {key!r} matches no parameter or buffer of {type(root).__name__} "
                                 f"(out of {len(tensors)}; bounded-scale modules are watched by themselves)"
                                 f"{no_match_hint(key)}")
        elif key in tensors:
            names = [key]
        else:
            scalars = sorted(n for n, t in tensors.items() if t.numel() == 1)
            raise ValueError(f"`params` names {key!r}, which is not a parameter or buffer of "
                             f"{type(root).__name__}; single-value ones are: {scalars}{no_match_hint(key)}")
        for name in names:
            if name in claimed:
                raise ValueError(f"`params` keys {claimed[name]!r} and {key!r} both name {name!r}; "
                                 "give each tensor one entry")
            claimed[name] = key
            watched.append(_watch_tensor(key, name, tensors[name], spec))
    return watched


def _watch_tensor(key: str, name: str, tensor: Tensor, spec: ScaleSpec) -> WatchedScale:
    if tensor.is_complex():
        raise ValueError(f"`params[{key!r}]` names {name!r}, a complex tensor ({tensor.dtype}); only real ones "
                         "can be watched as a scale")
    if tensor.numel() == 0:
        raise ValueError(f"`params[{key!r}]` names {name!r} of shape {tuple(tensor.shape)}, which holds no value")
    if tensor.numel() > MAX_ELEMENTS:
        raise ValueError(f"`params[{key!r}]` names {name!r} of shape {tuple(tensor.shape)}: {tensor.numel()} values, "
                         f"more than {MAX_ELEMENTS} (each value is one reading per check); name the scale "
                         "tensors more narrowly")
    return WatchedScale(name=name, raw=tensor, min=spec.min, max=spec.max, display=spec.display)
