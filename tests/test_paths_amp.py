"""A real GradScaler overflow through every door: no ``non_finite`` alert, the gradient recorded
as non-finite, and the history line of that check marked ``"skipped_step": true``.

The overflow is real: the bias generator gets half-precision weights (as under fp16 autocast),
so its bias and the gradient flowing back into it are half. With ``init_scale=2**30`` the
scaled gradient of each of the 256 bias entries is 2**22, past half's 65504: it is inf, the
scaler finds it at ``unscale_`` and skips the step, halving its scale. That repeats 7 times
(2**23 / 256 = 32768 fits), so optimizer steps 1..7 (counted from 1) are skipped, and the
raw scale stays at 2.5 until the 8th step is taken.

Doors on the CPU:
- plain loop: ``torch.amp.GradScaler("cpu")`` and ``ScaleWatcher(grad_scaler=scaler)``;
- Lightning 2.6.6: ``precision="16-mixed"`` on the CPU is silently turned into ``"bf16-mixed"``
  (no scaler; accelerator_connector says so in an info line), so the CPU path is
  ``plugins=[MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", ...))]``: real
  fp16 autocast and a real CPU GradScaler, Lightning's own plugin;
- mmengine 0.10.7: ``AmpOptimWrapper`` asserts CUDA (or NPU/MLU/MUSA) in its constructor. The CPU
  test lets that one assert pass and gives it a CPU GradScaler (everything else, its backward,
  unscale, step, update and autocast, is mmengine's own code); the unmodified wrapper runs in the
  CUDA test;
- HF Transformers 5: ``fp16=True`` with ``use_cpu=True`` trains without a GradScaler (accelerate
  makes one only off the CPU), so there is no scaler to skip a step on the CPU: CUDA only.
"""
from __future__ import annotations

import importlib
import json
import math
import os
from typing import Any, Dict, List
from unittest import mock

import pytest
import torch
from torch import nn

from models import LIGHTNING_PACKAGES, loader
from scalewatch.callbacks import ScaleMonitor, ScaleWatcher
from scalewatch.monitor import HISTORY_FILENAME, AttentionBiasGenerator

GEN = "head.attention_bias_generator"
INIT_SCALE = 2.0 ** 30
#: optimizer steps the scaler skips (overflow while 2**(30-k) / 256 > 65504)
OVERFLOWS = 7
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the door's GradScaler exists only there")


def overflow_loss(gen: nn.Module, proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """DriftModel's loss with half-precision weights into the generator (its bias comes back half)."""
    weights = torch.sigmoid(proj(x)).detach().half().unsqueeze(-1).expand(-1, -1, 8)  # [4, 8, 8]
    return -gen(weights).float().mean() + 0.01 * proj.weight.float().pow(2).sum()


def lines(log_dir: str) -> List[Dict[str, Any]]:
    """The history's lines as written (json reads -Infinity / NaN back as floats)."""
    with open(os.path.join(log_dir, HISTORY_FILENAME), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def assert_skips_recorded(rows: List[Dict[str, Any]], skipped: List[int], alerts: List[Any]) -> None:
    """Checks on skipped steps: grad non-finite, ``skipped_step: true``, no alert; the others: neither."""
    assert [r["step"] for r in rows if r.get("skipped_step")] == skipped, rows
    for r in rows:
        if r["step"] in skipped:
            assert r["skipped_step"] is True and not math.isfinite(r["grad"]), r
        else:
            assert "skipped_step" not in r and math.isfinite(r["grad"]), r
        assert "non_finite" not in r["alerts"], r
    assert not [a for a in alerts if a.kind == "non_finite"], alerts
    # the scaler skipped for real: the raw scale did not move until the first step it took
    first_taken = [r for r in rows if r["step"] > skipped[-1]]
    assert all(r["raw"] == 2.5 for r in rows if r["step"] <= first_taken[0]["step"])
    assert first_taken[-1]["raw"] != 2.5


class Drift(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Module()
        self.head.attention_bias_generator = AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0)
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, mode: str = "loss") -> Any:
        return overflow_loss(self.head.attention_bias_generator, self.proj, x)


# ---- plain loop -------------------------------------------------------------------------------------


def plain_loop(log_dir, scaler=None, loss_multiplier=1.0, steps=12, every_n_steps=2):
    torch.manual_seed(0)
    model = Drift()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [x for (x,) in loader()]
    alerts, taken = [], []
    with ScaleWatcher(model, log_dir=log_dir, every_n_steps=every_n_steps, grad_scaler=scaler, alert_callback=alerts.append,
                      plot=False) as watcher:
        for step in range(steps):
            loss = model(batches[step]) * loss_multiplier
            if scaler is None:
                loss.backward()
                watcher.step(step)
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                watcher.step(step)
                before = scaler.get_scale()
                scaler.step(opt)
                scaler.update()
                taken.append(scaler.get_scale() >= before)  # an overflow halves the scale
            opt.zero_grad()
    return dict(alerts=alerts, taken=taken)


def test_plain_loop_overflow_is_a_skipped_step_not_an_alert(tmp_path, capsys):
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    run = plain_loop(tmp_path, scaler=scaler)
    assert run["taken"] == [False] * OVERFLOWS + [True] * (12 - OVERFLOWS)  # the scaler skipped steps 0..6
    assert scaler.get_scale() == INIT_SCALE / 2 ** OVERFLOWS
    rows = lines(str(tmp_path))
    assert [r["step"] for r in rows] == [1, 3, 5, 7, 9, 11]
    assert_skips_recorded(rows, skipped=[1, 3, 5], alerts=run["alerts"])
    # the views re-judge the record as the engine did: the skipped checks are no non-finite readings
    series = dashboard_series(str(tmp_path))
    assert series.skipped == [0, 1, 2] and non_finite_readings(series) == 0
    (scale,) = report_json(str(tmp_path), capsys)["scales"]
    assert scale["alerts"] == []


def dashboard_series(run_dir: str):
    """The dashboards' series of the one scale, gradients read (as the plot reads them)."""
    from scalewatch.dashboards.series import collect_series
    from scalewatch.monitor import iter_history

    (series,) = collect_series(iter_history(os.path.join(run_dir, HISTORY_FILENAME))).values()
    return series


def non_finite_readings(series) -> int:
    from scalewatch.dashboards.report import non_finite_readings as count

    return count(series)


def report_json(run_dir: str, capsys) -> Dict[str, Any]:
    from scalewatch.dashboards.cli import main

    capsys.readouterr()
    assert main(["report", run_dir, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plain_loop_without_a_scaler_the_same_overflow_is_non_finite(tmp_path, capsys):
    """The contrast: a huge loss multiplier and no scaler to skip the step: that is divergence."""
    run = plain_loop(tmp_path, loss_multiplier=INIT_SCALE, steps=1, every_n_steps=1)
    assert [(a.kind, a.step) for a in run["alerts"]] == [("non_finite", 0)]
    (row,) = lines(str(tmp_path))
    assert row["alerts"] == ["non_finite"] and "skipped_step" not in row and not math.isfinite(row["grad"])
    assert non_finite_readings(dashboard_series(str(tmp_path))) == 1
    (scale,) = report_json(str(tmp_path), capsys)["scales"]
    assert [a["kind"] for a in scale["alerts"]] == ["non_finite"]


# ---- Lightning -------------------------------------------------------------------------------------


def lightning_module(package: str) -> type:
    base = importlib.import_module(package).LightningModule

    class AmpDrift(base):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Module()
            self.head.attention_bias_generator = AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0)
            self.proj = nn.Linear(8, 8)

        def training_step(self, batch, batch_idx):
            (x,) = batch
            return overflow_loss(self.head.attention_bias_generator, self.proj, x)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return loader()

    return AmpDrift


@pytest.mark.filterwarnings("ignore:.*AMP with fp16 is not supported on CPU")
@pytest.mark.parametrize("package", LIGHTNING_PACKAGES)
def test_lightning_precision_16_mixed_on_cpu_has_no_scaler(package):
    """Why the CPU test below passes the plugin itself: Lightning turns 16-mixed into bf16-mixed on the CPU."""
    pl = importlib.import_module(package)
    trainer = pl.Trainer(accelerator="cpu", precision="16-mixed", logger=False, enable_checkpointing=False)
    assert trainer.precision_plugin.precision == "bf16-mixed" and trainer.precision_plugin.scaler is None


@pytest.mark.parametrize("package", LIGHTNING_PACKAGES)
def test_lightning_fp16_plugin_with_a_cpu_grad_scaler(tmp_path, package):
    pl = importlib.import_module(package)
    MixedPrecision = importlib.import_module(f"{package}.plugins").MixedPrecision
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    alerts: List[Any] = []
    torch.manual_seed(0)
    trainer = pl.Trainer(accelerator="cpu", max_steps=12, default_root_dir=str(tmp_path), logger=False,
                         plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
                         callbacks=[ScaleMonitor(every_n_steps=2, alert_callback=alerts.append, plot=False)],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(lightning_module(package)())
    assert trainer.precision_plugin.scaler is scaler and scaler.get_scale() == INIT_SCALE / 2 ** OVERFLOWS
    rows = lines(str(tmp_path))
    assert [r["step"] for r in rows] == [1, 3, 5, 7, 9, 11]  # global_step counts skipped steps too
    assert_skips_recorded(rows, skipped=[1, 3, 5], alerts=alerts)


@CUDA
@pytest.mark.parametrize("package", LIGHTNING_PACKAGES)
def test_lightning_precision_16_mixed_on_cuda(tmp_path, package):
    pl = importlib.import_module(package)
    alerts: List[Any] = []
    torch.manual_seed(0)
    trainer = pl.Trainer(accelerator="cuda", devices=1, precision="16-mixed", max_steps=12,
                         default_root_dir=str(tmp_path), logger=False,
                         callbacks=[ScaleMonitor(every_n_steps=2, alert_callback=alerts.append, plot=False)],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.precision_plugin.scaler = torch.amp.GradScaler("cuda", init_scale=INIT_SCALE)
    trainer.fit(lightning_module(package)())
    assert trainer.precision_plugin.scaler.get_scale() == INIT_SCALE / 2 ** OVERFLOWS
    assert_skips_recorded(lines(str(tmp_path)), skipped=[1, 3, 5], alerts=alerts)


# ---- HF Transformers --------------------------------------------------------------------------------


def test_hf_fp16_on_cpu_has_no_scaler(tmp_path):
    """Why the HF test needs CUDA: with fp16=True on the CPU accelerate makes no GradScaler."""
    pytest.importorskip("transformers")
    from hf_models import hf_trainer

    trainer = hf_trainer(tmp_path, [], report_to=[], fp16=True, max_steps=1)
    assert trainer.accelerator.mixed_precision == "fp16" and trainer.accelerator.scaler is None


@CUDA
def test_hf_fp16_on_cuda(tmp_path):
    pytest.importorskip("transformers")
    from hf_models import DriftConfig, DriftModel, Points
    from transformers import Trainer, TrainingArguments

    from scalewatch.callbacks.hf import ScaleMonitorCallback

    class AmpDrift(DriftModel):
        def forward(self, x, **kwargs):
            return {"loss": overflow_loss(self.head.attention_bias_generator, self.proj, x)}

    alerts: List[Any] = []
    torch.manual_seed(0)
    args = TrainingArguments(output_dir=str(tmp_path), fp16=True, report_to=[], max_steps=12, logging_steps=2,
                             per_device_train_batch_size=4, learning_rate=0.1, optim="sgd",
                             lr_scheduler_type="constant", save_strategy="no", disable_tqdm=True, seed=0)
    trainer = Trainer(model=AmpDrift(DriftConfig()), args=args, train_dataset=Points(),
                      callbacks=[ScaleMonitorCallback(every_n_steps=2, alert_callback=alerts.append, plot=False)])
    trainer.accelerator.scaler = torch.amp.GradScaler("cuda", init_scale=INIT_SCALE)  # prepare() hands it on
    trainer.train()
    assert trainer.accelerator.scaler.get_scale() == INIT_SCALE / 2 ** OVERFLOWS
    rows = lines(str(tmp_path))
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12]  # HF counts optimizer steps from 1
    assert_skips_recorded(rows, skipped=[2, 4, 6], alerts=alerts)


# ---- mmengine ---------------------------------------------------------------------------------------


#: mmengine's loss_scale: a float is a static scale (never halved); a dict is a dynamic GradScaler's arguments
DYNAMIC = dict(init_scale=INIT_SCALE)


def mmengine_amp_run(tmp_path, wrapper: Dict[str, Any], name: str):
    pytest.importorskip("mmengine")
    from mmengine.model import BaseModel

    from mmengine_models import make_runner

    class AmpDriftNet(BaseModel):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Module()
            self.head.attention_bias_generator = AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0)
            self.proj = nn.Linear(8, 8)

        def forward(self, x, mode="loss"):
            return {"loss": overflow_loss(self.head.attention_bias_generator, self.proj, x)}

    alerts: List[Any] = []
    torch.manual_seed(0)
    runner = make_runner(str(tmp_path), model=AmpDriftNet(), max_iters=12, log_interval=2, name=name,
                         hook=dict(interval=2, alert_callback=alerts.append, plot=False), optim_wrapper=wrapper)
    runner.train()
    assert runner.optim_wrapper.loss_scaler.get_scale() == INIT_SCALE / 2 ** OVERFLOWS
    rows = lines(runner.log_dir)
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10, 12]  # mmengine counts iterations from 1
    assert_skips_recorded(rows, skipped=[2, 4, 6], alerts=alerts)


@pytest.mark.filterwarnings("ignore:.*GradScaler")  # the CUDA scaler AmpOptimWrapper builds first, then replaced
def test_mmengine_amp_optim_wrapper_with_a_cpu_grad_scaler(tmp_path):
    pytest.importorskip("mmengine")
    from mmengine.optim import AmpOptimWrapper
    from mmengine.optim.optimizer import amp_optimizer_wrapper
    from mmengine.registry import OPTIM_WRAPPERS

    @OPTIM_WRAPPERS.register_module(name="CPUAmpOptimWrapperForPaths", force=True)
    class CPUAmpOptimWrapper(AmpOptimWrapper):
        """AmpOptimWrapper past its CUDA assert, with a CPU GradScaler at the same init_scale."""

        def __init__(self, loss_scale: Dict[str, Any], **kwargs: Any) -> None:
            with mock.patch.object(amp_optimizer_wrapper, "is_cuda_available", return_value=True):
                super().__init__(loss_scale=loss_scale, **kwargs)
            self.loss_scaler = torch.amp.GradScaler("cpu", **loss_scale)

    mmengine_amp_run(tmp_path, dict(type="CPUAmpOptimWrapperForPaths", loss_scale=DYNAMIC,
                                    optimizer=dict(type="SGD", lr=0.1)), name="amp-cpu")


@CUDA
def test_mmengine_amp_optim_wrapper_on_cuda(tmp_path):
    mmengine_amp_run(tmp_path, dict(type="AmpOptimWrapper", loss_scale=DYNAMIC, dtype="float16",
                                    optimizer=dict(type="SGD", lr=0.1)), name="amp-cuda")
