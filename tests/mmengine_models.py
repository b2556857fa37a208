"""Small real mmengine models and a Runner factory, for the ScaleMonitorHook tests and their subprocess scripts."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import torch
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import TensorDataset

import scalewatch.callbacks.mmengine  # noqa: F401 - registers ScaleMonitorHook
from scalewatch.monitor import AttentionBiasGenerator

#: the watched generator's name in DriftNet
GENERATOR = "head.attention_bias_generator"


class DriftNet(BaseModel):
    """A bias generator whose scale the loss pushes up (``push=+1``) or down (``push=-1``).

    The mmengine twin of ``tests/models.py``'s DriftModel: weights are positive, so
    ``loss = -push * mean(bias)`` has gradient ``-push * mean(w)`` w.r.t. the scale and
    SGD walks it to a bound, where the hard clamp cuts the gradient and pins it. A bare
    ``loss_temperature`` parameter (watched through ``params``) has "loss" in its name,
    the pattern LogProcessor averages over a window.
    """

    def __init__(self, push: float = 1.0, bias_scale: float = 2.5, min_scale: float = 0.5,
                 max_scale: float = 5.0) -> None:
        super().__init__()
        self.push = push
        self.head = nn.Module()
        self.head.attention_bias_generator = AttentionBiasGenerator(bias_scale=bias_scale, min_scale=min_scale,
                                                                    max_scale=max_scale)
        self.proj = nn.Linear(8, 8)
        self.loss_temperature = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor, mode: str = "tensor") -> Any:
        weights = torch.sigmoid(self.proj(x)).unsqueeze(-1).expand(-1, -1, 8)  # [B, Q, K] in (0, 1)
        bias = self.head.attention_bias_generator(weights)
        if mode != "loss":
            return bias
        loss = -self.push * bias.float().mean() + 0.01 * self.proj.weight.pow(2).sum()
        return {"loss": loss + 0.1 * (self.loss_temperature - 2.0) ** 2}


def dataset(n: int = 64, seed: int = 0) -> TensorDataset:
    return TensorDataset(torch.randn(n, 8, generator=torch.Generator().manual_seed(seed)))


def make_runner(work_dir: str, hook: Optional[Dict[str, Any]] = None, max_iters: int = 40, lr: float = 0.01,
                log_interval: int = 5, model: Optional[nn.Module] = None, name: Optional[str] = None,
                optim_wrapper: Optional[Dict[str, Any]] = None, vis_backends: Optional[List[dict]] = None,
                checkpoint_interval: Optional[int] = None, **kwargs: Any) -> Runner:
    """An iteration-based Runner on the CPU with the hook in ``custom_hooks`` (as a config has it).

    ``name`` becomes the experiment name: mmengine keys its logger, message hub and
    visualizer by it, and two Runners built in the same second would share them.
    """
    hooks = [] if hook is None else [dict(type="ScaleMonitorHook", **hook)]
    checkpoint = (dict(type="CheckpointHook", interval=checkpoint_interval, by_epoch=False)
                  if checkpoint_interval else None)
    return Runner(
        model=model if model is not None else DriftNet(),
        work_dir=work_dir,
        experiment_name=name or os.path.basename(os.path.normpath(work_dir)),
        train_dataloader=dict(dataset=dataset(), sampler=dict(type="InfiniteSampler", shuffle=False),
                              batch_size=4, collate_fn=dict(type="default_collate")),
        optim_wrapper=optim_wrapper or dict(optimizer=dict(type="SGD", lr=lr)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(logger=dict(type="LoggerHook", interval=log_interval), checkpoint=checkpoint),
        custom_hooks=hooks,
        log_processor=dict(by_epoch=False),
        visualizer=dict(type="Visualizer", vis_backends=vis_backends or [dict(type="LocalVisBackend")]),
        env_cfg=dict(dist_cfg=dict(backend="gloo")),
        default_scope=None,
        **kwargs,
    )
