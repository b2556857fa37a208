"""ScaleMonitorHook on a real mmengine Runner (CPU), read back from disk: .log, scalars.json, TensorBoard, history."""
import glob
import json
import os
import re
import runpy
from unittest import mock

import pytest
import torch

import mmengine  # noqa: F401,E402  (make test installs it: a broken install fails, never skips)
from mmengine.optim import AmpOptimWrapper  # noqa: E402
from mmengine.optim.optimizer import amp_optimizer_wrapper  # noqa: E402
from mmengine.registry import HOOKS, OPTIM_WRAPPERS  # noqa: E402

import readback  # noqa: E402
from front_doors import import_without, torchrun  # noqa: E402
from mmengine_models import GENERATOR, make_runner  # noqa: E402
from scalewatch.callbacks import PLOT_FILENAME  # noqa: E402
from scalewatch.callbacks.mmengine import STATE_KEY, ScaleMonitorHook  # noqa: E402
from scalewatch.monitor import HISTORY_FILENAME  # noqa: E402

FIELDS = ("scale", "raw", "grad", "min", "max")
TB = dict(type="TensorboardVisBackend")
LOCAL = dict(type="LocalVisBackend")


def readings(log_dir, name=GENERATOR):
    return [r for r in readback.history(log_dir) if r["name"] == name]


def log_lines(log_dir):
    (path,) = glob.glob(os.path.join(log_dir, "*.log"))
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def scalars_json(log_dir):
    with open(os.path.join(log_dir, "vis_data", "scalars.json"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def logged_value(line, key):
    m = re.search(re.escape(key) + r": (-?[\d.]+)", line)
    return None if m is None else float(m.group(1))


def iteration_lines(log_dir, key):
    """``{iteration: value}`` of every ``Iter(train) [i/...]`` line of the .log that carries ``key``."""
    out = {}
    for line in log_lines(log_dir):
        m = re.search(r"Iter\(train\) \[\s*(\d+)/", line)
        if m and key in line:
            out[int(m.group(1))] = logged_value(line, key)
    return out


def train(runner):
    runner.train()
    return runner


@pytest.fixture(scope="module")
def drift(tmp_path_factory):
    """lr 0.3 walks the scale into its upper bound: near_upper at step 15, pinned at 30."""
    alerts = []
    runner = make_runner(str(tmp_path_factory.mktemp("drift")), max_iters=40, lr=0.3, log_interval=5,
                         hook=dict(interval=5, alert_callback=alerts.append, params={"loss_temperature": (0.0, 5.0)}),
                         vis_backends=[LOCAL, TB])
    return dict(runner=train(runner), log_dir=runner.log_dir, alerts=alerts)


def test_readings_every_interval_at_the_iteration_loggerhook_logs(drift):
    assert [r["step"] for r in readings(drift["log_dir"])] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert [r["step"] for r in readings(drift["log_dir"], "loss_temperature")] == [5, 10, 15, 20, 25, 30, 35, 40]


def test_gradient_is_nonzero_inside_the_bounds_and_zero_once_pinned(drift):
    rows = readings(drift["log_dir"])
    inside = [r for r in rows if r["min"] <= r["raw"] <= r["max"]]
    assert len(inside) >= 2
    assert all(r["grad"] < -0.1 for r in inside)  # -mean(sigmoid weights): pushes the scale up
    beyond = [r for r in rows if r["raw"] > r["max"]]
    assert beyond and all(r["grad"] == 0 and r["scale"] == r["max"] for r in beyond)


def test_near_upper_and_pinned_fire_once_each(drift):
    assert [(a.kind, a.step) for a in drift["alerts"]] == [("near_upper", 15), ("pinned", 30)]
    fired = [(r["step"], r["alerts"]) for r in readings(drift["log_dir"]) if r["alerts"]]
    assert fired == [(15, ["near_upper"]), (30, ["pinned"])]


def test_the_log_file_carries_every_reading_and_the_alerts(drift):
    log_dir = drift["log_dir"]
    for field in FIELDS:
        key = f"scalewatch/{GENERATOR}/{field}"
        assert iteration_lines(log_dir, key) == {r["step"]: pytest.approx(r[field], abs=1e-4)
                                                 for r in readings(log_dir)}
    # "loss" in a name is averaged over LogProcessor's window: each value is a reading all the same
    key = "scalewatch/loss_temperature/scale"
    assert iteration_lines(log_dir, key) == {r["step"]: pytest.approx(r["scale"], abs=1e-4)
                                             for r in readings(log_dir, "loss_temperature")}
    warnings = [line for line in log_lines(log_dir) if " - scalewatch - WARNING - " in line]
    assert len(warnings) == 2
    assert "Scale near upper bound!" in warnings[0] and "at step 15" in warnings[0]
    assert "pinned" in warnings[1] and "at step 30" in warnings[1]


def test_scalars_json_holds_each_reading_once_at_its_step(drift):
    log_dir = drift["log_dir"]
    records = scalars_json(log_dir)
    for field in FIELDS:
        key = f"scalewatch/{GENERATOR}/{field}"
        got = [(rec["step"], rec[key]) for rec in records if key in rec]
        assert got == [(r["step"], r[field]) for r in readings(log_dir)]  # exact: the float as read


def test_tensorboard_backend_events_read_back(drift):
    log_dir = os.path.join(drift["log_dir"], "vis_data")
    rows = readings(drift["log_dir"])
    for field in FIELDS:
        got = readback.tensorboard_scalars(log_dir, f"scalewatch/{GENERATOR}/{field}")
        assert [s for s, _ in got] == [r["step"] for r in rows]
        assert all(readback.same(v, r[field]) for (_, v), r in zip(got, rows))
    assert [s for s, _ in readback.tensorboard_scalars(log_dir, "loss")] == [5, 10, 15, 20, 25, 30, 35, 40]
    layout = readback.tensorboard_layout(log_dir)["scalewatch"]
    assert layout[GENERATOR] == [f"scalewatch/{GENERATOR}/{f}" for f in ("scale", "min", "max")]
    assert "scalewatch_plot" in readback.tensorboard_tags(log_dir)["images"]


def test_history_and_png_in_the_runs_log_dir(drift):
    log_dir = drift["log_dir"]
    assert os.path.dirname(log_dir) == drift["runner"].work_dir
    assert os.path.getsize(os.path.join(log_dir, PLOT_FILENAME)) > 0
    assert glob.glob(os.path.join(log_dir, "vis_data", "vis_image", "scalewatch_plot_40.png"))
    hook = next(h for h in drift["runner"].hooks if isinstance(h, ScaleMonitorHook))
    assert "step" not in vars(drift["runner"].optim_wrapper)  # the wrapper is itself again after training
    assert hook.watcher.history_path == os.path.join(log_dir, HISTORY_FILENAME)


def test_an_interval_off_loggerhooks_steps_gets_its_own_lines_and_no_stale_repeats(tmp_path):
    runner = train(make_runner(str(tmp_path), max_iters=30, log_interval=6, hook=dict(interval=4, plot=False)))
    log_dir = runner.log_dir
    steps = [r["step"] for r in readings(log_dir)]
    assert steps == [4, 8, 12, 16, 20, 24, 28]
    key = f"scalewatch/{GENERATOR}/scale"
    # 12 and 24 on LoggerHook's lines; the others on the hook's own; 6, 18, 30 carry no stale value
    assert iteration_lines(log_dir, key) == {r["step"]: pytest.approx(r["scale"], abs=1e-4)
                                             for r in readings(log_dir)}
    own = [line for line in log_lines(log_dir) if "scalewatch Iter(train)" in line]
    assert len(own) == 5
    records = scalars_json(log_dir)
    assert [rec["step"] for rec in records if key in rec] == steps
    assert [rec["step"] for rec in records if "loss" in rec] == [6, 12, 18, 24, 30]


def test_stop_on_saturation_ends_the_iteration_loop_after_the_alert(tmp_path):
    runner = train(make_runner(str(tmp_path), max_iters=40, lr=0.3, hook=dict(interval=5, on_saturation="stop",
                                                                              plot=False)))
    assert runner.iter == 15
    assert [r["step"] for r in readings(runner.log_dir)] == [5, 10, 15]


def test_gradient_accumulation_reads_once_per_optimizer_step_the_accumulated_gradient(tmp_path):
    runner = train(make_runner(str(tmp_path), max_iters=24, log_interval=6, hook=dict(interval=3, plot=False),
                               optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01), accumulative_counts=2)))
    rows = readings(runner.log_dir)
    assert [r["step"] for r in rows] == [3, 6, 9, 12]  # optimizer steps: iterations / 2
    # The full gradient (-mean of the weights, about -0.5), not half of it (one micro-batch of two).
    assert all(-0.7 < r["grad"] < -0.35 for r in rows)
    # Step s is taken in iteration 2s: LoggerHook's lines 6, 12, 18, 24 carry the readings.
    assert iteration_lines(runner.log_dir, f"scalewatch/{GENERATOR}/scale") == {
        2 * r["step"]: pytest.approx(r["scale"], abs=1e-4) for r in rows}


@OPTIM_WRAPPERS.register_module(force=True)
class CPUGradScalerOptimWrapper(AmpOptimWrapper):
    """mmengine's AmpOptimWrapper (scale the loss, unscale, clip, step) with a CPU GradScaler.

    AmpOptimWrapper refuses to start without CUDA (and its ``torch.cuda.amp``
    GradScaler disables itself there); everything else is its own code: autocast
    (bfloat16 on the CPU), ``loss_scaler.scale(loss).backward()``, ``unscale_`` before
    clipping, ``loss_scaler.step`` / ``update``.
    """

    def __init__(self, **kwargs):
        with mock.patch.object(amp_optimizer_wrapper, "is_cuda_available", return_value=True):
            super().__init__(**kwargs)
        self.loss_scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)


@pytest.mark.parametrize("clip_grad", [None, dict(max_norm=100.0)], ids=["no-clip", "clip"])
def test_amp_reads_the_unscaled_gradient(tmp_path, clip_grad):
    wrapper = dict(type="CPUGradScalerOptimWrapper", optimizer=dict(type="SGD", lr=0.01), clip_grad=clip_grad)
    runner = train(make_runner(str(tmp_path), max_iters=10, hook=dict(interval=5, plot=False), optim_wrapper=wrapper,
                               name=f"amp-{bool(clip_grad)}"))
    rows = readings(runner.log_dir)
    assert [r["step"] for r in rows] == [5, 10]
    assert all(-0.7 < r["grad"] < -0.35 for r in rows)  # not 1024 times that
    # five SGD steps of the once-unscaled gradient between the readings (not 1/1024 of it)
    assert rows[1]["raw"] - rows[0]["raw"] == pytest.approx(-5 * 0.01 * rows[0]["grad"], rel=0.3)
    assert runner.optim_wrapper.loss_scaler.get_scale() == 1024.0  # no step was skipped as an overflow
    assert "unscale_" not in vars(runner.optim_wrapper.loss_scaler)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """Run A: 20 iterations with checkpoints at 15 and 20; run B resumes from iteration 15 in a new work_dir."""
    first = train(make_runner(str(tmp_path_factory.mktemp("first")), max_iters=20, lr=0.3, checkpoint_interval=15,
                              hook=dict(interval=5, plot=False)))
    alerts = []
    with pytest.MonkeyPatch.context() as mp:
        # mmengine 0.10.7 cannot load its own checkpoints under torch >= 2.6 (weights_only; mmengine#1655)
        mp.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
        second = train(make_runner(str(tmp_path_factory.mktemp("second")), max_iters=40, lr=0.3, resume=True,
                                   load_from=os.path.join(first.work_dir, "iter_15.pth"),
                                   hook=dict(interval=5, alert_callback=alerts.append, plot=False)))
    return dict(first=first, second=second, alerts=alerts)


def test_checkpoints_carry_the_hooks_position_not_its_message_hub_keys(resumed):
    state = torch.load(os.path.join(resumed["first"].work_dir, "iter_15.pth"), weights_only=False)
    assert state[STATE_KEY]["last_step"] == 15 and state[STATE_KEY]["checks"] == 3
    assert not [k for k in state["message_hub"]["resumed_keys"] if "scalewatch" in k]


def test_resume_continues_one_record_without_repeating_a_step(resumed):
    first, second = resumed["first"].log_dir, resumed["second"].log_dir
    assert [r["step"] for r in readings(first)] == [5, 10, 15, 20]
    rows = readings(second)
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30, 35, 40]  # 20 of run A cut: B read it anew
    assert rows[:3] == readings(first)[:3]
    # near_upper fired at 15 in run A and is not fired again; pinned follows at 30
    assert [(a.kind, a.step) for a in resumed["alerts"]] == [("pinned", 30)]


def test_load_from_without_resume_starts_a_new_record(resumed, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    alerts = []
    runner = train(make_runner(str(tmp_path), max_iters=10, lr=0.3, name="load-from",
                               load_from=os.path.join(resumed["first"].work_dir, "iter_15.pth"),
                               hook=dict(interval=5, alert_callback=alerts.append, plot=False)))
    rows = readings(runner.log_dir)
    assert [r["step"] for r in rows] == [5, 10]
    assert rows[0]["raw"] > 4.5  # the loaded weights, read as a new run's
    assert [(a.kind, a.step) for a in alerts] == [("near_upper", 5)]  # fresh alert state


EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "mmengine")


@pytest.fixture(scope="module")
def example():
    """examples/mmengine/train.py's namespace (importing it puts its modules on sys.path)."""
    return runpy.run_path(os.path.join(EXAMPLE, "train.py"), run_name="mmengine_example")


@pytest.mark.parametrize("preset, bounds", [("conservative", (0.5, 5.0)), ("aggressive", (1.0, 8.0)),
                                            ("ultra-conservative", (0.5, 3.0))])
def test_the_example_presets_inherit_the_base_config(example, preset, bounds):
    from mmengine.config import Config
    from mmengine.registry import MODELS

    cfg = Config.fromfile(os.path.join(EXAMPLE, "configs", f"{preset}.py"))
    assert "scalewatch.callbacks.mmengine" in cfg.custom_imports.imports
    assert cfg.custom_hooks == [dict(type="ScaleMonitorHook", interval=10, warn_fraction=0.9, patience=3,
                                     on_saturation="warn")]
    assert cfg.default_hooks.logger.interval == 10  # = the hook's interval: every reading on a log line
    generator = MODELS.build(cfg.model).net.attention_bias_generator
    assert (generator.min_scale, generator.max_scale) == bounds


def test_the_example_trains_with_its_documented_command(example, tmp_path):
    runner = example["main"]([os.path.join(EXAMPLE, "configs", "conservative.py"), "--work-dir", str(tmp_path),
                              "--num-threads", "0", "--cfg-options", "train_cfg.max_iters=20",
                              "train_cfg.val_interval=20", "val_dataloader.dataset.num_samples=256"])
    name = "net.fusion_attention.attention_bias_generator"
    rows = readings(runner.log_dir, name)
    assert [r["step"] for r in rows] == [10, 20]
    assert all(0.5 <= r["scale"] <= 5.0 and r["grad"] != 0 for r in rows)
    assert iteration_lines(runner.log_dir, f"scalewatch/{name}/scale") == {
        r["step"]: pytest.approx(r["scale"], abs=1e-4) for r in rows}
    assert os.path.isfile(os.path.join(runner.log_dir, PLOT_FILENAME))


def test_unknown_argument_fails_at_runner_build_naming_it(tmp_path):
    with pytest.raises(TypeError, match=r"unknown argument\(s\) 'every_n_steps' \(mmengine's name for every N is "
                                        r"`interval`\); it takes interval, warn_fraction"):
        make_runner(str(tmp_path), hook=dict(every_n_steps=50))


@pytest.mark.parametrize("cfg, match", [
    (dict(interval=0), r"ScaleMonitorHook: `interval` must be an integer >= 1, got 0"),
    (dict(interval="50"), r"`interval` must be an integer >= 1, got '50'"),
    (dict(on_saturation="halt"), r"`on_saturation` must be one of \('warn', 'stop'\), got 'halt'"),
    (dict(params={"logit_scale": (5.0, 1.0)}), r"params\['logit_scale'\]"),
])
def test_bad_values_fail_when_the_hook_is_built(cfg, match):
    with pytest.raises(ValueError, match=match):
        HOOKS.build(dict(type="ScaleMonitorHook", **cfg))  # what Runner.register_hook does with custom_hooks


def test_a_params_name_the_model_lacks_fails_before_the_first_iteration(tmp_path):
    runner = make_runner(str(tmp_path), hook=dict(params={"logit_scale": (0.0, 4.6052)}))
    with pytest.raises(ValueError, match="logit_scale"):
        runner.train()
    assert runner.iter == 0
    assert "step" not in vars(runner.optim_wrapper)


def test_without_mmengine_the_import_error_names_the_extra(monkeypatch):
    with pytest.raises(ImportError, match=r"pip install 'scalewatch\[mmengine\]'"):
        import_without(monkeypatch, "mmengine", "scalewatch.callbacks.mmengine")


@pytest.mark.slow
def test_distributed_two_processes_one_record_one_alert_and_every_rank_stops(tmp_path):
    out = torchrun(os.path.join(os.path.dirname(__file__), "mmengine_ddp_script.py"), str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("DONE iter=15 checks=3") == 2  # both ranks read, both stopped at the alert
    assert out.stderr.count("Scale near upper bound!") == 1  # rank zero alerts
    (history,) = glob.glob(os.path.join(str(tmp_path), "*", HISTORY_FILENAME))
    log_dir = os.path.dirname(history)
    assert [r["step"] for r in readings(log_dir)] == [5, 10, 15]
    assert [(r["step"], r["alerts"]) for r in readings(log_dir) if r["alerts"]] == [(15, ["near_upper"])]
    assert sum("Scale near upper bound!" in line for line in log_lines(log_dir)) == 1
