"""Handles on the scales a monitor watches: library modules and bare parameters."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from scalewatch.monitor.bounded_scale import BoundedScale
from scalewatch.monitor.display import IDENTITY
from scalewatch.monitor.name_patterns import check_pattern, is_pattern, match_names, no_match_hint
from scalewatch.monitor.scale_spec import ScaleSpec, check_scale_spec
from scalewatch.monitor.sharded import NamedTensor, full_shapes, named_modules, named_tensors

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
    ``owner`` and ``attr`` say where the tensor is registered (so that a watcher finds it
    again after ``fully_shard`` replaced it), ``shape`` is its full shape when the
    tensor is a shard (see :mod:`scalewatch.monitor.sharded`).
    """

    name: str
    raw: Tensor
    min: Optional[float]
    max: Optional[float]
    bound: str = "hard"
    module: Optional[BoundedScale] = None
    display: str = IDENTITY
    owner: Optional[nn.Module] = field(default=None, repr=False)
    attr: Optional[str] = field(default=None, repr=False)
    shape: Optional[Tuple[int, ...]] = None
    _element_names: Optional[List[str]] = field(default=None, init=False, repr=False)
    #: the effective value is the raw tensor itself (no clamp, no transform): a reader takes it once
    effective_is_raw: ClassVar[bool] = False
    #: more fields on each of its history lines, after the check's own (an attention statistic says which)
    record_fields: ClassVar[Optional[Mapping[str, Any]]] = None

    @property
    def numel(self) -> int:
        """How many values (readings) the scale holds: 1, or e.g. the heads of a per-head scale
        (all of them, also where this process holds a shard)."""
        shape = self.shape
        return self.raw.numel() if shape is None else math.prod(shape)

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
    shape_of = None
    for path, module in named_modules(root):  # the model's own paths, through DDP, FSDP, compile, ...
        if isinstance(module, BoundedScale):
            if shape_of is None:
                shape_of = full_shapes(root)
            raw = module.raw_scale
            found.append(WatchedScale(name=path or type(module).__name__, raw=raw,
                                      min=module.min_scale, max=module.max_scale, bound=module.bound,
                                      module=module, owner=module, attr=module.raw_scale_name,
                                      shape=shape_of(module, module.raw_scale_name, raw)))
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
    if not specs:
        return []
    # the model's own names, whatever wraps it (DDP's module., compile's _orig_mod., FSDP1's ...)
    named_params, named_buffers = named_tensors(root)
    entries: Dict[str, NamedTensor] = {t.name: t for t in named_params}
    entries.update({t.name: t for t in named_buffers})
    tensors: Dict[str, Tensor] = {n: t.tensor for n, t in entries.items()}
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
            scalars = sorted(n for n, t in entries.items() if math.prod(t.shape) == 1)
            raise ValueError(f"`params` names {key!r}, which is not a parameter or buffer of "
                             f"{type(root).__name__}; single-value ones are: {scalars}{no_match_hint(key)}")
        for name in names:
            if name in claimed:
                raise ValueError(f"`params` keys {claimed[name]!r} and {key!r} both name {name!r}; "
                                 "give each tensor one entry")
            claimed[name] = key
            watched.append(_watch_tensor(key, entries[name], spec))
    return watched


def _watch_tensor(key: str, entry: NamedTensor, spec: ScaleSpec) -> WatchedScale:
    name, tensor = entry.name, entry.tensor
    numel = math.prod(entry.shape)
    if tensor.is_complex():
        raise ValueError(f"`params[{key!r}]` names {name!r}, a complex tensor ({tensor.dtype}); only real ones "
                         "can be watched as a scale")
    if numel == 0:
        raise ValueError(f"`params[{key!r}]` names {name!r} of shape {entry.shape}, which holds no value")
    if numel > MAX_ELEMENTS:
        raise ValueError(f"`params[{key!r}]` names {name!r} of shape {entry.shape}: {numel} values, "
                         f"more than {MAX_ELEMENTS} (each value is one reading per check); name the scale "
                         "tensors more narrowly")
    shape = entry.shape if entry.shape != tuple(tensor.shape) else None
    return WatchedScale(name=name, raw=tensor, min=spec.min, max=spec.max, display=spec.display,
                        owner=entry.owner, attr=entry.attr, shape=shape)
