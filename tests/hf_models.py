"""A small real HF Transformers model and Trainer for the HF front door's tests (no download)."""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, Trainer, TrainingArguments

from scalewatch.monitor import AttentionBiasGenerator

GEN = "head.attention_bias_generator"


class DriftConfig(PretrainedConfig):
    model_type = "scalewatch-drift"

    def __init__(self, push: float = 1.0, bias_scale: float = 2.5, min_scale: float = 0.5, max_scale: float = 5.0,
                 features: int = 8, **kwargs) -> None:
        super().__init__(**kwargs)
        self.push, self.bias_scale, self.min_scale, self.max_scale = push, bias_scale, min_scale, max_scale
        self.features = features


class DriftModel(PreTrainedModel):
    """A bias generator whose scale the loss pushes up: SGD walks it into ``max_scale``, where it pins.

    Weights are positive, so ``loss = -push * mean(bias)`` has gradient ``-push * mean(w)``
    with respect to the scale until the hard clamp cuts it to zero.
    """

    config_class = DriftConfig

    def __init__(self, config: DriftConfig) -> None:
        super().__init__(config)
        self.head = nn.Module()
        self.head.attention_bias_generator = AttentionBiasGenerator(
            bias_scale=config.bias_scale, min_scale=config.min_scale, max_scale=config.max_scale)
        self.proj = nn.Linear(config.features, config.features)
        self.post_init()

    def get_input_embeddings(self) -> None:
        return None  # no embedding; accelerate's FSDP2 preparation asks for it

    def forward(self, x: torch.Tensor, **kwargs: Any) -> dict:
        weights = torch.sigmoid(self.proj(x)).unsqueeze(-1).expand(-1, -1, x.shape[-1])  # [B, Q, K] in (0, 1)
        bias = self.head.attention_bias_generator(weights)
        return {"loss": -self.config.push * bias.float().mean() + 0.01 * self.proj.weight.pow(2).sum()}


class Points(torch.utils.data.Dataset):
    """Fixed random points as ``{"x": ...}`` items (HF's default collator stacks them)."""

    def __init__(self, n: int = 512, features: int = 8) -> None:
        self.x = torch.randn(n, features, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i]}


def hf_trainer(out: Any, callbacks: Iterable[Any], report_to: Iterable[str] = ("tensorboard",), **kw: Any) -> Trainer:
    """A CPU Trainer over a fresh seed-0 DriftModel: 60 SGD steps, loss logged every 5; ``kw`` overrides."""
    torch.manual_seed(0)
    args = dict(output_dir=str(out), use_cpu=True, report_to=list(report_to), max_steps=60, logging_steps=5,
                per_device_train_batch_size=4, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant",
                save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=0)
    args.update(kw)
    return Trainer(model=DriftModel(DriftConfig()), args=TrainingArguments(**args), train_dataset=Points(),
                   callbacks=list(callbacks))
