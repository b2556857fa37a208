"""The clamped attention-bias generator of the camera/LiDAR fusion detector."""
from __future__ import annotations

import numbers
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from scalewatch.monitor.bounded_scale import Bound, BoundedScale
from scalewatch.monitor.presets import preset

#: the final bias clamp never exceeds this: beyond |d| = 5 the softmax gradient
#: p(1-p) is below 0.007, i.e. the attention is saturated.
SOFTMAX_EDGE = 5.0


def check_num_heads(num_heads: object) -> Optional[int]:
    """``None`` or an integer >= 1, else ``ValueError`` naming ``num_heads``."""
    if num_heads is None:
        return None
    if isinstance(num_heads, bool) or not isinstance(num_heads, numbers.Integral) or num_heads < 1:
        raise ValueError(f"`num_heads` must be None (one shared scale) or an integer >= 1, got {num_heads!r}")
    return int(num_heads)


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
        num_heads: ``None`` (default): one scale shared by every head, a 0-dim
            ``bias_scale``. An int H: one scale per head, ``bias_scale`` of shape
            ``(H, 1, 1)``; weights then carry a head dimension, ``[..., H, Q, K]``
            (``use_local_bias=False``: ``[..., H, K]``, bias ``[..., H, 1, K]``). Bounds,
            the final clamp and ``clamp_fraction`` (shape ``(H,)``) apply per head;
            ScaleMonitor reads each head as ``NAME[h]``.
        shardable: ``True`` holds the single shared scale as a 1-element ``(1,)``
            tensor instead of a 0-dim one, so that FSDP2's ``fully_shard``, FSDP1 and
            DeepSpeed can shard it (they refuse 0-dim parameters). Nothing else changes:
            :attr:`scale` is 0-dim, the bias the same, old 0-dim checkpoints load, and
            records name it as one value. (A per-head scale is shardable as it is.)

    Raises:
        ValueError: on bad bounds, a non-finite or out-of-bounds ``bias_scale``,
            an unknown ``bound``, or a ``num_heads`` that is not ``None`` or an int >= 1.

    Example::

        gen = AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0)
        logits = q @ k.transpose(-1, -2) / d ** 0.5 + gen(router_weights)

        per_head = AttentionBiasGenerator.from_preset("conservative", num_heads=8)
        logits = logits + per_head(router_weights.unsqueeze(-3).expand(-1, 8, -1, -1))  # [B, 8, Q, K]
    """

    raw_scale_name = "bias_scale"

    def __init__(self, bias_scale: float = 2.5, learnable_scale: bool = True, min_scale: float = 0.5,
                 max_scale: float = 5.0, use_local_bias: bool = True, fp16: bool = True,
                 bound: Bound = "hard", num_heads: Optional[int] = None, shardable: bool = False) -> None:
        num_heads = check_num_heads(num_heads)
        super().__init__(bias_scale, min_scale, max_scale, learnable=learnable_scale, bound=bound,
                         init_name="bias_scale", shape=() if num_heads is None else (num_heads, 1, 1),
                         shardable=shardable)
        self.num_heads = num_heads
        self.use_local_bias = bool(use_local_bias)
        self.fp16 = bool(fp16)
        self.bias_limit = min(SOFTMAX_EDGE, self.max_scale)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "AttentionBiasGenerator":
        """Build from a named preset: ``conservative``, ``aggressive``, ``ultra-conservative``.

        ``overrides`` are any other arguments, e.g. ``num_heads=8``.

        Raises:
            ValueError: for an unknown preset name.
        """
        return cls(**{**preset(name), **overrides})

    def _head_dim(self) -> Tuple[int, str]:
        """Where the head dimension of the weights is, and how the weights are laid out."""
        return (-3, "[..., H, Q, K]") if self.use_local_bias else (-2, "[..., H, K]")

    def _check_heads(self, weights: Tensor) -> None:
        dim, layout = self._head_dim()
        if weights.dim() < -dim or weights.shape[dim] != self.num_heads:
            raise ValueError(f"`weights` must be {layout} with H = num_heads = {self.num_heads} "
                             f"(use_local_bias={self.use_local_bias}), got shape {tuple(weights.shape)}")

    def forward(self, weights: Tensor) -> Tensor:
        per_head = self.num_heads is not None
        if per_head:
            self._check_heads(weights)  # shapes only: no sync
        # Autocast must not pull the clamp or the product down to half precision.
        with torch.autocast(device_type=weights.device.type, enabled=False):
            w = weights.float()
            if per_head and not self.use_local_bias:
                w = w.unsqueeze(-2)  # [..., H, 1, K]: the (H, 1, 1) scale meets its own head
            pre = w * self.scale
            bias = torch.clamp(pre, -self.bias_limit, self.bias_limit)
            if self.track_clamp_fraction:
                # Kept on device: the monitor reads it on check steps only (no sync here).
                hit = (pre.detach().abs() >= self.bias_limit).float()
                # per head: every head covers the same number of entries, so a mean of means is the mean
                self.clamp_fraction = hit.mean(dim=(-2, -1)).reshape(-1, self.num_heads).mean(0) if per_head \
                    else hit.mean()
        if self.fp16:
            bias = bias.to(weights.dtype)
        if not self.use_local_bias and not per_head:
            bias = bias.unsqueeze(-2)
        return bias

    def extra_repr(self) -> str:
        heads = "" if self.num_heads is None else f", num_heads={self.num_heads}"
        return (super().extra_repr() + f", use_local_bias={self.use_local_bias}, fp16={self.fp16}, "
                f"bias_limit={self.bias_limit}{heads}")
