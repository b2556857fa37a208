"""Advertised mmengine paths, for real: an ``OptimWrapperDict`` (two optimizers, a GAN-like
``train_step`` that calls ``update_params`` per wrapper) and the epoch-based stop.

Real Runners on the CPU, read back from what landed on disk (history, .log).
"""
from __future__ import annotations

import glob
import os
import re
from typing import Any, Dict, List

import pytest
import torch
from torch import nn

pytest.importorskip("mmengine")
from mmengine.model import BaseModel  # noqa: E402
from mmengine.optim import OptimWrapper, OptimWrapperDict, build_optim_wrapper  # noqa: E402
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS  # noqa: E402
from mmengine.runner import EpochBasedTrainLoop, Runner  # noqa: E402

import readback  # noqa: E402
from mmengine_models import GENERATOR, DriftNet, dataset  # noqa: E402
from scalewatch.callbacks.mmengine import ScaleMonitorHook  # noqa: E402
from scalewatch.monitor import AttentionBiasGenerator  # noqa: E402

GEN_SCALE = "generator.attention_bias_generator"
DISC_TEMP = "discriminator.temperature"


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class TwoOptimWrapperConstructor:
    """What mmagic's ``MultiOptimWrapperConstructor`` does for a GAN: one OptimWrapper per
    sub-module named in the config (``generator=dict(...)``, ``discriminator=dict(...)``)."""

    def __init__(self, optim_wrapper_cfg: Dict[str, Any], paramwise_cfg: Any = None) -> None:
        self.cfg = optim_wrapper_cfg

    def __call__(self, model: nn.Module) -> OptimWrapperDict:
        model = getattr(model, "module", model)
        return OptimWrapperDict(**{name: build_optim_wrapper(getattr(model, name), dict(cfg))
                                   for name, cfg in self.cfg.items()})


class TwoOptimNet(BaseModel):
    """A GAN-shaped model: a generator holding the bias generator, a discriminator holding a bare
    ``temperature``; each has its own optimizer and ``train_step`` updates them one after the other.

    The generator's loss pushes its scale up (gradient ``-mean(w)``, as DriftNet's); the
    discriminator's pulls its temperature towards 2 (gradient ``0.2 * (t - 2)``). Neither loss
    reaches the other's parameters, as with a GAN's detached fake batch.
    """

    def __init__(self, order=("discriminator", "generator")) -> None:
        super().__init__()
        self.order = tuple(order)
        self.generator = nn.Module()
        self.generator.attention_bias_generator = AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0)
        self.generator.proj = nn.Linear(8, 8)
        self.discriminator = nn.Module()
        self.discriminator.proj = nn.Linear(8, 1)
        self.discriminator.temperature = nn.Parameter(torch.tensor(4.0))

    def forward(self, x: torch.Tensor, mode: str = "tensor") -> Any:
        return self.generator.proj(x)

    def loss(self, part: str, x: torch.Tensor) -> torch.Tensor:
        if part == "generator":
            weights = torch.sigmoid(self.generator.proj(x)).unsqueeze(-1).expand(-1, -1, 8)
            return -self.generator.attention_bias_generator(weights).float().mean()
        return 0.1 * (self.discriminator.temperature - 2.0) ** 2 + 0.01 * self.discriminator.proj(x).pow(2).mean()

    def train_step(self, data: Any, optim_wrapper: OptimWrapperDict) -> Dict[str, torch.Tensor]:
        (x,) = self.data_preprocessor(data, True)
        log_vars = {}
        for part in self.order:
            wrapper = optim_wrapper[part]
            with wrapper.optim_context(self):
                loss = self.loss(part, x)
            wrapper.update_params(loss)  # backward, step, zero_grad: the hook reads inside
            log_vars[f"loss_{part}"] = loss.detach()
        return log_vars


def runner_for(work_dir: str, model: nn.Module, name: str, hook: Dict[str, Any], optim_wrapper: Dict[str, Any],
               train_cfg: Dict[str, Any], sampler: Dict[str, Any], n: int = 64, log_interval: int = 5) -> Runner:
    return Runner(
        model=model, work_dir=work_dir, experiment_name=name,
        train_dataloader=dict(dataset=dataset(n), sampler=sampler, batch_size=4,
                              collate_fn=dict(type="default_collate")),
        optim_wrapper=optim_wrapper, train_cfg=train_cfg,
        default_hooks=dict(logger=dict(type="LoggerHook", interval=log_interval), checkpoint=None),
        custom_hooks=[dict(type="ScaleMonitorHook", **hook)],
        log_processor=dict(by_epoch=train_cfg.get("by_epoch", False)),
        visualizer=dict(type="Visualizer", vis_backends=[dict(type="LocalVisBackend")]),
        env_cfg=dict(dist_cfg=dict(backend="gloo")), default_scope=None)


def rows(log_dir: str, name: str) -> List[dict]:
    return [r for r in readback.history(log_dir) if r["name"] == name]


# ---- OptimWrapperDict ------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[("discriminator", "generator"), ("generator", "discriminator")],
                ids=["disc-first", "gen-first"])
def gan(request, tmp_path_factory):
    order = request.param
    alerts: List[Any] = []
    torch.manual_seed(0)  # the layers' initial weights: the same walk whatever ran before
    model = TwoOptimNet(order)
    wrapper = dict(constructor="TwoOptimWrapperConstructor",
                   generator=dict(optimizer=dict(type="SGD", lr=0.3)),
                   discriminator=dict(optimizer=dict(type="SGD", lr=0.5)))
    runner = runner_for(str(tmp_path_factory.mktemp("gan")), model, name=f"gan-{order[0]}",
                        hook=dict(interval=5, alert_callback=alerts.append, params={DISC_TEMP: (0.0, 5.0)}),
                        optim_wrapper=wrapper, train_cfg=dict(by_epoch=False, max_iters=30),
                        sampler=dict(type="InfiniteSampler", shuffle=False))
    runner.train()
    return dict(runner=runner, log_dir=runner.log_dir, alerts=alerts, order=order)


def test_optim_wrapper_dict_is_built_and_each_wrapper_steps_its_own_part(gan):
    runner = gan["runner"]
    assert isinstance(runner.optim_wrapper, OptimWrapperDict)
    assert sorted(runner.optim_wrapper.keys()) == ["discriminator", "generator"]
    for wrapper in runner.optim_wrapper.values():
        assert isinstance(wrapper, OptimWrapper)
        assert "step" not in vars(wrapper)  # every wrapper is itself again after training


def test_each_scale_is_read_once_per_check_step(gan):
    for name in (GEN_SCALE, DISC_TEMP):
        assert [r["step"] for r in rows(gan["log_dir"], name)] == [5, 10, 15, 20, 25, 30]
    # one history line per scale per check: two optimizer steps per iteration are still one step
    assert len(readback.history(gan["log_dir"])) == 12


#: the product bug these two tests show (callbacks/mmengine.py, ScaleMonitorHook._wrap)
def test_each_scale_is_read_with_the_gradient_its_own_optimizer_steps_with(gan):
    """The generator's scale and the discriminator's temperature each have a real gradient at
    the reading, whichever wrapper steps first in ``train_step``."""
    gen = rows(gan["log_dir"], GEN_SCALE)
    inside = [r for r in gen if r["min"] <= r["raw"] <= r["max"]]
    assert len(inside) >= 2, gen
    assert all(r["grad"] is not None and r["grad"] < -0.1 for r in inside), (gan["order"], inside)
    for r in rows(gan["log_dir"], DISC_TEMP):
        assert r["grad"] == pytest.approx(0.2 * (r["raw"] - 2.0), rel=1e-4, abs=1e-6), (gan["order"], r)


def test_the_generator_scale_saturates_and_alerts_as_under_one_optimizer(gan):
    # lr 0.3 with gradient about -0.5: the same walk as DriftNet's (near_upper at 15, pinned at 30)
    assert [(a.kind, a.name, a.step) for a in gan["alerts"]] == [("near_upper", GEN_SCALE, 15),
                                                                  ("pinned", GEN_SCALE, 30)]
    temperature = [r["raw"] for r in rows(gan["log_dir"], DISC_TEMP)]
    assert all(b < a for a, b in zip(temperature, temperature[1:]))  # the discriminator trains too


# ---- the epoch-based stop ----------------------------------------------------------------------


def test_epoch_based_loop_stops_at_the_end_of_the_epoch_the_alert_fired_in(tmp_path):
    """40 samples, batch 4: 10 iterations an epoch. lr 0.3 fires near_upper in epoch 2 (iteration 15
    with interval 5): mmengine's EpochBasedTrainLoop checks ``stop_training`` between epochs, so
    the run ends after iteration 20, the last of epoch 2, and reads at 20 on its way."""
    alerts: List[Any] = []
    runner = runner_for(str(tmp_path), DriftNet(), name="epoch-stop",
                        hook=dict(interval=5, on_saturation="stop", alert_callback=alerts.append, plot=False),
                        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.3)),
                        train_cfg=dict(by_epoch=True, max_epochs=6), n=40,
                        sampler=dict(type="DefaultSampler", shuffle=False))
    runner.train()
    assert isinstance(runner.train_loop, EpochBasedTrainLoop)
    assert [(a.kind, a.step) for a in alerts] == [("near_upper", 15)]
    assert runner.iter == 20 and runner.epoch == 2  # the exact last iteration: end of epoch 2, not 15, not 60
    assert [r["step"] for r in rows(runner.log_dir, GENERATOR)] == [5, 10, 15, 20]
    (log_file,) = glob.glob(os.path.join(runner.log_dir, "*.log"))
    with open(log_file, encoding="utf-8") as f:
        text = f.read()
    assert re.search(r"Epoch\(train\)\s+\[2\]\[10/10\]", text)
    assert not re.search(r"Epoch\(train\)\s+\[3\]", text)
    assert text.count("Scale near upper bound!") == 1
    hook = next(h for h in runner.hooks if isinstance(h, ScaleMonitorHook))
    assert hook.watcher.should_stop and hook.watcher.checks == 4
