"""The one interface every bounded scale of scalewatch shares.

A bounded scale is a scalar (or a small tensor of them, e.g. one per attention
head) that a model learns (or keeps fixed) but only uses inside
``[min_scale, max_scale]``. What a monitor needs of it is small: the raw
tensor the optimizer updates, the effective value the model uses, the bounds,
and how the bound is enforced. ScaleMonitor finds every module that subclasses
:class:`BoundedScale` and reads it through this interface alone.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Literal, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from scalewatch.monitor.validation import check_bounds, check_finite_number

Bound = Literal["hard", "soft"]
BOUNDS = ("hard", "soft")


class BoundedScale(nn.Module):
    """A learnable (or fixed) scalar, or tensor of scalars, used only inside ``[min_scale, max_scale]``.

    Args:
        init: the effective scale to start from; must lie in the bounds
            (strictly inside them for ``bound="soft"``).
        min_scale: lower bound of the effective scale.
        max_scale: upper bound of the effective scale, ``> 0``.
        learnable: ``True`` stores the raw value as an ``nn.Parameter``;
            ``False`` as a buffer (saved in ``state_dict``, not in ``parameters()``).
        bound: ``"hard"`` clamps the raw value (the gradient is exactly zero once
            the raw value leaves the bounds, so the parameter can get pinned there);
            ``"soft"`` maps an unconstrained raw value through
            ``min + (max - min) * sigmoid(raw)``, whose gradient shrinks near the
            bounds but is never exactly zero. Soft bounds never pin, but the scale
            reacts more slowly near the bounds and never reaches them exactly.
        init_name: the argument name used for ``init`` in error messages.
        shape: shape of the raw tensor, every element starting at ``init``; ``()``
            (the default) is a single scalar. The bounds apply element-wise.
        shardable: for a single scalar (``shape=()``), hold the raw value as a
            1-element ``(1,)`` tensor, which FSDP2's ``fully_shard``, FSDP1 and
            DeepSpeed can shard (they refuse 0-dim parameters). :attr:`scale` stays
            0-dim, checkpoints of either shape load into either, and records name it
            as a single value. (:func:`scalewatch.monitor.sharded.make_shardable` does this to
            a built model.)

    Raises:
        ValueError: on non-finite or inconsistent bounds, an ``init`` outside
            them, or an unknown ``bound``.
    """

    #: attribute under which the raw tensor is registered (and its state_dict key)
    raw_scale_name: str = "raw"

    def __init__(self, init: float, min_scale: float, max_scale: float, learnable: bool = True,
                 bound: Bound = "hard", *, init_name: str = "init", shape: Sequence[int] = (),
                 shardable: bool = False) -> None:
        super().__init__()
        self.min_scale, self.max_scale = check_bounds(min_scale, max_scale)
        init = check_finite_number(init_name, init)
        if bound not in BOUNDS:
            raise ValueError(f"`bound` must be one of {BOUNDS}, got {bound!r}")
        if not self.min_scale <= init <= self.max_scale:
            raise ValueError(f"`{init_name}` must lie in [min_scale, max_scale] = "
                             f"[{self.min_scale}, {self.max_scale}], got {init!r}")
        if bound == "soft" and init in (self.min_scale, self.max_scale):
            raise ValueError(f"`{init_name}` must lie strictly inside ({self.min_scale}, {self.max_scale}) "
                             f"with bound='soft' (the sigmoid never reaches its ends), got {init!r}")
        self.bound: Bound = bound
        self.learnable = bool(learnable)
        #: one value used as a 0-dim scale (whether held as ``()`` or, shardable, as ``(1,)``)
        self.scalar = tuple(shape) == ()
        raw = torch.full((1,) if shardable and self.scalar else tuple(shape), self._raw_from_scale(init),
                         dtype=torch.float32)
        if self.learnable:
            setattr(self, self.raw_scale_name, nn.Parameter(raw))
        else:
            self.register_buffer(self.raw_scale_name, raw)
        # Fraction of outputs cut by a clamp in the last forward, kept on device
        # (no sync); subclasses that clamp their output set it while
        # `track_clamp_fraction` is on. Off by default (it costs a reduction per
        # forward); ScaleMonitor turns it on for the forward passes of check steps.
        self.clamp_fraction: Optional[Tensor] = None
        self.track_clamp_fraction = False

    def _raw_from_scale(self, scale: float) -> float:
        if self.bound == "hard":
            return scale
        p = (scale - self.min_scale) / (self.max_scale - self.min_scale)
        return math.log(p / (1.0 - p))

    @property
    def raw_scale(self) -> Tensor:
        """The raw tensor the optimizer updates (parameter or buffer)."""
        return getattr(self, self.raw_scale_name)

    @property
    def scale(self) -> Tensor:
        """The effective scale in float32, differentiable w.r.t. the raw tensor (0-dim for a single scalar)."""
        raw = self.raw_scale
        if self.scalar and raw.dim() == 1:  # shardable: held as (1,), used as 0-dim
            raw = raw.reshape(())
        return self.scale_of(raw)

    def scale_of(self, raw: Tensor) -> Tensor:
        """The effective scale for the raw value(s) ``raw``, element-wise, in float32.

        What :attr:`scale` computes from the module's own raw tensor; a watcher uses it on
        the full raw value gathered from a sharded model. Subclasses that change how the
        effective scale follows from the raw one override this.
        """
        raw = raw.float()
        if self.bound == "hard":
            return torch.clamp(raw, self.min_scale, self.max_scale)
        return self.min_scale + (self.max_scale - self.min_scale) * torch.sigmoid(raw)

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A single scalar loads from a checkpoint of either shape: 0-dim (the default) or (1,) (shardable).
        key = prefix + self.raw_scale_name
        value = state_dict.get(key)
        if self.scalar and isinstance(value, Tensor) and value.numel() == 1:
            own = getattr(self, self.raw_scale_name)
            if value.dim() != own.dim() and own.numel() == 1:
                state_dict[key] = value.reshape(own.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def scale_bounds(self) -> Tuple[float, float]:
        return self.min_scale, self.max_scale

    def extra_repr(self) -> str:
        return (f"min_scale={self.min_scale}, max_scale={self.max_scale}, "
                f"learnable={self.learnable}, bound={self.bound!r}")
