"""ScaleWatcher in a plain PyTorch loop: a real open_clip CLIP (examples/plain_loop.py), its
in-place logit_scale clamp, a SummaryWriter, an offline W&B run, a GradScaler, resume through
state_dict, and bad input. No Lightning is involved anywhere in these loops."""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Dict, List

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import readback
from reliability.support import assert_png, read_wandb, wandb_series
from scalewatch.callbacks import PLOT_FILENAME, ScaleWatcher, metric_key
from scalewatch.monitor import HISTORY_FILENAME, AttentionBiasGenerator

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
sys.path.insert(0, EXAMPLES)

import plain_loop  # noqa: E402

LN100 = math.log(100)
FIELDS = ("scale", "raw", "grad", "min", "max")


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory) -> Dict[str, Any]:
    import wandb

    root = tmp_path_factory.mktemp("clip")
    run = wandb.init(project="scalewatch-test", dir=str(root), mode="offline")
    alerts: List[Any] = []
    out = plain_loop.train(str(root), steps=80, every_n_steps=10, wandb_run=run, alert_callback=alerts.append)
    run.finish()
    return dict(root=str(root), out=out, alerts=alerts, history=readback.history(str(root)))


def test_readings_on_steps_n_minus_1_2n_minus_1(clip_run):
    assert [r["step"] for r in clip_run["history"]] == list(range(9, 80, 10))
    assert {r["name"] for r in clip_run["history"]} == {"logit_scale"}


def test_the_in_place_clamp_pins_the_scale_at_ln_100_once(clip_run):
    hist = clip_run["history"]
    kinds = [a.kind for a in clip_run["alerts"]]
    assert kinds.count("pinned") == 1 and kinds.count("near_upper") == 1, kinds
    pinned = next(a for a in clip_run["alerts"] if a.kind == "pinned")
    assert pinned.raw == pytest.approx(LN100, rel=1e-6) and pinned.grad <= 0
    assert next(r for r in hist if r["step"] == pinned.step)["alerts"] == ["pinned"]
    # before the cap the optimizer moved it with a real gradient
    assert hist[0]["raw"] < 4.0 and hist[0]["grad"] != 0
    assert all(r["min"] == 0.0 and r["max"] == pytest.approx(LN100) for r in hist)


def test_summary_writer_events_match_the_history(clip_run):
    hist = clip_run["history"]
    for field in FIELDS:
        got = readback.tensorboard_scalars(clip_run["root"], metric_key("logit_scale", field))
        assert [s for s, _ in got] == [r["step"] for r in hist], field
        assert all(readback.same(v, r[field]) for (_, v), r in zip(got, hist)), field
    layout_tags = readback.tensorboard_tags(clip_run["root"])
    assert "train/loss" in layout_tags["scalars"]


def test_png_written(clip_run):
    assert clip_run["out"]["watcher"].plot_path == os.path.join(clip_run["root"], PLOT_FILENAME)
    assert_png(os.path.join(clip_run["root"], PLOT_FILENAME))


def test_wandb_run_gets_the_metrics_and_the_alerts(clip_run):
    rows, alerts = read_wandb(clip_run["root"])
    hist = clip_run["history"]
    series = wandb_series(rows, metric_key("logit_scale", "scale"))
    assert sorted(series) == [r["step"] for r in hist]
    assert all(readback.same(series[r["step"]], r["scale"]) for r in hist)
    assert sorted(a.title for a in alerts) == ["scalewatch near_upper: logit_scale", "scalewatch pinned: logit_scale"]
    assert any("scalewatch/plot" in key for row in rows for key in row)


def test_grad_scaler_loop_records_unscaled_gradients(tmp_path):
    plain = plain_loop.train(str(tmp_path / "plain"), steps=30, every_n_steps=10, tensorboard=False)
    scaled = plain_loop.train(str(tmp_path / "scaled"), steps=30, every_n_steps=10, tensorboard=False,
                              grad_scaler=True)
    a, b = readback.history(str(tmp_path / "plain")), readback.history(str(tmp_path / "scaled"))
    assert [r["step"] for r in a] == [r["step"] for r in b] == [9, 19, 29]
    # The scaler multiplies the loss by 1024 (a power of two: exact), so read before unscale_ the
    # gradients would be 1024x these; read after it they are the same as without a scaler.
    for x, y in zip(a, b):
        assert y["grad"] == pytest.approx(x["grad"], rel=1e-4, abs=1e-9)
        assert abs(x["grad"]) > 1e-6


class Toy(nn.Module):
    """A bias generator whose scale SGD walks into its upper bound (as tests/models.DriftModel)."""

    def __init__(self) -> None:
        super().__init__()
        self.gen = AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0)

    def loss(self) -> torch.Tensor:
        return -self.gen(torch.full((2, 4, 4), 0.5)).float().mean()


def run_toy(watcher: ScaleWatcher, model: Toy, steps: range, opt: torch.optim.Optimizer) -> None:
    for step in steps:
        model.loss().backward()
        watcher.step(step)
        opt.step()
        opt.zero_grad()


def test_resume_through_state_dict_continues_one_record_without_repeats(tmp_path):
    model = Toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    first = ScaleWatcher(model, log_dir=tmp_path, every_n_steps=5)
    run_toy(first, model, range(0, 25), opt)
    saved = json.loads(json.dumps(first.state_dict()))  # a checkpoint at step 25: plain data
    run_toy(first, model, range(25, 37), opt)           # readings 29 and 34 happen, then the "crash"
    assert [r["step"] for r in readback.history(str(tmp_path))][-2:] == [29, 34]

    second = ScaleWatcher(model, log_dir=tmp_path, every_n_steps=5)
    second.load_state_dict(saved)
    with second:
        run_toy(second, model, range(25, 50), opt)
    steps = [r["step"] for r in readback.history(str(tmp_path))]
    assert steps == list(range(4, 50, 5))  # cut back to the checkpoint, then continued: no step twice
    kinds = [k for r in readback.history(str(tmp_path)) for k in r["alerts"]]
    assert kinds.count("near_upper") == 1  # the alert state came back with the checkpoint


def test_resume_into_a_new_directory_copies_the_earlier_readings(tmp_path):
    model = Toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with ScaleWatcher(model, log_dir=tmp_path / "a", every_n_steps=5) as first:
        run_toy(first, model, range(0, 20), opt)
    second = ScaleWatcher(model, log_dir=tmp_path / "b", every_n_steps=5)
    second.load_state_dict(first.state_dict())
    with second:
        run_toy(second, model, range(20, 30), opt)
    assert [r["step"] for r in readback.history(str(tmp_path / "b"))] == [4, 9, 14, 19, 24, 29]


def test_a_fresh_watcher_keeps_an_earlier_history_aside(tmp_path):
    for _ in range(2):
        model = Toy()
        with ScaleWatcher(model, log_dir=tmp_path, every_n_steps=5, plot=False) as w:
            run_toy(w, model, range(10), torch.optim.SGD(model.parameters(), lr=0.01))
    assert [r["step"] for r in readback.history(str(tmp_path))] == [4, 9]
    assert os.path.exists(tmp_path / "scalewatch_history.previous-1.jsonl")


class OpLog(TorchDispatchMode):
    """Records every tensor operation run while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: List[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_off_check_steps_run_no_tensor_operation_and_a_check_gathers_once(tmp_path):
    model = Toy()
    watcher = ScaleWatcher(model, log_dir=tmp_path, every_n_steps=10, plot=False)
    model.loss().backward()
    watcher.step(0)
    for step in range(1, 9):
        with OpLog() as ops:
            assert watcher.step(step) == []
        assert ops.ops == [], (step, ops.ops)
    with OpLog() as ops:
        watcher.step(9)
    # every value joins one tensor (one gather), which then crosses to the host in one transfer
    assert sum(op.startswith(("aten.cat", "aten.stack")) for op in ops.ops) == 1, ops.ops
    watcher.close()


def test_should_stop_turns_true_at_the_alert_step(tmp_path):
    model = Toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with ScaleWatcher(model, log_dir=tmp_path, every_n_steps=2, on_saturation="stop", plot=False) as w:
        stopped_at = None
        for step in range(100):
            model.loss().backward()
            if w.step(step):
                stopped_at = step
            opt.step()
            opt.zero_grad()
            if w.should_stop:
                break
    assert stopped_at is not None and step == stopped_at
    assert readback.history(str(tmp_path))[-1]["alerts"] == ["near_upper"]


def test_an_exception_in_the_loop_still_writes_the_plot_and_propagates(tmp_path):
    model = Toy()
    with pytest.raises(RuntimeError, match="boom"):
        with ScaleWatcher(model, log_dir=tmp_path, every_n_steps=2) as w:
            run_toy(w, model, range(6), torch.optim.SGD(model.parameters(), lr=0.01))
            raise RuntimeError("boom")
    assert_png(tmp_path / PLOT_FILENAME)


@pytest.mark.parametrize("kwargs, must_contain", [
    (dict(model="not a model"), ["`model`", "nn.Module", "str"]),
    (dict(every_n_steps=0), ["`every_n_steps`", "0"]),
    (dict(every_n_steps=2.5), ["`every_n_steps`", "2.5"]),
    (dict(params={"logit_scal": (0.0, 1.0)}), ["`params`", "'logit_scal'"]),
    (dict(warn_fraction=1.5), ["`warn_fraction`", "1.5"]),
    (dict(on_saturation="halt"), ["`on_saturation`", "'halt'"]),
    (dict(loggers="csv"), ["`loggers`", "'csv'"]),
    (dict(loggers=[object()]), ["`loggers`", "log_metrics"]),
    (dict(tensorboard="runs/tb"), ["`tensorboard`", "SummaryWriter"]),
    (dict(wandb_run=42), ["`wandb_run`", "42"]),
], ids=["model", "every_n_steps=0", "every_n_steps float", "params", "warn_fraction", "on_saturation",
        "loggers str", "loggers entry", "tensorboard", "wandb_run"])
def test_bad_arguments_are_named_with_their_value(tmp_path, kwargs, must_contain):
    args = dict(model=Toy(), log_dir=tmp_path)
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        ScaleWatcher(**args)
    for part in must_contain:
        assert part in str(info.value), (part, str(info.value))
    assert not os.path.exists(tmp_path / HISTORY_FILENAME)


def test_bad_steps_are_errors_and_lose_nothing(tmp_path):
    model = Toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    w = ScaleWatcher(model, log_dir=tmp_path, every_n_steps=2, plot=False)
    run_toy(w, model, range(6), opt)
    before = readback.history(str(tmp_path))
    with pytest.raises(ValueError, match=r"`step` must not go backwards: got step=3 after step=5"):
        w.step(3)
    for bad in (-1, 2.0, "7", True):
        with pytest.raises(ValueError, match="`step` must be an integer >= 0"):
            w.step(bad)
    with pytest.raises(ValueError, match="`state_dict`"):
        w.load_state_dict({"nonsense": 1})
    assert readback.history(str(tmp_path)) == before
    run_toy(w, model, range(6, 8), opt)  # and it goes on where it was
    assert [r["step"] for r in readback.history(str(tmp_path))] == [1, 3, 5, 7]
    w.close()
    w.close()  # twice is fine
    with pytest.raises(RuntimeError, match=r"step\(\) was called after close\(\)"):
        w.step(9)
    assert [r["step"] for r in readback.history(str(tmp_path))] == [1, 3, 5, 7]
