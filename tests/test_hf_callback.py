"""ScaleMonitorCallback on a real HF Transformers Trainer (CPU), read back from disk."""
import glob
import json
import os

import pytest
import torch

import transformers  # noqa: F401,E402  (make test installs it: a broken install fails, never skips)
from transformers.integrations.integration_utils import DVCLiveCallback, TensorBoardCallback  # noqa: E402

import readback  # noqa: E402
from front_doors import import_without, torchrun  # noqa: E402
from hf_models import GEN, DriftConfig, DriftModel, Points, hf_trainer  # noqa: E402
from reliability.support import finished_wandb_records  # noqa: E402
from scalewatch.callbacks import PLOT_FILENAME, metric_key  # noqa: E402
from scalewatch.callbacks.hf import STATE_KEY, ScaleMonitorCallback  # noqa: E402
from scalewatch.monitor import HISTORY_FILENAME  # noqa: E402

FIELDS = ("scale", "raw", "grad", "min", "max")


def history_steps(out) -> list:
    return [r["step"] for r in readback.history(str(out))]


def tensorboard_dir(out) -> str:
    (run_dir,) = glob.glob(os.path.join(str(out), "runs", "*"))
    return run_dir


@pytest.fixture(scope="module")
def tb_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tb")
    alerts = []
    callback = ScaleMonitorCallback(alert_callback=alerts.append)  # every_n_steps: logging_steps
    trainer = hf_trainer(out, [callback])
    order = [type(cb) for cb in trainer.callback_handler.callbacks]
    trainer.train()
    return dict(out=out, trainer=trainer, callback=callback, alerts=alerts, order=order)


def test_readings_every_logging_steps_at_the_step_hf_logs_the_loss(tb_run):
    assert tb_run["callback"].watcher.every_n_steps == 5
    assert history_steps(tb_run["out"]) == list(range(5, 61, 5))
    loss_steps = [r["step"] for r in tb_run["trainer"].state.log_history if "loss" in r]
    assert history_steps(tb_run["out"]) == loss_steps


def test_gradient_is_nonzero_inside_the_bounds_and_zero_once_pinned(tb_run):
    hist = readback.history(str(tb_run["out"]))
    inside = [r for r in hist if r["min"] < r["raw"] < r["max"]]
    beyond = [r for r in hist if r["raw"] > r["max"]]
    assert inside and beyond  # the run drove the raw value through the bound
    assert all(r["grad"] < 0 for r in inside)  # the loss pushes the scale up
    assert all(r["grad"] == 0.0 for r in beyond)  # the clamp cut it
    for r in hist:
        assert r["scale"] == pytest.approx(min(max(r["raw"], r["min"]), r["max"]), rel=1e-6)


def test_near_upper_and_pinned_fire_once_each(tb_run):
    kinds = [a.kind for a in tb_run["alerts"]]
    assert kinds == ["near_upper", "pinned"]
    hist = readback.history(str(tb_run["out"]))
    assert [(r["step"], r["alerts"]) for r in hist if r["alerts"]] == [(a.step, [a.kind]) for a in tb_run["alerts"]]


def test_hf_tensorboard_events_hold_the_scale_next_to_the_loss(tb_run):
    out = tb_run["out"]
    # One events file, HF's own: scalewatch wrote through HF's writer, not a second one.
    assert len(glob.glob(os.path.join(str(out), "**", "events.out.tfevents.*"), recursive=True)) == 1
    run_dir = tensorboard_dir(out)
    loss_steps = [s for s, _ in readback.tensorboard_scalars(run_dir, "train/loss")]
    hist = readback.history(str(out))
    for field in FIELDS:
        scalars = readback.tensorboard_scalars(run_dir, metric_key(GEN, field))
        assert [s for s, _ in scalars] == loss_steps, field
        assert all(readback.same(v, r[field]) for (_, v), r in zip(scalars, hist)), field
    assert readback.tensorboard_tags(run_dir)["images"] == ["scalewatch/plot"]  # sent before HF closed the writer


def test_history_and_png_in_output_dir(tb_run):
    watcher = tb_run["callback"].watcher
    assert watcher.history_path == os.path.join(str(tb_run["out"]), HISTORY_FILENAME)
    assert os.path.getsize(os.path.join(str(tb_run["out"]), PLOT_FILENAME)) > 0


def test_the_callback_takes_its_place_before_the_integrations(tb_run):
    order = tb_run["order"]
    assert order.index(ScaleMonitorCallback) < order.index(TensorBoardCallback)


def test_wandb_offline_gets_the_scale_at_the_loss_steps(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    import wandb

    wandb.teardown()  # an earlier run in this process may have fixed W&B's directory: start anew

    trainer = hf_trainer(tmp_path / "out", [ScaleMonitorCallback()], report_to=["wandb"], max_steps=30)
    try:
        trainer.train()
    finally:
        wandb.finish()
    finished_wandb_records(tmp_path)  # W&B's service writes the run file after finish() returns
    (run_dir,) = glob.glob(os.path.join(str(tmp_path), "wandb", "offline-run-*"))
    records = readback.wandb_records(run_dir)
    rows = [r["history"]["item"] for r in records if r["type"] == "history"]
    scale = [(int(i["train/global_step"]), i[metric_key(GEN, "scale")]) for i in rows if metric_key(GEN, "scale") in i]
    loss_steps = [int(i["train/global_step"]) for i in rows if "train/loss" in i]
    assert [s for s, _ in scale] == loss_steps == list(range(5, 31, 5))
    assert [v for _, v in scale] == pytest.approx([r["scale"] for r in readback.history(str(tmp_path / "out"))])
    assert [r["alert"]["title"] for r in records if r["type"] == "alert"] == [
        f"scalewatch near_upper: {GEN}", f"scalewatch pinned: {GEN}"]
    assert any("scalewatch/plot" in "".join(i) for i in rows)


def initial_grad(x: torch.Tensor) -> float:
    """The scale's gradient of the loss over the samples ``x`` at the trainer's initial weights."""
    torch.manual_seed(0)
    model = DriftModel(DriftConfig())
    model(x=x)["loss"].backward()
    return model.head.attention_bias_generator.bias_scale.grad.item()


def test_gradient_accumulation_reads_once_per_optimizer_step_the_accumulated_gradient(tmp_path):
    trainer = hf_trainer(tmp_path, [ScaleMonitorCallback(every_n_steps=1)], report_to=[], max_steps=6,
                         gradient_accumulation_steps=4, train_sampling_strategy="sequential", max_grad_norm=0.0)
    trainer.train()
    assert history_steps(tmp_path) == [1, 2, 3, 4, 5, 6]  # 24 micro-batches, 6 optimizer steps
    first = readback.history(str(tmp_path))[0]["grad"]
    x = Points().x
    full, last = initial_grad(x[:16]), initial_grad(x[12:16])
    assert abs(first - full) < abs(last - full) / 100  # all four micro-batches of step 1, not the last one alone


def test_the_gradient_is_read_after_clipping_as_the_optimizer_sees_it(tmp_path):
    trainer = hf_trainer(tmp_path, [ScaleMonitorCallback(every_n_steps=1)], report_to=[], max_steps=1,
                         max_grad_norm=0.01)
    trainer.train()
    assert abs(initial_grad(Points().x[:4])) > 0.1  # the unclipped gradient ...
    assert 0 < abs(readback.history(str(tmp_path))[0]["grad"]) <= 0.01 * (1 + 1e-5)  # ... after clipping


def test_stop_on_saturation_ends_training_at_the_alert_step(tmp_path):
    alerts = []
    trainer = hf_trainer(tmp_path, [ScaleMonitorCallback(on_saturation="stop", alert_callback=alerts.append)],
                         report_to=[])
    trainer.train()
    assert [a.kind for a in alerts] == ["near_upper"]
    assert trainer.state.global_step == alerts[0].step  # the step that raised it completed, no further one
    assert history_steps(tmp_path)[-1] == alerts[0].step


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    alerts = []
    hf_trainer(out, [ScaleMonitorCallback(alert_callback=alerts.append)], report_to=[], max_steps=30,
               save_strategy="steps", save_steps=10).train()
    return dict(out=out, alerts=alerts, steps=history_steps(out))


def test_checkpoints_carry_the_watchers_position(checkpointed):
    with open(os.path.join(str(checkpointed["out"]), "checkpoint-20", "trainer_state.json")) as f:
        saved = json.load(f)["stateful_callbacks"][STATE_KEY]
    assert saved["last_step"] == 20 and saved["checks"] == 4
    assert saved["tracker"]["active"] == {GEN: ["near_upper"]}


def test_resume_continues_one_record_without_repeating_a_step(checkpointed):
    out = checkpointed["out"]
    alerts = []
    trainer = hf_trainer(out, [ScaleMonitorCallback(alert_callback=alerts.append)], report_to=[], max_steps=30)
    trainer.train(resume_from_checkpoint=os.path.join(str(out), "checkpoint-20"))
    assert history_steps(out) == checkpointed["steps"] == list(range(5, 31, 5))
    # near_upper fired before the checkpoint and stayed active: the resumed run does not repeat it
    assert [a.kind for a in alerts] == ["pinned"] and [a.kind for a in checkpointed["alerts"]] == [
        "near_upper", "pinned"]


def test_resume_into_a_new_output_dir_starts_with_the_earlier_readings(checkpointed, tmp_path):
    trainer = hf_trainer(tmp_path, [ScaleMonitorCallback()], report_to=[], max_steps=30)
    trainer.train(resume_from_checkpoint=os.path.join(str(checkpointed["out"]), "checkpoint-20"))
    assert history_steps(tmp_path) == list(range(5, 31, 5))


def test_a_callback_added_after_the_trainer_was_built_still_sends_the_final_plot(tmp_path):
    trainer = hf_trainer(tmp_path, [], max_steps=10)
    trainer.add_callback(ScaleMonitorCallback())
    trainer.train()
    order = [type(cb) for cb in trainer.callback_handler.callbacks]
    assert order.index(ScaleMonitorCallback) < order.index(TensorBoardCallback)
    assert readback.tensorboard_tags(tensorboard_dir(tmp_path))["images"] == ["scalewatch/plot"]


class RecordingIntegration(DVCLiveCallback):
    """An integration scalewatch has no sink of its own for (DVCLive is not installed here): it records ``on_log``."""

    def __init__(self) -> None:  # skips DVCLiveCallback's check for the dvclive package
        self.logged = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logged.append((state.global_step, dict(logs)))

    def on_train_begin(self, args, state, control, **kwargs):  # DVCLive's would start a dvclive run
        pass

    on_train_end = on_train_begin


def test_other_integrations_get_the_values_through_their_on_log(tmp_path):
    other = RecordingIntegration()
    hf_trainer(tmp_path, [ScaleMonitorCallback(), other], report_to=[], max_steps=10).train()
    scale = [(step, logs[metric_key(GEN, "scale")]) for step, logs in other.logged if metric_key(GEN, "scale") in logs]
    loss_steps = [step for step, logs in other.logged if "loss" in logs]
    assert [s for s, _ in scale] == loss_steps == [5, 10]


@pytest.mark.parametrize("kwargs, match", [
    (dict(every_n_steps=0), r"`every_n_steps` must be an integer >= 1, got 0"),
    (dict(on_saturation="explode"), r"`on_saturation` must be one of \('warn', 'stop'\), got 'explode'"),
    (dict(warn_fraction=1.5), r"`warn_fraction`"),
])
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScaleMonitorCallback(**kwargs)


def test_a_params_name_the_model_lacks_fails_at_train_start(tmp_path):
    trainer = hf_trainer(tmp_path, [ScaleMonitorCallback(params={"logit_scale": (0.0, 4.6052)})], report_to=[])
    with pytest.raises(ValueError, match="logit_scale"):
        trainer.train()
    assert trainer.state.global_step == 0  # before any step


def test_without_transformers_the_import_error_names_the_extra(monkeypatch):
    with pytest.raises(ImportError, match=r"pip install 'scalewatch\[transformers\]'"):
        import_without(monkeypatch, "transformers", "scalewatch.callbacks.hf")


@pytest.mark.slow
def test_ddp_two_processes_one_record_one_alert_and_every_rank_stops(tmp_path):
    out = torchrun(os.path.join(os.path.dirname(__file__), "hf_ddp_script.py"), str(tmp_path), "stop")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("DONE global_step=10 checks=2") == 2  # both ranks read, both stopped at the alert
    assert [line for line in out.stdout.splitlines() if line.startswith("ALERT")] == ["ALERT near_upper 10"]
    assert out.stderr.count("Scale near upper bound!") == 1  # rank zero alerts
    assert [p.parent for p in tmp_path.rglob(HISTORY_FILENAME)] == [tmp_path]
    assert history_steps(tmp_path) == [5, 10]
    assert len(glob.glob(os.path.join(str(tmp_path), "runs", "*", "events.out.tfevents.*"))) == 1
