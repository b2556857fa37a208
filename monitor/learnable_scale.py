"""A general bounded multiplicative scale (temperature, logit scale, gate)."""
from __future__ import annotations

from torch import Tensor

from scalewatch.monitor.bounded_scale import Bound, BoundedScale


class LearnableScale(BoundedScale):
    """Multiplies its input by a learnable scale kept inside ``[min_scale, max_scale]``.

    The library's second bounded scale, for scales that are not attention biases
    (a CLIP-style logit scale, a residual gate). ScaleMonitor finds it like the
    bias generator. Arguments as in :class:`BoundedScale` (``shardable=True`` holds the
    scale as a ``(1,)`` tensor that FSDP and DeepSpeed can shard; :attr:`scale` stays 0-dim).

    Example::

        self.logit_scale = LearnableScale(init=2.659, min_scale=0.0, max_scale=4.6052)
        logits = self.logit_scale(image_emb @ text_emb.T)
    """

    def __init__(self, init: float = 1.0, min_scale: float = 0.0, max_scale: float = 10.0,
                 learnable: bool = True, bound: Bound = "hard", shardable: bool = False) -> None:
        super().__init__(init, min_scale, max_scale, learnable=learnable, bound=bound, shardable=shardable)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale.to(x.dtype)
