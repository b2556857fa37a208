"""The router: one weight in [-1, 1] per (query, sensor token) pair."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class QueryTokenRouter(nn.Module):
    """Scores how much each query should trust each sensor token.

    A small MLP over the sum of a query projection and a projection of the
    token's health reading, squashed by ``tanh`` into ``[-1, 1]``: the weights
    the :class:`~scalewatch.monitor.AttentionBiasGenerator` multiplies by its scale.

    Args:
        query_dim: size of a query embedding.
        health_dim: size of a token's health reading.
        hidden_dim: width of the MLP.
    """

    def __init__(self, query_dim: int, health_dim: int = 1, hidden_dim: int = 16) -> None:
        super().__init__()
        self.query_proj = nn.Linear(query_dim, hidden_dim)
        self.health_proj = nn.Linear(health_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, 1)

    def forward(self, queries: Tensor, health: Tensor) -> Tensor:
        """``queries`` ``[Q, D]`` or ``[B, Q, D]``, ``health`` ``[B, K, H]`` -> weights ``[B, Q, K]``."""
        q = self.query_proj(queries)  # [(B,) Q, R]
        if q.dim() == 2:
            q = q.unsqueeze(0)
        t = self.health_proj(health)  # [B, K, R]
        hidden = torch.nn.functional.gelu(q.unsqueeze(2) + t.unsqueeze(1))  # [B, Q, K, R]
        return torch.tanh(self.out(hidden).squeeze(-1))
