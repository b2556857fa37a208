"""The LightningModule: object queries read a scene from camera and LiDAR tokens."""
from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from attention_stats import attention_entropy, saturated_row_fraction
from scalewatch.monitor import AttentionBiasGenerator, BoundedScale, preset as preset_arguments
from sensor_fusion_attention import SensorFusionAttention


class SensorFusionModel(pl.LightningModule):
    """One query per scene cell attends over camera and LiDAR tokens and regresses the cell.

    Tokens are embedded as content + cell position + sensor type; the cross-attention
    adds the attention-bias generator's bias to its logits (see
    :class:`SensorFusionAttention`). The loss is the mean squared error against the
    clean scene. Besides the loss, every stage logs

    - ``attention_entropy``: mean entropy of the attention rows (nats);
    - ``saturated_rows``: fraction of rows whose top probability exceeds 0.99;
    - ``reliable_attention``: attention mass on the sample's reliable sensor.

    Args:
        preset: named scale configuration: ``conservative``, ``aggressive`` or
            ``ultra-conservative`` (see ``scalewatch.monitor.PRESETS``).
        bias_scale: initial scale; ``None`` takes the preset's.
        min_scale: lower bound of the scale; ``None`` takes the preset's.
        max_scale: upper bound of the scale; ``None`` takes the preset's.
        learnable_scale: learn the scale (``False``: keep it fixed at ``bias_scale``).
        bound: ``"hard"`` clamp (the original) or ``"soft"`` sigmoid bound.
        num_positions: scene cells, one query each (linked to the data's).
        content_dim: size of a cell's content (linked to the data's).
        health_dim: size of a token's health reading.
        d_model: embedding size.
        num_heads: attention heads.
        per_head_scale: ``True``: one learnable bias scale per attention head
            (``AttentionBiasGenerator(num_heads=num_heads)``, read as ``NAME[h]``);
            ``False`` (default): one scale shared by every head, as before.
        router_hidden: width of the router's MLP.
        lr: AdamW learning rate of every weight except the scale.
        bias_scale_lr: learning rate of the scale; ``None`` uses ``lr``. Raising it
            is the quickest way to drive the scale into its upper bound.
        weight_decay: AdamW weight decay (never applied to the scale).
    """

    def __init__(self, preset: str = "conservative", bias_scale: Optional[float] = None,
                 min_scale: Optional[float] = None, max_scale: Optional[float] = None,
                 learnable_scale: bool = True, bound: Literal["hard", "soft"] = "hard",
                 num_positions: int = 8, content_dim: int = 4, health_dim: int = 1, d_model: int = 32,
                 num_heads: int = 2, router_hidden: int = 16, lr: float = 3e-3,
                 bias_scale_lr: Optional[float] = None, weight_decay: float = 0.01,
                 per_head_scale: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        scale_args = preset_arguments(preset)
        overrides = {"bias_scale": bias_scale, "min_scale": min_scale, "max_scale": max_scale}
        scale_args.update({k: v for k, v in overrides.items() if v is not None})
        generator = AttentionBiasGenerator(**scale_args, learnable_scale=learnable_scale, bound=bound,
                                           use_local_bias=True, fp16=True,
                                           num_heads=num_heads if per_head_scale else None)
        self.content_proj = nn.Linear(content_dim, d_model)
        self.position_embedding = nn.Parameter(torch.randn(num_positions, d_model) * 0.5)
        self.sensor_embedding = nn.Parameter(torch.randn(2, d_model) * 0.5)
        self.queries = nn.Parameter(torch.randn(num_positions, d_model) * 0.5)
        self.fusion_attention = SensorFusionAttention(d_model, num_heads, generator, health_dim, router_hidden)
        self.readout = nn.Linear(d_model, content_dim)

    @property
    def attention_bias_generator(self) -> AttentionBiasGenerator:
        return self.fusion_attention.attention_bias_generator

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """``[B, 2P, C]`` camera-then-LiDAR observations -> ``[B, 2P, D]`` embeddings."""
        positions = self.position_embedding.repeat(2, 1)  # camera cells, then LiDAR cells
        sensors = self.sensor_embedding.repeat_interleave(self.hparams.num_positions, dim=0)
        return self.content_proj(tokens) + positions + sensors

    def forward(self, tokens: Tensor, health: Tensor) -> Dict[str, Tensor]:
        """Predict every cell's content; also return the attention probabilities."""
        fused, probs = self.fusion_attention(self.queries, self.embed_tokens(tokens), health)
        return {"prediction": self.readout(fused), "attention": probs}

    def _shared_step(self, batch: Dict[str, Tensor], stage: str) -> Tensor:
        out = self(batch["tokens"], batch["health"])
        loss = nn.functional.mse_loss(out["prediction"], batch["target"])
        probs = out["attention"].detach()
        reliable = (probs * batch["reliable"][:, None, None, :]).sum(-1).mean()
        on_step = stage == "train"
        options = dict(on_step=on_step, on_epoch=not on_step, sync_dist=not on_step, batch_size=len(batch["target"]))
        self.log(f"{stage}/loss", loss, prog_bar=True, **options)
        self.log_dict({f"{stage}/attention_entropy": attention_entropy(probs),
                       f"{stage}/saturated_rows": saturated_row_fraction(probs),
                       f"{stage}/reliable_attention": reliable}, **options)
        return loss

    def training_step(self, batch: Dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Dict[str, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        scale_params = [p for m in self.modules() if isinstance(m, BoundedScale)
                        for p in m.parameters(recurse=False)]
        scale_ids = {id(p) for p in scale_params}
        other = [p for p in self.parameters() if id(p) not in scale_ids]
        groups: List[Dict[str, Any]] = [{"params": other}]
        if scale_params:
            lr = self.hparams.lr if self.hparams.bias_scale_lr is None else self.hparams.bias_scale_lr
            groups.append({"params": scale_params, "lr": lr, "weight_decay": 0.0})
        return torch.optim.AdamW(groups, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
