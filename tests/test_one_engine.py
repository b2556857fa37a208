"""One rule book, one door kit: every view judges a record as the engine did, every door takes the same settings.

The agreement tests feed the same records to the engine's rules (scalar and column
form, the alert tracker), the live view (``scalewatch watch``), the report's counts and
the plot's outside shading, and require one answer. The two cases the third wave found
disagreeing are pinned down by name.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import subprocess
import sys
from typing import Any, Dict, List, Optional

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scalewatch.callbacks.hf import ScaleMonitorCallback
from scalewatch.callbacks.ignite_handler import ScaleMonitorHandler
from scalewatch.callbacks.mmengine import ScaleMonitorHook
from scalewatch.callbacks.scale_monitor import ScaleMonitor
from scalewatch.callbacks.watch_settings import SETTING_DOCS, WatchSettings
from scalewatch.callbacks.watcher import ScaleWatcher, StepResult
from scalewatch.dashboards.report import ScaleSummary
from scalewatch.dashboards.series import collect_series
from scalewatch.dashboards.tensor_series import outside_mask
from scalewatch.dashboards.watch import holding_now, plain_line, raw_side
from scalewatch.monitor import display as display_module
from scalewatch.monitor import rules
from scalewatch.monitor.history import iter_history
from scalewatch.monitor.reading import Reading
from scalewatch.monitor.saturation import SaturationTracker, condition_masks

LN100 = math.log(100)                                       # open_clip's bound, a float64
LN100_F32 = float(torch.tensor(LN100, dtype=torch.float32))  # the float32 parameter clamped onto it

BOUNDS = [(0.5, 5.0), (None, LN100), (0.0, None), (1e-4, 1.0), (-2.0, 2.0)]


def _near(bound: Optional[float]) -> List[float]:
    if bound is None:
        return []
    ulp = 2.0 ** -23 * max(abs(bound), 1.0)
    return [bound, bound - ulp, bound + ulp, bound - 8 * ulp, bound + 8 * ulp, bound * 0.95, bound * 1.05]


@st.composite
def records(draw: Any) -> Dict[str, Any]:
    lo, hi = draw(st.sampled_from(BOUNDS))
    special = [math.nan, math.inf, -math.inf, LN100_F32, 0.0]
    value = st.one_of(st.sampled_from(_near(lo) + _near(hi) + special),
                      st.floats(-10.0, 10.0, allow_nan=False, width=32))
    grad = draw(st.one_of(st.none(), st.sampled_from([0.0, 1e-13, -1e-13, 0.5, -0.5, math.nan, math.inf,
                                                      -math.inf]), st.floats(-1.0, 1.0, width=32)))
    record = {"step": 0, "name": "s", "scale": draw(value), "raw": draw(value), "grad": grad, "min": lo, "max": hi,
              "bound": draw(st.sampled_from(["hard", "hard", "soft"])), "clamp_fraction": None,
              "warn_fraction": draw(st.sampled_from([0.9, 0.8, 1.0])), "patience": 1}
    if draw(st.booleans()) and grad is not None and not math.isfinite(grad):
        record[rules.SKIPPED_STEP] = True
    return record


def _reading(record: Dict[str, Any]) -> Reading:
    return Reading(step=record["step"], name=record["name"], scale=record["scale"], raw=record["raw"],
                   grad=record["grad"], min=record["min"], max=record["max"], bound=record["bound"])


def _engine_kinds(record: Dict[str, Any]) -> List[str]:
    tracker = SaturationTracker(record["warn_fraction"], patience=1)
    held = tracker.conditions(_reading(record), grad_must_be_finite=not record.get(rules.SKIPPED_STEP, False))
    return [k for k in rules.ALERT_KINDS if held[k]]


def _write(tmp_path: Any, recs: List[Dict[str, Any]]) -> str:
    path = tmp_path / "scalewatch_history.jsonl"
    path.write_text("".join(json.dumps(dict(r, alerts=[])) + "\n" for r in recs))
    return str(path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(records(), min_size=1, max_size=12))
def test_engine_watch_report_and_plot_judge_every_record_alike(tmp_path: Any, recs: List[Dict[str, Any]]) -> None:
    for step, r in enumerate(recs):
        r["step"] = step
    # the engine, one reading at a time and as columns (a check of many readings)
    engine = [_engine_kinds(r) for r in recs]
    for w in {r["warn_fraction"] for r in recs}:
        same_w = [i for i, r in enumerate(recs) if r["warn_fraction"] == w]
        for skipped in (False, True):
            part = [i for i in same_w if bool(recs[i].get(rules.SKIPPED_STEP)) == skipped]
            if not part:
                continue
            masks = condition_masks([_reading(recs[i]) for i in part], w, grad_must_be_finite=not skipped)
            for j, i in enumerate(part):
                assert [k for k in rules.ALERT_KINDS if masks[k][j]] == engine[i], recs[i]
    # the live view re-judges each history line exactly as the engine did
    assert [holding_now(r) for r in recs] == engine
    # the record read back from disk says the same (skipped_step and warn_fraction travel with it)
    back = list(iter_history(_write(tmp_path, recs)))
    assert [holding_now(r) for r in back] == engine
    # the report counts what the engine's rules hold, per reading (one series per bounds/kind)
    series = collect_series(back)["s"]
    summary = ScaleSummary.of(series)
    finite_scale = [math.isfinite(r["scale"]) for r in recs]
    assert summary.near_upper == sum(rules.NEAR_UPPER in e and f for e, f in zip(engine, finite_scale))
    assert summary.near_lower == sum(rules.NEAR_LOWER in e and f for e, f in zip(engine, finite_scale))
    assert summary.non_finite == sum(rules.NON_FINITE in e for e in engine)
    # the plot shades exactly where the watch view shows the raw value beyond a bound
    hard_series = {r["bound"] for r in recs} == {"hard"}
    shaded = outside_mask(series).tolist()
    sides = [raw_side(r) != "" for r in recs]
    if hard_series:  # a series takes its latest bound kind; a mixed one is not a real run
        assert shaded == sides
    # beyond a hard bound with a gradient that cannot bring it back is pinned
    for r, side, kinds in zip(recs, sides, engine):
        g = r["grad"]
        if side and g is not None and math.isfinite(g) and g == 0.0 and math.isfinite(r["raw"]):
            assert rules.PINNED in kinds, r


def test_a_float32_ln100_on_the_float64_bound_is_at_it_in_every_view(tmp_path: Any) -> None:
    # open_clip clamps its float32 logit_scale in place onto ln(100): the stored value rounds up past it
    assert LN100_F32 > LN100
    rec = {"step": 9, "name": "logit_scale", "scale": LN100_F32, "raw": LN100_F32, "grad": 0.0, "min": 0.0,
           "max": LN100, "bound": "hard", "clamp_fraction": None, "warn_fraction": 0.9, "patience": 3}
    back = list(iter_history(_write(tmp_path, [rec])))
    assert raw_side(back[0]) == ""                               # watch: not '>'
    assert not outside_mask(collect_series(back)["logit_scale"]).any()  # plot: no outside shading
    assert rules.PINNED in holding_now(back[0]) == _engine_kinds(rec)  # at the bound, no gradient: pinned


def _overflow_run(tmp_path: Any) -> str:
    from scalewatch.monitor import AttentionBiasGenerator

    gen = AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0)
    opt = torch.optim.SGD(gen.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)  # the first steps overflow for real
    with ScaleWatcher(gen, log_dir=tmp_path, every_n_steps=1, grad_scaler=scaler, plot=False) as watcher:
        for step in range(3):
            opt.zero_grad()
            scaler.scale((gen(torch.ones(2, 4, 4)) * 1e30).sum()).backward()
            scaler.unscale_(opt)
            assert not watcher.step(step)  # no alert, overflow or not
            scaler.step(opt)
            scaler.update()
    return watcher.history_path


def test_a_grad_scaler_skip_is_no_non_finite_in_any_view(tmp_path: Any) -> None:
    """A real GradScaler overflow under ScaleWatcher: no alert, the line says skipped_step, no view says non_finite."""
    path = _overflow_run(tmp_path)
    back = list(iter_history(path))
    skipped = [r for r in back if r.get(rules.SKIPPED_STEP)]
    assert skipped and all(not math.isfinite(r["grad"]) for r in skipped)
    assert all(rules.NON_FINITE not in holding_now(r) for r in back)       # watch
    summary = ScaleSummary.of(next(iter(collect_series(back).values())))
    assert summary.non_finite == 0 and not summary.alerts                    # report
    # without the field (a loop that did not say it used a scaler) the same gradient is non_finite
    assert rules.NON_FINITE in holding_now({k: v for k, v in skipped[0].items() if k != rules.SKIPPED_STEP})


# ---- the engine imports no matplotlib ----------------------------------------------------


def test_the_engine_imports_no_matplotlib() -> None:
    code = "import scalewatch.callbacks.watcher, sys; assert 'matplotlib' not in sys.modules, 'matplotlib loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- the door kit --------------------------------------------------------------------------


def _settings_of(door: type, rename: Dict[str, str]) -> Dict[str, inspect.Parameter]:
    params = dict(inspect.signature(door.__init__).parameters)
    return {rename.get(name, name): p for name, p in params.items()}


@pytest.mark.parametrize("door, rename", [(ScaleWatcher, {}), (ScaleMonitor, {}), (ScaleMonitorCallback, {}),
                                          (ScaleMonitorHook, {"interval": "every_n_steps"}),
                                          (ScaleMonitorHandler, {})],
                         ids=["ScaleWatcher", "ScaleMonitor", "ScaleMonitorCallback", "ScaleMonitorHook",
                              "ScaleMonitorHandler"])
def test_every_door_signature_is_the_settings(door: type, rename: Dict[str, str]) -> None:
    params = _settings_of(door, rename)
    for f in dataclasses.fields(WatchSettings):
        assert f.name in params, f"{door.__name__} lacks the setting {f.name}"
        p = params[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        assert p.default == default, (door.__name__, f.name, p.default, default)
        assert p.annotation == f.type, (door.__name__, f.name, p.annotation, f.type)
        assert p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD  # explicit: jsonargparse and mmengine see it
    # and their docs come from the one description
    for name, text in SETTING_DOCS.items():
        assert f"{name}: {text.splitlines()[0]}" in door.__doc__, (door.__name__, name)


def _gen_watcher(tmp_path: Any, **kwargs: Any) -> ScaleWatcher:
    from scalewatch.monitor import AttentionBiasGenerator

    return ScaleWatcher(AttentionBiasGenerator(bias_scale=4.8), log_dir=tmp_path, plot=False, **kwargs)


def test_step_says_whether_it_read_and_will_read_agrees(tmp_path: Any) -> None:
    watcher = _gen_watcher(tmp_path, every_n_steps=3, on_saturation="stop")
    with watcher:
        for step in range(7):
            expected = watcher.will_read(step)
            result = watcher.step(step)
            assert isinstance(result, StepResult) and isinstance(result, list)
            assert result.read == expected == (step in (2, 5))
            assert not watcher.will_read(step)  # read once per step
            # bias_scale 4.8 > 0.9 x 5: near_upper fires at the first check, and with "stop" says so
            assert result.stop == (step == 2) == bool(result)
            if result.stop:
                break


def test_begin_continues_a_saved_state_only_when_training_does_not_start_at_the_first_step(tmp_path: Any) -> None:
    first = _gen_watcher(tmp_path, every_n_steps=2)
    with first:
        for step in range(6):
            first.step(step)
    saved = first.state_dict()
    fresh = _gen_watcher(tmp_path, every_n_steps=2)
    fresh.begin(0, saved)  # weights loaded, training from step 0: a new record
    assert fresh.last_step == -1 and fresh.checks == 0
    fresh.close()
    resumed = _gen_watcher(tmp_path / "b", every_n_steps=2)
    resumed.begin(4, saved)
    assert resumed.last_step == 5 and resumed.checks == 3
    resumed.close()


def test_attach_before_the_record_starts_and_not_after(tmp_path: Any) -> None:
    class Seen:
        def __init__(self) -> None:
            self.steps: List[int] = []

        def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
            self.steps.append(step)

    watcher = _gen_watcher(None, every_n_steps=2)
    seen = Seen()
    watcher.attach(log_dir=tmp_path, loggers=[seen], is_global_zero=True)
    with watcher:
        for step in range(4):
            watcher.step(step)
        with pytest.raises(RuntimeError, match="attach"):
            watcher.attach(log_dir=tmp_path)
    assert seen.steps == [1, 3] and watcher.history_path == str(tmp_path / "scalewatch_history.jsonl")
    other = _gen_watcher(None, every_n_steps=2)
    other.attach(log_dir=tmp_path / "r1", loggers=[Seen()], is_global_zero=False)
    assert other.sinks == []  # other ranks neither write nor alert


def test_the_pre_step_reader_reads_just_before_the_optimizer_steps(tmp_path: Any) -> None:
    from scalewatch.monitor import AttentionBiasGenerator

    gen = AttentionBiasGenerator(bias_scale=2.5)
    opt = torch.optim.SGD(gen.parameters(), lr=0.01)
    watcher = ScaleWatcher(gen, log_dir=tmp_path, every_n_steps=2, plot=False)
    results: List[StepResult] = []
    state = {"step": 0}
    handle = watcher.read_before_optimizer_step(opt, lambda: state["step"], on_result=results.append)
    raws_before: List[float] = []
    grads_before: List[float] = []
    with watcher:
        for step in range(4):
            state["step"] = step
            opt.zero_grad()
            gen(torch.ones(3, 3)).sum().backward()
            raws_before.append(float(gen.bias_scale.detach()))
            grads_before.append(float(gen.bias_scale.grad))
            opt.step()
    handle.remove()
    lines = list(iter_history(watcher.history_path))
    assert [r["step"] for r in lines] == [1, 3] and [r.read for r in results] == [True, True]
    # read before the update: the raw value recorded is the one the step started from
    assert [r["raw"] for r in lines] == pytest.approx([raws_before[1], raws_before[3]])
    assert [r["grad"] for r in lines] == pytest.approx([grads_before[1], grads_before[3]])
    assert raws_before[1] != raws_before[2]  # and the optimizer stepped after the reading


class _StepsWithoutHooks:
    """An optimizer that is no torch.optim.Optimizer (as DeepSpeed's ZeRO optimizers): SGD by hand, no step pre-hooks."""

    def __init__(self, params: List[torch.nn.Parameter], lr: float) -> None:
        self.params, self.lr, self.steps = params, lr, 0

    def step(self) -> None:
        with torch.no_grad():
            for p in self.params:
                p -= self.lr * p.grad
        self.steps += 1


def test_the_call_reader_reads_before_a_step_that_has_no_pre_hook_and_gives_it_back(tmp_path: Any) -> None:
    from scalewatch.monitor import AttentionBiasGenerator

    gen = AttentionBiasGenerator(bias_scale=2.5)
    opt = _StepsWithoutHooks(list(gen.parameters()), lr=0.01)
    assert not hasattr(opt, "register_step_pre_hook")
    watcher = ScaleWatcher(gen, log_dir=tmp_path, every_n_steps=2, plot=False)
    results: List[StepResult] = []
    state = {"step": 0}
    handle = watcher.read_before_call(opt, lambda: state["step"], on_result=results.append)
    raws_before: List[float] = []
    with watcher:
        for step in range(4):
            state["step"] = step
            gen.bias_scale.grad = None
            gen(torch.ones(3, 3)).sum().backward()
            raws_before.append(float(gen.bias_scale.detach()))
            opt.step()
    handle.remove()
    assert "step" not in vars(opt) and opt.steps == 4  # its own method again, and every step was taken
    lines = list(iter_history(watcher.history_path))
    assert [r["step"] for r in lines] == [1, 3] and [r.read for r in results] == [True, True]
    assert [r["raw"] for r in lines] == pytest.approx([raws_before[1], raws_before[3]])  # before the update
    opt.step()
    assert opt.steps == 5 and watcher.checks == 2  # removed: no reading any more


# ---- the columnar check path writes what the per-reading path writes -------------------------


def _mixed_model() -> torch.nn.Module:
    from scalewatch.monitor import AttentionBiasGenerator

    model = torch.nn.Module()
    model.gen = AttentionBiasGenerator(bias_scale=4.8)                          # near its upper bound
    model.heads = AttentionBiasGenerator(bias_scale=2.5, num_heads=4)           # per head, a module
    model.logit_scale = torch.nn.Parameter(torch.tensor(LN100_F32))             # at a one-sided bound
    model.temps = torch.nn.Parameter(torch.tensor([0.1, float("inf"), -2.0]))   # per element, non-finite
    model.frozen = torch.nn.Parameter(torch.tensor(1.0), requires_grad=False)   # no gradient
    return model


def test_the_columns_give_the_lines_keys_and_tensorboard_bytes_the_readings_give(tmp_path: Any) -> None:
    from tensorboard.compat.proto.summary_pb2 import Summary

    from scalewatch.dashboards.tensorboard_layout import scalars_event, scalars_summary
    from scalewatch.monitor.check_columns import ScaleLayout
    from scalewatch.monitor.history.encoding import column_lines, reading_lines
    from scalewatch.monitor.history.keys import column_metrics, reading_metrics
    from scalewatch.monitor.scale_reader import read_columns
    from scalewatch.monitor.summary import summarize, summarize_columns, summary_columns
    from scalewatch.monitor.watched_scale import find_bounded_scales, watch_parameters

    model = _mixed_model()
    params = {"logit_scale": {"min": None, "max": LN100, "display": "exp"}, "temps": (-1.0, 1.0),
              "frozen": (0.0, 2.0)}
    scales = find_bounded_scales(model) + watch_parameters(model, params)
    for m in (model.gen, model.heads):
        m.track_clamp_fraction = True
    (model.gen(torch.rand(3, 3) * 2 - 1).sum() + model.heads(torch.rand(4, 3, 3)).sum()
     + model.logit_scale * 2 + model.temps.sum()).backward()
    layout = ScaleLayout(scales)
    for _ in range(2):  # the second read takes the cached plan
        columns = read_columns(scales, 7, layout)
        readings = columns.readings()
        assert readings == read_scales_for(scales, 7)
        extra = {"warn_fraction": 0.9, "patience": 3, rules.SKIPPED_STEP: True}
        fired = {"gen": ["near_upper"], "temps[1]": ["non_finite"]}
        assert column_lines(columns, extra, fired) == reading_lines(readings, extra, fired)
        masks = condition_masks(readings, 0.9)
        summaries = summarize(readings, 0.9, masks=masks)
        assert summarize_columns(columns, masks) == summaries
        assert column_metrics(columns) == reading_metrics(readings)
        assert column_metrics(columns, summaries) == reading_metrics(readings, summaries)
        as_columns = summary_columns(columns, masks)
        assert column_metrics(columns, as_columns) == reading_metrics(readings, summaries)
        tensors = [t.tensor for t in summaries if t.elements > 1]
        wanted = [t for t in summaries if t.tensor in tensors]
        assert column_metrics(columns, summary_columns(columns, masks, tensors)) == reading_metrics(readings, wanted)
    metrics = reading_metrics(readings)
    reference = Summary()
    for tag, value in metrics.items():
        reference.value.add(tag=tag, simple_value=value)
    assert scalars_summary(metrics).SerializeToString() == reference.SerializeToString()
    assert scalars_event(metrics).summary == reference


def test_a_scales_own_record_fields_follow_the_checks_extra_on_each_of_its_lines() -> None:
    """An attention statistic's rows say ``"attention": STATISTIC`` themselves (``record_fields``):
    one history write for the whole check, each line what json.dumps writes for its record."""
    from scalewatch.monitor.check_columns import ScaleLayout
    from scalewatch.monitor.history.encoding import column_lines
    from scalewatch.monitor.scale_reader import read_columns
    from scalewatch.monitor.watched_scale import WatchedScale

    plain = WatchedScale(name="s", raw=torch.tensor(0.5), min=0.0, max=1.0, bound="soft")
    top = WatchedScale(name="m.max_logit", raw=torch.tensor([3.0, 31.0]), min=None, max=30.0, bound="soft")
    ent = WatchedScale(name="m.entropy", raw=torch.tensor([0.25, 1.5]), min=0.0, max=None, bound="soft")
    top.record_fields, ent.record_fields = {"attention": "max_logit"}, {"attention": "entropy"}
    scales = [plain, top, ent]
    columns = read_columns(scales, 9, ScaleLayout(scales))
    extra = {"warn_fraction": 0.9, "patience": 3}
    fired = {"m.max_logit[1]": ["near_upper"]}
    own = [{}, {"attention": "max_logit"}, {"attention": "max_logit"}, {"attention": "entropy"},
           {"attention": "entropy"}]
    expected = "".join(json.dumps(dict(r.to_record(), **extra, **o, alerts=fired.get(r.name, []))) + "\n"
                       for r, o in zip(columns.readings(), own))
    assert column_lines(columns, extra, fired) == expected
    with pytest.raises(ValueError, match="attention"):  # a check's extra may not say it again
        column_lines(columns, {"attention": "x"})


def test_the_in_place_cpu_read_follows_each_parameter_wherever_its_storage_goes() -> None:
    """0-dim CPU scales are read through numpy views kept from check to check: an in-place update,
    a ``p.data = ...`` and a ``set_`` (the storage moved) are all seen, gradients present or not."""
    from scalewatch.monitor import AttentionBiasGenerator
    from scalewatch.monitor.check_columns import ScaleLayout
    from scalewatch.monitor.scale_reader import read_columns
    from scalewatch.monitor.watched_scale import find_bounded_scales

    model = torch.nn.ModuleList(AttentionBiasGenerator(bias_scale=1.0 + i, min_scale=0.5, max_scale=5.0,
                                                       learnable_scale=i < 3)  # the last a buffer
                                for i in range(4))
    scales = find_bounded_scales(model)
    layout = ScaleLayout(scales)
    raws = [g.raw_scale for g in model]

    def check(step: int) -> None:
        assert read_columns(scales, step, layout).readings() == read_scales_for(scales, step)

    check(0)
    assert layout.cache["fast_gather"].in_place  # the path under test was taken
    for g in model:
        g.track_clamp_fraction = True
    sum(g(torch.rand(2, 3, 3) * 2 - 1).sum() for g in model).backward()
    check(1)
    with torch.no_grad():
        raws[0].add_(0.25)                       # in place: the same storage
        raws[1].data = torch.tensor(9.0)         # a new storage, clamped to 5 on the host
        raws[2].set_(torch.tensor(0.125))        # set_: the storage swapped under the same tensor
    raws[3].grad = None
    check(2)
    assert read_columns(scales, 3, layout).raw.tolist()[:3] == [1.25, 9.0, 0.125]
    raws[3].data = raws[3].data.view(torch.int32)  # a buffer's bytes retyped: read as the stacked read reads it
    check(4)
    assert read_columns(scales, 5, layout).raw[3] == float(raws[3].float()) and not layout.cache["fast_gather"].in_place


def test_tensorboard_event_bytes_are_protobufs_own_for_every_check(tmp_path: Any) -> None:
    """The event the TensorBoard sink queues is byte for byte ``Event(wall_time, step, summary)``
    serialised by protobuf, for each set of keys a watch gives (a gradient missing changes them),
    and TensorBoard reads every value back under its key."""
    from tensorboard.compat.proto.event_pb2 import Event
    from torch.utils.tensorboard import SummaryWriter

    from scalewatch.callbacks.logger_sinks import TensorBoardSink
    from scalewatch.dashboards.tensorboard_layout import event_bytes_writer, scalars_event_bytes, scalars_summary
    from scalewatch.monitor.check_columns import ScaleLayout
    from scalewatch.monitor.history.keys import check_metrics
    from scalewatch.monitor.scale_reader import read_columns
    from scalewatch.monitor.watched_scale import find_bounded_scales, watch_parameters
    from tests.readback import tensorboard_scalars

    model = _mixed_model()
    scales = find_bounded_scales(model) + watch_parameters(model, {"temps": (-1.0, 1.0), "frozen": (0.0, 2.0)})
    layout = ScaleLayout(scales)
    writer = SummaryWriter(str(tmp_path))
    assert event_bytes_writer(writer) is not None  # the direct path is the one under test
    sink = TensorBoardSink(writer)
    logged: Dict[int, Dict[str, float]] = {}
    for step in (0, 1, 2, 3):
        if step == 1:
            (model.gen(torch.rand(3, 3)).sum() + model.temps.sum()).backward()
        if step == 3:
            for p in model.parameters():
                p.grad = None
        metrics = check_metrics(read_columns(scales, step, layout))
        event = Event(wall_time=1.25e9, step=step, summary=scalars_summary(metrics.as_dict()))
        assert scalars_event_bytes(metrics, step, 1.25e9) == event.SerializeToString()
        sink.log_check(metrics, step)
        logged[step] = metrics.as_dict()
    assert scalars_event_bytes(metrics, -3, 2.5) == Event(wall_time=2.5, step=-3, summary=event.summary
                                                           ).SerializeToString()
    writer.close()
    assert len({frozenset(m) for m in logged.values()}) == 2  # with and without gradients
    for key in logged[1]:
        want = [(step, m[key]) for step, m in logged.items() if key in m]
        got = tensorboard_scalars(str(tmp_path), key)
        assert [s for s, _ in got] == [s for s, _ in want], key
        assert np.allclose([v for _, v in got], np.float32([v for _, v in want]), equal_nan=True), key


def read_scales_for(scales: Any, step: int) -> List[Reading]:
    """What each scale holds, read tensor by tensor (no gather, no host clamp): the reference."""
    out = []
    for s in scales:
        n = s.numel
        values = lambda t: t.detach().float().reshape(-1).tolist()  # noqa: E731
        raw, effective = values(s.raw), values(s.effective())
        grad = [None] * n if s.raw.grad is None else values(s.raw.grad)
        frac = s.clamp_fraction()
        fracs = [None] * n if frac is None else (values(frac) if frac.numel() == n > 1 else values(frac) * n)
        for i, name in enumerate(s.element_names()):
            out.append(Reading(step=step, name=name, scale=effective[i], raw=raw[i], grad=grad[i], min=s.min,
                               max=s.max, bound=s.bound, clamp_fraction=fracs[i],
                               tensor=None if n == 1 else s.name, index=None if n == 1 else i, display=s.display))
    return out


@given(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.floats(-800, 800)),
                min_size=1, max_size=20))
@settings(max_examples=50, deadline=None)
def test_the_array_display_transform_is_the_scalar_one(values: List[float]) -> None:
    """Plots and per-tensor series turn whole columns; report, watch and alerts turn one value: the same numbers."""
    for display in display_module.DISPLAYS:
        column = display_module.display_values(np.asarray(values, dtype=np.float64), display)
        one_by_one = [display_module.display_value(v, display) for v in values]
        assert np.array_equal(column, np.asarray(one_by_one, dtype=np.float64), equal_nan=True)
    with pytest.raises(ValueError, match="display"):
        display_module.display_values(np.zeros(2), "log")


def test_every_view_writes_a_number_one_way() -> None:
    """The alert message, the watch line, the report cell and the advice all write 4.605 for ln 100."""
    ln100 = math.log(100)
    assert display_module.format_number(ln100) == "4.605"
    assert display_module.format_number(math.nan) == "nan" and display_module.format_number(-math.inf) == "-inf"
    assert display_module.format_number(None) == "-" and display_module.format_number(None, missing="None") == "None"
    reading = Reading(name="s", step=3, scale=ln100, raw=ln100, grad=None, min=0.0, max=ln100)
    message = SaturationTracker(warn_fraction=0.9, patience=1).update_all([reading])[0].message
    assert "scale=4.605" in message and "grad=None" in message
    line = plain_line(dict(reading.to_record(), checks=1))
    assert "4.605" in line and "grad=-" in line
