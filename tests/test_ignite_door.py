"""The PyTorch Ignite door: ScaleMonitorHandler on a real create_supervised_trainer.

Readings at Ignite's iterations N, 2N, ... with the gradient before the step (non-zero before the
scale pins), the pinned alert, on_saturation="stop" through engine.terminate(), an Ignite
Checkpoint that resumes one record with no repeated step, gradient accumulation, an AMP
GradScaler, Ignite's TensorboardLogger getting the keys, and the bad inputs.
"""
from __future__ import annotations

import json
import math
from typing import Any, Dict, List

import pytest
import torch
from torch import nn

pytest.importorskip("ignite")
from ignite.engine import Events, create_supervised_trainer  # noqa: E402
from ignite.handlers import Checkpoint, DiskSaver  # noqa: E402

from scalewatch.callbacks import ScaleMonitorHandler  # noqa: E402
from scalewatch.monitor import AttentionBiasGenerator, HISTORY_FILENAME  # noqa: E402

GEN = "gen"


class BiasNet(nn.Module):
    """x -> a bias from an AttentionBiasGenerator; the loss (the target is large) pushes its scale up to max."""

    def __init__(self) -> None:
        super().__init__()
        self.gen = AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0)
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.proj(x)).unsqueeze(-1).expand(-1, -1, 4)
        return self.gen(weights).float().mean(dim=(1, 2))


def setup(lr: float = 0.05, **trainer_kwargs: Any):
    torch.manual_seed(0)
    model = BiasNet()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    trainer = create_supervised_trainer(model, opt, lambda y_pred, y: ((y_pred - y) ** 2).mean(), **trainer_kwargs)
    data = [(torch.randn(2, 4), torch.full((2,), 10.0)) for _ in range(40)]
    return model, opt, trainer, data


def history(path: Any) -> List[Dict[str, Any]]:
    with open(path / HISTORY_FILENAME, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_readings_at_ignite_iterations_before_the_step_then_pinned(tmp_path: Any) -> None:
    model, opt, trainer, data = setup()
    grads_before_step: Dict[int, float] = {}

    @trainer.on(Events.ITERATION_COMPLETED)
    def keep(engine: Any) -> None:  # the gradient the step used (SGD leaves it there until the next zero_grad)
        grads_before_step[engine.state.iteration] = float(model.gen.bias_scale.grad)

    alerts: List[Any] = []
    ScaleMonitorHandler(model, opt, log_dir=str(tmp_path), every_n_steps=4, plot=False, notify=[],
                        alert_callback=alerts.append).attach(trainer)
    trainer.run(data, max_epochs=1)
    records = history(tmp_path)
    assert [r["step"] for r in records] == list(range(4, 41, 4))  # Ignite's iteration: 1-based, N, 2N, ...
    for r in records:
        assert r["grad"] == pytest.approx(grads_before_step[r["step"]], rel=1e-6, abs=1e-12)
    assert records[0]["grad"] < 0 and records[0]["scale"] < 5.0  # alive before it pins
    assert records[-1]["scale"] == pytest.approx(5.0) and records[-1]["grad"] == 0.0
    kinds = [a.kind for a in alerts]
    assert "pinned" in kinds and "near_upper" in kinds
    assert next(r for r in records if "pinned" in r["alerts"])["step"] % 4 == 0


def test_on_saturation_stop_terminates_the_engine(tmp_path: Any) -> None:
    model, opt, trainer, data = setup()
    ScaleMonitorHandler(model, opt, log_dir=str(tmp_path), every_n_steps=4, on_saturation="stop", plot=False,
                        notify=[]).attach(trainer)
    trainer.run(data, max_epochs=1)
    first_alert = next(r for r in history(tmp_path) if r["alerts"])
    assert trainer.state.iteration == first_alert["step"] < 40
    assert history(tmp_path)[-1]["step"] == first_alert["step"]


def test_checkpoint_resumes_one_record_without_repeated_steps(tmp_path: Any) -> None:
    run = tmp_path / "run"
    model, opt, trainer, data = setup(lr=0.05)
    handler = ScaleMonitorHandler(model, opt, log_dir=str(run), every_n_steps=4, plot=False, notify=[]).attach(trainer)
    to_save = {"model": model, "optimizer": opt, "trainer": trainer, "scalewatch": handler}
    saver = Checkpoint(to_save, DiskSaver(str(tmp_path / "ckpt"), require_empty=False), n_saved=None)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=10), saver)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=22), lambda e: e.terminate())
    trainer.run(data, max_epochs=2)
    assert [r["step"] for r in history(run)] == [4, 8, 12, 16, 20]  # terminated at 22: after the checkpoint at 20

    model2, opt2, trainer2, _ = setup(lr=0.05)
    handler2 = ScaleMonitorHandler(model2, opt2, log_dir=str(run), every_n_steps=4, plot=False, notify=[])
    handler2.attach(trainer2)
    objects = {"model": model2, "optimizer": opt2, "trainer": trainer2, "scalewatch": handler2}
    Checkpoint.load_objects(objects, torch.load(tmp_path / "ckpt" / "checkpoint_20.pt", weights_only=False))
    assert trainer2.state.iteration == 20
    trainer2.run(data, max_epochs=2)
    steps = [r["step"] for r in history(run)]
    assert steps == list(range(4, 81, 4))  # one record, no repeated step


def test_gradient_accumulation_reads_the_accumulated_gradient(tmp_path: Any) -> None:
    model, opt, trainer, data = setup(lr=0.01, gradient_accumulation_steps=2)
    seen: Dict[int, float] = {}

    @trainer.on(Events.ITERATION_COMPLETED)
    def keep(engine: Any) -> None:
        seen[engine.state.iteration] = float(model.gen.bias_scale.grad)

    ScaleMonitorHandler(model, opt, log_dir=str(tmp_path), every_n_steps=4, plot=False, notify=[]).attach(trainer)
    trainer.run(data, max_epochs=1)
    records = history(tmp_path)
    assert [r["step"] for r in records] == list(range(4, 41, 4))
    for r in records:  # the sum of both micro-batches' gradients, as the optimizer stepped with it
        assert r["grad"] == pytest.approx(seen[r["step"]], rel=1e-6)
        assert r["grad"] != pytest.approx(0.0)


def test_amp_grad_scaler_reads_unscaled(tmp_path: Any) -> None:
    model, opt, trainer, data = setup(lr=0.01, amp_mode="amp", scaler=torch.amp.GradScaler("cpu", init_scale=1024.0),
                                      device="cpu")
    seen: Dict[int, float] = {}

    @trainer.on(Events.ITERATION_COMPLETED)
    def keep(engine: Any) -> None:
        seen[engine.state.iteration] = float(model.gen.bias_scale.grad)  # unscaled by scaler.step

    ScaleMonitorHandler(model, opt, log_dir=str(tmp_path), every_n_steps=5, plot=False, notify=[],
                        grad_scaler=None).attach(trainer)
    trainer.run(data[:20], max_epochs=1)
    records = history(tmp_path)
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    for r in records:
        assert math.isfinite(r["grad"]) and abs(r["grad"]) < 100  # not times 1024
        assert r["grad"] == pytest.approx(seen[r["step"]], rel=1e-5)


def test_ignite_tensorboard_logger_gets_the_keys_at_the_same_steps(tmp_path: Any) -> None:
    from ignite.handlers.tensorboard_logger import TensorboardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, opt, trainer, data = setup()
    tb = TensorboardLogger(log_dir=str(tmp_path / "tb"))
    ScaleMonitorHandler(model, opt, log_dir=str(tmp_path), every_n_steps=8, plot=False, notify=[],
                        loggers=[tb]).attach(trainer)
    trainer.run(data, max_epochs=1)
    tb.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars(f"scalewatch/{GEN}/scale")] == [8, 16, 24, 32, 40]


def test_bad_inputs_name_what_is_wrong() -> None:
    model, opt, trainer, data = setup()
    other = torch.optim.SGD(model.proj.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"does not hold the watched scale\(s\) gen"):
        ScaleMonitorHandler(model, other)
    with pytest.raises(ValueError, match="every_n_steps"):
        ScaleMonitorHandler(model, opt, every_n_steps=0)


def test_without_ignite_the_import_names_the_extra(monkeypatch: Any) -> None:
    from front_doors import import_without

    with pytest.raises(ImportError, match=r"scalewatch\[ignite\]"):
        import_without(monkeypatch, "ignite", "scalewatch.callbacks.ignite_handler")
