"""How peaked attention rows are: entropy and the share of saturated rows.

These check the softmax-sensitivity argument behind the scale bounds on a live
run: a row whose top probability exceeds 0.99 sits where the softmax gradient
``p(1 - p)`` is below 0.01, i.e. where the bias has stopped being learnable.
"""
from __future__ import annotations

from torch import Tensor

#: a row counts as saturated when its largest probability exceeds this
SATURATED_ROW_THRESHOLD = 0.99


def attention_entropy(probs: Tensor) -> Tensor:
    """Mean entropy (nats) of attention rows; ``probs`` ``[..., K]`` sums to 1 over the last dim."""
    p = probs.float()
    return -(p * p.clamp_min(1e-12).log()).sum(-1).mean()


def saturated_row_fraction(probs: Tensor, threshold: float = SATURATED_ROW_THRESHOLD) -> Tensor:
    """Fraction of attention rows whose largest probability exceeds ``threshold``."""
    return (probs.amax(-1) > threshold).float().mean()
