"""Small real LightningModules used across the tests, for either Lightning package.

``DriftModel`` and ``LogitScaleModel`` are ``pytorch_lightning`` modules;
``modules_for("lightning.pytorch")`` gives the same two on the unified package.
"""
from __future__ import annotations

import importlib
from functools import lru_cache
from typing import Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from scalewatch.monitor import AttentionBiasGenerator


def loader(n: int = 64, batch_size: int = 4, seed: int = 0, features: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(n, features, generator=g)), batch_size=batch_size)


class _Drift:
    """A bias generator whose scale the loss pushes up (``push=+1``) or down (``push=-1``).

    Weights are positive, so ``loss = -push * mean(bias)`` has gradient
    ``-push * mean(w)`` w.r.t. the scale: SGD walks it to a bound, where the hard
    clamp cuts the gradient and pins the raw parameter.
    """

    def __init__(self, push: float = 1.0, lr: float = 0.1, bias_scale: float = 2.5, min_scale: float = 0.5,
                 max_scale: float = 5.0, bound: str = "hard", momentum: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.head = nn.Module()
        self.head.attention_bias_generator = AttentionBiasGenerator(
            bias_scale=bias_scale, min_scale=min_scale, max_scale=max_scale, bound=bound)
        self.proj = nn.Linear(8, 8)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        weights = torch.sigmoid(self.proj(x)).unsqueeze(-1).expand(-1, -1, 8)  # [B, Q, K] in (0, 1)
        bias = self.head.attention_bias_generator(weights)
        loss = -self.hparams.push * bias.float().mean() + 0.01 * self.proj.weight.pow(2).sum()
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum)

    def train_dataloader(self):
        return loader()


class _LogitScale:
    """The open_clip pattern: a bare ``logit_scale`` parameter clamped in place after each step."""

    def __init__(self, lr: float = 0.3, init: float = 3.0, max_value: float = 4.6052) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.logit_scale = nn.Parameter(torch.tensor(init))
        self.proj = nn.Linear(8, 8)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        # matched pairs: a sharper softmax always helps, so the optimizer keeps pushing the scale up
        a = nn.functional.normalize(x, dim=-1)
        b = nn.functional.normalize(x, dim=-1) + 0.0 * self.proj(x)  # proj: a second parameter, untouched
        logits = self.logit_scale.exp() * a @ b.T
        loss = nn.functional.cross_entropy(logits, torch.arange(len(x)))
        self.log("loss", loss)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        with torch.no_grad():
            self.logit_scale.clamp_(0, self.hparams.max_value)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)  # as open_clip (AdamW)

    def train_dataloader(self):
        return loader()


@lru_cache(maxsize=None)
def modules_for(package: str) -> Tuple[type, type]:
    """(DriftModel, LogitScaleModel) as LightningModules of ``package``
    (``"pytorch_lightning"`` or ``"lightning.pytorch"``)."""
    base = importlib.import_module(package).LightningModule
    drift = type("DriftModel", (_Drift, base), {"__module__": __name__})
    logit = type("LogitScaleModel", (_LogitScale, base), {"__module__": __name__})
    return drift, logit


def __getattr__(name: str) -> type:
    # `from models import DriftModel` imports pytorch_lightning only when asked for, so a test
    # interpreter without it can still use modules_for("lightning.pytorch").
    if name in ("DriftModel", "LogitScaleModel"):
        return modules_for("pytorch_lightning")[name == "LogitScaleModel"]
    raise AttributeError(name)

#: both Lightning packages, for tests parametrised over them
LIGHTNING_PACKAGES = ("pytorch_lightning", "lightning.pytorch")
