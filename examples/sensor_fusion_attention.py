"""Cross-attention from object queries to camera and LiDAR tokens, with a routed bias."""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from query_token_router import QueryTokenRouter
from scalewatch.monitor import AttentionBiasGenerator


class SensorFusionAttention(nn.Module):
    """Multi-head cross-attention whose logits get the attention-bias generator's bias.

    ``logits = q k^T / sqrt(d_head) + bias``, ``bias = attention_bias_generator(router(queries, health))``,
    the bias going into ``F.scaled_dot_product_attention`` as its float ``attn_mask``:
    the router says, per query and token, how far to trust the token (in
    ``[-1, 1]``), the generator turns that into a logit shift of at most
    ``±min(5, max_scale)``: the same for every head, or, with a per-head generator
    (``AttentionBiasGenerator(num_heads=num_heads)``), scaled by each head's own scale.

    Args:
        d_model: embedding size of queries and tokens.
        num_heads: attention heads; ``d_model`` must be divisible by it.
        attention_bias_generator: the bounded-scale bias (``use_local_bias=True``:
            one weight per query-token pair); its ``num_heads`` is ``None`` (one
            scale) or ``num_heads`` (one scale per head).
        health_dim: size of a token's health reading (the router's input).
        router_hidden: width of the router's MLP.
    """

    def __init__(self, d_model: int, num_heads: int, attention_bias_generator: AttentionBiasGenerator,
                 health_dim: int = 1, router_hidden: int = 16) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"`d_model` ({d_model}) must be divisible by `num_heads` ({num_heads})")
        if not attention_bias_generator.use_local_bias:
            raise ValueError("the router gives one weight per query-token pair: use_local_bias must be True")
        if attention_bias_generator.num_heads not in (None, num_heads):
            raise ValueError(f"`attention_bias_generator.num_heads` must be None or `num_heads` ({num_heads}), "
                             f"got {attention_bias_generator.num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.router = QueryTokenRouter(d_model, health_dim, router_hidden)
        self.attention_bias_generator = attention_bias_generator

    def _split_heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, N, Dh]

    def forward(self, queries: Tensor, tokens: Tensor, health: Tensor) -> Tuple[Tensor, Tensor]:
        """Attend from queries to tokens.

        Args:
            queries: ``[Q, D]`` (learned, shared by the batch).
            tokens: ``[B, K, D]`` embedded camera and LiDAR tokens.
            health: ``[B, K, H]`` each token's health reading.

        Returns:
            ``(output [B, Q, D], attention probabilities [B, heads, Q, K])``.
        """
        batch = tokens.shape[0]
        q = self._split_heads(self.q_proj(queries).unsqueeze(0).expand(batch, -1, -1))
        k = self._split_heads(self.k_proj(tokens))
        v = self._split_heads(self.v_proj(tokens))
        weights = self.router(queries, health)  # [B, Q, K] in [-1, 1]
        generator = self.attention_bias_generator
        if generator.num_heads is None:
            bias = generator(weights).unsqueeze(1)  # [B, 1, Q, K], |bias| <= min(5, max_scale)
        else:  # the same weights for every head, each scaled by its own scale
            bias = generator(weights.unsqueeze(1).expand(-1, self.num_heads, -1, -1))  # [B, H, Q, K]
        bias = bias.to(q.dtype)
        # softmax(q k^T / sqrt(d_head) + bias) v: the bias is SDPA's float mask (what `attention=` reads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        with torch.no_grad():  # the probabilities, for the example's own logged numbers only
            probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + bias, dim=-1)
        out = out.transpose(1, 2).reshape(batch, -1, self.num_heads * self.head_dim)
        return self.out_proj(out), probs
