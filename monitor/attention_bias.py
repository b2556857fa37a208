"""The clamped attention-bias generator of the camera/LiDAR fusion detector."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from scalewatch.monitor.bounded_scale import Bound, BoundedScale
from scalewatch.monitor.presets import preset

#: the final bias clamp never exceeds this: beyond |d| = 5 the softmax gradient
#: p(1-p) is below 0.007, i.e. the attention is saturated.
SOFTMAX_EDGE = 5.0


class AttentionBiasGenerator(BoundedScale):
    """Turns routing weights in [-1, 1] into an additive attention bias.

    ``bias = clamp(weights * scale, -limit, limit)`` with
    ``scale = clamp(bias_scale, min_scale, max_scale)`` and
    ``limit = min(5, max_scale)``, so the attention softmax stays where it has
    gradient. There is no printing or random sampling in ``forward``: watching the
    scale is :class:`scalewatch.callbacks.ScaleMonitor`'s job.

    Args:
        bias_scale: initial effective scale, in ``[min_scale, max_scale]``.
        learnable_scale: ``True``: ``bias_scale`` is an ``nn.Parameter``;
            ``False``: a buffer (in ``state_dict``, not in ``parameters()``).
        min_scale: lower bound of the effective scale.
        max_scale: upper bound of the effective scale, ``> 0``.
        use_local_bias: ``True``: weights are per query-key pair (``[..., Q, K]``)
            and the bias has the same shape. ``False``: weights are per key
            (``[..., K]``) and the bias is returned as ``[..., 1, K]``, one row that
            broadcasts to every query when added to ``[..., Q, K]`` logits.
        fp16: ``True``: the bias is returned in the input's dtype (half in, half
            out, so adding it does not upcast half-precision logits); ``False``: it
            is returned in float32. Either way the scale clamp and the product are
            computed in float32 and clamped before any cast, so half outputs are
            always finite.
        bound: ``"hard"`` (the original clamp) or ``"soft"`` (sigmoid map, whose
            gradient never drops to exactly zero); see :class:`BoundedScale`.

    Raises:
        ValueError: on bad bounds, a non-finite or out-of-bounds ``bias_scale``,
            or an unknown ``bound``.

    Example::

        gen = AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0)
        logits = q @ k.transpose(-1, -2) / d ** 0.5 + gen(router_weights)
    """

    raw_scale_name = "bias_scale"

    def __init__(self, bias_scale: float = 2.5, learnable_scale: bool = True, min_scale: float = 0.5,
                 max_scale: float = 5.0, use_local_bias: bool = True, fp16: bool = True,
                 bound: Bound = "hard") -> None:
        super().__init__(bias_scale, min_scale, max_scale, learnable=learnable_scale, bound=bound,
                         init_name="bias_scale")
        self.use_local_bias = bool(use_local_bias)
        self.fp16 = bool(fp16)
        self.bias_limit = min(SOFTMAX_EDGE, self.max_scale)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "AttentionBiasGenerator":
        """Build from a named preset: ``conservative``, ``aggressive``, ``ultra-conservative``.

        Raises:
            ValueError: for an unknown preset name.
        """
        return cls(**{**preset(name), **overrides})

    def forward(self, weights: Tensor) -> Tensor:
        # Autocast must not pull the clamp or the product down to half precision.
        with torch.autocast(device_type=weights.device.type, enabled=False):
            pre = weights.float() * self.scale
            bias = torch.clamp(pre, -self.bias_limit, self.bias_limit)
            if self.track_clamp_fraction:
                # Kept on device: the monitor reads it on check steps only (no sync here).
                self.clamp_fraction = (pre.detach().abs() >= self.bias_limit).float().mean()
        if self.fp16:
            bias = bias.to(weights.dtype)
        if not self.use_local_bias:
            bias = bias.unsqueeze(-2)
        return bias

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", use_local_bias={self.use_local_bias}, fp16={self.fp16}, "
                f"bias_limit={self.bias_limit}")
