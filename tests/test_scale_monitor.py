"""ScaleMonitor on real Trainers with real loggers, read back from disk.

The three-logger run is made under both Lightning packages (``pytorch_lightning`` and
``lightning.pytorch``): every test that reads it runs for each.
"""
import glob
import importlib
import json
import logging
import math
import os

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from pytorch_lightning.plugins import MixedPrecision
from pytorch_lightning.utilities.exceptions import MisconfigurationException

import readback
from models import LIGHTNING_PACKAGES, DriftModel, LogitScaleModel, modules_for
from scalewatch.callbacks import PLOT_FILENAME, ScaleMonitor, metric_key
from scalewatch.monitor import HISTORY_FILENAME

GEN = "head.attention_bias_generator"
FIELDS = ("scale", "raw", "grad", "min", "max")


def trainer(root, **kw):
    defaults = dict(default_root_dir=str(root), enable_model_summary=False, enable_progress_bar=False,
                    enable_checkpointing=False, logger=False, max_steps=30, log_every_n_steps=5)
    defaults.update(kw)
    return pl.Trainer(**defaults)


@pytest.fixture(scope="module", params=LIGHTNING_PACKAGES)
def three_logger_run(tmp_path_factory, request):
    package = request.param
    lightning = importlib.import_module(package)
    loggers = importlib.import_module(f"{package}.loggers")
    root = tmp_path_factory.mktemp("three")
    alerts = []
    monitor = ScaleMonitor(alert_callback=alerts.append)  # every_n_steps defaults to log_every_n_steps
    assert isinstance(monitor, lightning.Callback)
    tb = loggers.TensorBoardLogger(str(root), name="tb")
    csv = loggers.CSVLogger(str(root), name="csv")
    wb = loggers.WandbLogger(save_dir=str(root), offline=True, project="scalewatch-test")
    t = lightning.Trainer(default_root_dir=str(root), enable_model_summary=False, enable_progress_bar=False,
                          enable_checkpointing=False, max_steps=60, log_every_n_steps=5, logger=[tb, csv, wb],
                          callbacks=[monitor])
    assert type(t).__module__.startswith(package)
    t.fit(modules_for(package)[0](lr=0.5))
    wb.experiment.finish()  # flush the offline run's .wandb file before reading it back
    wandb_dir = glob.glob(os.path.join(root, "wandb", "offline-run-*"))[0]
    return dict(trainer=t, monitor=monitor, tb=tb.log_dir, csv=csv.log_dir, wandb=wandb_dir, alerts=alerts)


def test_every_logger_and_the_history_hold_the_same_readings(three_logger_run):
    run = three_logger_run
    hist = readback.history(run["tb"])  # trainer.log_dir is the first logger's
    assert run["monitor"].history_path == os.path.join(run["tb"], HISTORY_FILENAME)
    steps = [r["step"] for r in hist]
    assert steps == list(range(4, 60, 5))  # N-1, 2N-1, ... with N = log_every_n_steps
    for field in FIELDS:
        key = metric_key(GEN, field)
        expected = [(r["step"], r[field]) for r in hist]
        for source in (readback.tensorboard_scalars(run["tb"], key), readback.csv_series(run["csv"], key),
                       readback.wandb_history(run["wandb"], key)):
            assert [s for s, _ in source] == steps, (field, source)
            assert all(readback.same(a, b) for (_, a), (_, b) in zip(source, expected)), (field, source, expected)


def test_readings_sit_on_the_loss_curve_steps(three_logger_run):
    loss_steps = [s for s, _ in readback.tensorboard_scalars(three_logger_run["tb"], "loss")]
    scale_steps = [s for s, _ in readback.tensorboard_scalars(three_logger_run["tb"], metric_key(GEN, "scale"))]
    assert scale_steps == loss_steps


def test_effective_scale_is_the_clamped_raw_value(three_logger_run):
    hist = readback.history(three_logger_run["tb"])
    assert any(r["raw"] > r["max"] for r in hist)  # the run drove the raw value past the bound
    for r in hist:
        assert r["scale"] == pytest.approx(min(max(r["raw"], r["min"]), r["max"]), rel=1e-6)
        assert (r["min"], r["max"], r["bound"]) == (0.5, 5.0, "hard")
        assert r["clamp_fraction"] is not None and 0.0 <= r["clamp_fraction"] <= 1.0


def test_near_upper_fires_exactly_once_and_pinned_after_the_raw_value_passed_max(three_logger_run):
    run = three_logger_run
    kinds = [a.kind for a in run["alerts"]]
    assert kinds.count("near_upper") == 1
    assert kinds.count("pinned") == 1
    hist = readback.history(run["tb"])
    upper = next(r for r in hist if "near_upper" in r["alerts"])
    assert upper["scale"] > 0.9 * 5.0
    assert all(r["scale"] <= 4.5 for r in hist if r["step"] < upper["step"])
    pinned = next(r for r in hist if "pinned" in r["alerts"])
    # pinned fires at the patience-th consecutive check with the raw value at/over max and zero gradient
    over = [r for r in hist if r["raw"] >= r["max"] and r["grad"] == 0.0]
    assert pinned["step"] == over[2]["step"]
    # W&B got both alerts, in order
    wb_alerts = [r["alert"]["title"] for r in readback.wandb_records(run["wandb"]) if r["type"] == "alert"]
    assert wb_alerts == [f"scalewatch near_upper: {GEN}", f"scalewatch pinned: {GEN}"]


def test_the_plot_and_custom_scalars_layout_are_written(three_logger_run):
    run = three_logger_run
    png = os.path.join(run["tb"], PLOT_FILENAME)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    tags = readback.tensorboard_tags(run["tb"])
    assert "scalewatch/plot" in tags["images"]
    # the CUSTOM SCALARS tab: one Margin chart of scale inside [min, max]
    chart = readback.tensorboard_layout(run["tb"])["scalewatch"][GEN]
    assert chart == [metric_key(GEN, "scale"), metric_key(GEN, "min"), metric_key(GEN, "max")]


def test_gradient_accumulation_gives_one_reading_per_optimizer_step(tmp_path):
    t = trainer(tmp_path, max_steps=6, accumulate_grad_batches=4, callbacks=[ScaleMonitor(every_n_steps=1)])
    t.fit(DriftModel(lr=0.01))
    hist = readback.history(str(tmp_path))
    assert t.global_step == 6
    assert [r["step"] for r in hist] == list(range(6))


def _grads(tmp_path, **kw):
    pl.seed_everything(7)
    monitor = ScaleMonitor(every_n_steps=1)
    t = trainer(tmp_path, max_steps=5, callbacks=[monitor], **kw)
    t.fit(DriftModel(lr=0.01))
    return [r["grad"] for r in readback.history(str(tmp_path))]


def test_16_mixed_precision_records_unscaled_gradients(tmp_path):
    # A real GradScaler (CPU float16 autocast): gradients are scaled by 65536 during backward.
    fp32 = _grads(tmp_path / "fp32")
    fp16 = _grads(tmp_path / "fp16", plugins=[MixedPrecision("16-mixed", "cpu")])
    assert len(fp16) == len(fp32) == 5
    for a, b in zip(fp16, fp32):
        assert a == pytest.approx(b, rel=2e-3)  # unscaled: equal up to half-precision rounding


def test_bare_parameter_clamped_in_place_is_watched(tmp_path):
    alerts = []
    monitor = ScaleMonitor(every_n_steps=2, params={"logit_scale": (0.0, 4.6052)}, alert_callback=alerts.append)
    csv = CSVLogger(str(tmp_path), name="csv")
    t = trainer(tmp_path, max_steps=40, logger=[csv], callbacks=[monitor])
    t.fit(LogitScaleModel())
    hist = readback.history(csv.log_dir)
    assert {r["name"] for r in hist} == {"logit_scale"}
    assert hist[-1]["raw"] == pytest.approx(4.6052)  # clamped in place after every step
    assert hist[-1]["grad"] <= 1e-12  # nothing brings it back: pinned by the in-place clamp
    assert [a.kind for a in alerts].count("pinned") == 1
    assert readback.csv_series(csv.log_dir, "scalewatch/logit_scale/raw")[-1][1] == pytest.approx(4.6052)


def test_no_logger_still_writes_history_and_plot(tmp_path):
    t = trainer(tmp_path, max_steps=10, callbacks=[ScaleMonitor(every_n_steps=2)])
    t.fit(DriftModel())
    assert len(readback.history(str(tmp_path))) == 5
    assert os.path.exists(tmp_path / PLOT_FILENAME)


def test_unknown_param_is_a_clear_error_at_fit_start(tmp_path):
    t = trainer(tmp_path, callbacks=[ScaleMonitor(params={"logit_scal": (0.0, 4.6)})])
    with pytest.raises(MisconfigurationException, match=r"'logit_scal'.*not a parameter"):
        t.fit(LogitScaleModel())
    assert t.global_step == 0


def test_stop_on_saturation_ends_training_at_the_alert_step(tmp_path):
    alerts = []
    t = trainer(tmp_path, max_steps=200, callbacks=[ScaleMonitor(every_n_steps=1, on_saturation="stop",
                                                                  alert_callback=alerts.append)])
    t.fit(DriftModel(lr=0.5))
    assert len(alerts) == 1 and alerts[0].kind == "near_upper"
    assert t.global_step == alerts[0].step + 1  # the step that raised it completed, no further one
    assert readback.history(str(tmp_path))[-1]["step"] == alerts[0].step


def test_alerts_go_to_python_logging(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="scalewatch"):
        trainer(tmp_path, max_steps=15, callbacks=[ScaleMonitor(every_n_steps=1)]).fit(DriftModel(lr=0.5))
    upper = [r for r in caplog.records if "near upper bound" in r.getMessage()]
    assert len(upper) == 1 and GEN in upper[0].getMessage()


def test_near_lower_fires_when_the_scale_sinks(tmp_path):
    alerts = []
    trainer(tmp_path, max_steps=30, callbacks=[ScaleMonitor(every_n_steps=1, alert_callback=alerts.append)]).fit(
        DriftModel(push=-1.0, lr=0.5))
    kinds = [a.kind for a in alerts]
    assert kinds.count("near_lower") == 1 and "near_upper" not in kinds


def test_progress_bar_shows_the_scale(tmp_path):
    t = trainer(tmp_path, max_steps=10, callbacks=[ScaleMonitor(every_n_steps=5)])
    t.fit(DriftModel(lr=0.01))
    assert "scale" in t.progress_bar_metrics
    off = trainer(tmp_path / "off", max_steps=10, callbacks=[ScaleMonitor(every_n_steps=5, progress_bar=False)])
    off.fit(DriftModel(lr=0.01))
    assert "scale" not in off.progress_bar_metrics


def test_soft_bound_scale_is_read_through_its_own_map(tmp_path):
    trainer(tmp_path, max_steps=10, callbacks=[ScaleMonitor(every_n_steps=1)]).fit(DriftModel(bound="soft", lr=0.5))
    hist = readback.history(str(tmp_path))
    for r in hist:
        assert r["bound"] == "soft"
        assert r["scale"] == pytest.approx(0.5 + 4.5 / (1 + math.exp(-r["raw"])), rel=1e-5)
        assert r["grad"] != 0.0


def test_two_monitors_keep_separate_state(tmp_path):
    a, b = ScaleMonitor(every_n_steps=2), ScaleMonitor(every_n_steps=3, params={"proj.scale*": (-1, 1)},
                                                        state_key_suffix="b")
    assert a.state_key != b.state_key
    ck = ModelCheckpoint(dirpath=str(tmp_path / "ck"), save_last=True)
    t = trainer(tmp_path, max_steps=6, callbacks=[a, b, ck], enable_checkpointing=True)
    with pytest.raises(MisconfigurationException, match=r"proj\.scale\*"):  # a pattern that matches nothing
        t.fit(DriftModel())
    b2 = ScaleMonitor(every_n_steps=3, state_key_suffix="b")
    t = trainer(tmp_path, max_steps=6, callbacks=[ScaleMonitor(every_n_steps=2), b2, ck], enable_checkpointing=True)
    t.fit(DriftModel())
    state = torch.load(str(tmp_path / "ck" / "last.ckpt"), weights_only=False)["callbacks"]
    mine = [v for k, v in state.items() if k.startswith("ScaleMonitor")]
    assert len(mine) == 2 and sorted(s["last_step"] for s in mine) == [5, 5]
    assert sorted(s["checks"] for s in mine) == [2, 3]


def test_wandb_gets_step_metrics_the_plot_and_a_bounds_chart(three_logger_run):
    records = readback.wandb_records(three_logger_run["wandb"])
    metrics = [r["metric"] for r in records if r["type"] == "metric"]
    assert {"glob_name": f"scalewatch/{GEN}/*", "step_metric": "trainer/global_step"}.items() <= next(
        m for m in metrics if m.get("glob_name") == f"scalewatch/{GEN}/*").items()
    final = [r["history"]["item"] for r in records if r["type"] == "history"
             and "scalewatch/plot._type" in r["history"]["item"]]
    assert len(final) == 1
    item = final[0]
    assert item["scalewatch/plot._type"] == "image-file" and item["trainer/global_step"] == 60
    assert any(k.startswith(f"scalewatch_charts/{GEN}") for k in item)
    png = os.path.join(three_logger_run["wandb"], "files", item["scalewatch/plot.path"])
    with open(png, "rb") as f:
        assert f.read(4) == b"\x89PNG"


def test_clamp_fraction_is_computed_on_check_steps_only(tmp_path):
    class Spy(pl.Callback):
        def __init__(self):
            self.seen = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.seen.append(id(pl_module.head.attention_bias_generator.clamp_fraction))

    spy = Spy()
    model = DriftModel(lr=2.0, bias_scale=3.5, min_scale=1.0, max_scale=8.0)  # the aggressive preset's bounds
    trainer(tmp_path, max_steps=20, callbacks=[ScaleMonitor(every_n_steps=5), spy]).fit(model)
    changed = [i for i in range(1, len(spy.seen)) if spy.seen[i] != spy.seen[i - 1]]
    assert changed == [4, 9, 14, 19]  # a new tensor only in the forward of a check step
    hist = readback.history(str(tmp_path))
    # above a scale of 5 the final +-5 clamp cuts the largest bias entries, and that is recorded
    assert hist[-1]["scale"] > 5.0 and hist[-1]["clamp_fraction"] > 0.0
    assert model.head.attention_bias_generator.track_clamp_fraction is False  # back to the default after fit


def test_a_fresh_fit_into_a_used_directory_keeps_the_earlier_history_aside(tmp_path):
    trainer(tmp_path, max_steps=4, callbacks=[ScaleMonitor(every_n_steps=1)]).fit(DriftModel())
    trainer(tmp_path, max_steps=6, callbacks=[ScaleMonitor(every_n_steps=2)]).fit(DriftModel())
    assert [r["step"] for r in readback.history(str(tmp_path))] == [1, 3, 5]
    earlier = [json.loads(line)["step"] for line in open(tmp_path / "scalewatch_history.previous-1.jsonl")]
    assert earlier == [0, 1, 2, 3]
