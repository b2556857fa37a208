"""Advice from the record (monitor/advice.py): generated trajectories give exactly the expected advice or none;
every view shows it (report text and JSON, compare's column, the pinned notification, the end of fit's log);
and on the demo's fast-scale-lr run the advice works: re-run with ``bound="soft"`` the scale no longer pins.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, List, Optional

import pytest
import torch

from scalewatch.dashboards import cli
from scalewatch.dashboards.advice_view import history_series_and_advice, records_series_and_advice
from scalewatch.dashboards.series import collect_series
from scalewatch.monitor import advice as adv
from scalewatch.monitor.advice import (NEAR_HIGH, NEAR_LOW, NOT_FINITE, PINNED_HIGH, PINNED_LOW, QUIET, alert_advice,
                                       run_advice)
from scalewatch.monitor.saturation import Alert, SaturationTracker
from scalewatch.monitor.reading import Reading

LN100 = math.log(100)


def trajectory(name: str, raws: List[float], grads: List[Optional[float]], lo: Optional[float] = 0.5,
               hi: Optional[float] = 5.0, bound: str = "hard", every: int = 10, display: str = "identity",
               skipped: Optional[set] = None, clamp_fraction: Optional[float] = None, **extra: Any) -> List[Dict]:
    """History records of one scale, readings at steps every-1, 2*every-1, ...; alerts as the engine gives them."""
    tracker = SaturationTracker(0.9, 3)
    out = []
    for i, (raw, grad) in enumerate(zip(raws, grads)):
        if bound == "hard":
            scale = raw if not math.isfinite(raw) else min(max(raw, lo if lo is not None else -math.inf),
                                                            hi if hi is not None else math.inf)
        elif lo is None or hi is None:  # a statistic (#19's attention records): the value itself
            scale = raw
        else:
            scale = lo + (hi - lo) / (1 + math.exp(-raw))
        step = (i + 1) * every - 1
        is_skipped = bool(skipped and i in skipped)
        r = Reading(step=step, name=name, scale=scale, raw=raw, grad=grad, min=lo, max=hi, bound=bound,
                    display=display, clamp_fraction=clamp_fraction, **extra)
        alerts = [a.kind for a in tracker.update(r, grad_must_be_finite=not is_skipped)]
        rec = dict(r.to_record(), warn_fraction=0.9, patience=3, alerts=alerts)
        if is_skipped:
            rec["skipped_step"] = True
        out.append(rec)
    return out


def advise(records: List[Dict], generators=()) -> List[adv.Advice]:
    return run_advice(collect_series(records).values(), generators)


def kinds(advice: List[adv.Advice]) -> List[str]:
    return [a.kind for a in advice]


# ---- generated trajectories ---------------------------------------------------------------


def test_pinned_high_names_since_when_share_reach_and_the_three_changes() -> None:
    raws = [2.5, 3.5, 4.6, 5.3, 5.8, 6.2, 6.4, 6.5]
    grads = [-0.2, -0.2, -0.2, 0.0, 0.0, 0.0, 0.0, 0.0]
    advice = advise(trajectory("head.gen", raws, grads, clamp_fraction=0.1), generators={"head.gen"})
    assert kinds(advice) == [PINNED_HIGH]
    a = advice[0]
    assert a.step == 39 and a.scale == "head.gen"
    assert "pinned at its upper bound 5 since step 39, still at the last check, pinned alert at step 59" in a.happened
    assert "5 of 8 checks (62%)" in a.happened
    assert "raw parameter went to 6.5, 1.5 beyond the bound" in a.happened
    assert "gradient exactly 0 at all 5" in a.happened
    assert 'bound="soft"' in a.change and "a wider max_scale (e.g. 8, the aggressive preset's" in a.change
    assert "±min(5, max_scale) = ±5" in a.change and "parameter group" in a.change
    assert a.short == "pinned high: soft bound"


def test_pinned_low_and_a_released_pin() -> None:
    raws = [1.0, 0.6, 0.4, 0.3, 0.2, 0.7, 1.2]
    grads = [0.3, 0.3, 0.0, 0.0, 0.0, -0.5, -0.5]
    advice = advise(trajectory("s", raws, grads))
    assert kinds(advice) == [PINNED_LOW]
    assert "pinned at its lower bound 0.5 from step 29 (released by step 69)" in advice[0].happened
    assert "a lower lower bound (below 0.5)" in advice[0].change
    assert "min_scale" not in advice[0].change  # not a bias generator's


def test_oscillating_near_the_upper_bound_never_pinned() -> None:
    raws = [4.0, 4.6, 4.4, 4.7, 4.3, 4.6, 4.2, 4.4]
    grads = [-0.1, 0.1, -0.1, 0.1, -0.1, 0.1, -0.1, 0.1]
    advice = advise(trajectory("s", raws, grads))
    assert kinds(advice) == [NEAR_HIGH]
    assert "near its upper bound 5 at 3 of 8 checks (38%) from step 19, in 3 separate stretches" in advice[0].happened
    assert "never pinned" in advice[0].happened and "nothing needs to change" in advice[0].change


def test_a_quiet_run_gets_one_line_and_no_change() -> None:
    raws = [2.5, 2.6, 2.55, 2.7, 2.72]
    advice = advise(trajectory("s", raws, [0.01] * 5))
    assert kinds(advice) == [QUIET] and adv.is_quiet(advice)
    assert advice[0].text == "s: stayed well inside [0.5, 5] (2.5 to 2.72), no rule ever held: nothing to change"
    assert advice[0].change == ""


def test_non_finite_counts_the_grad_scaler_skips_apart() -> None:
    raws = [2.5, 2.6, 2.7, math.nan, math.nan]
    grads = [0.1, math.inf, 0.1, 0.1, math.nan]
    advice = advise(trajectory("s", raws, grads, skipped={1}))
    assert kinds(advice) == [NOT_FINITE]
    assert "non-finite at 2 of 5 checks (40%), first at step 39 (scale=nan, raw=nan, grad=0.1)" in advice[0].happened
    assert "1 more check(s) had a non-finite gradient on steps a GradScaler skipped" in advice[0].happened
    # skips alone are no advice: the scale stayed inside
    quiet = advise(trajectory("s", [2.5, 2.6, 2.7], [0.1, math.inf, 0.1], skipped={1}))
    assert kinds(quiet) == [QUIET] and "1 GradScaler-skipped check(s), by design" in quiet[0].happened


def test_one_sided_exp_scale_in_shown_units() -> None:
    """open_clip's logit_scale: clamped in place at ln 100 after the step, the gradient keeps pushing up."""
    raws = [3.0, 4.0, LN100, LN100, LN100, LN100]
    grads = [-0.5, -0.5, -0.4, -0.4, -0.4, -0.4]
    advice = advise(trajectory("logit_scale", raws, grads, lo=None, hi=LN100, display="exp"))
    assert kinds(advice) == [PINNED_HIGH]
    a = advice[0]
    assert "pinned at its upper bound 100 (raw 4.605)" in a.happened
    assert "gradient pushing further out at 4 (a clamp after the step undoes every update)" in a.happened
    assert "lower" not in a.happened and "min" not in a.change  # one-sided: nothing about a lower bound
    quiet = advise(trajectory("logit_scale", [2.0, 2.3], [0.1, 0.1], lo=None, hi=LN100, display="exp"))
    assert "stayed well inside (0, 100] (7.389 to 9.974)" in quiet[0].happened


def test_soft_bound_near_its_edge_is_not_told_to_go_soft() -> None:
    advice = advise(trajectory("s", [2.0, 3.0, 3.5, 3.8], [-0.1] * 4, bound="soft"))
    assert kinds(advice) == [NEAR_HIGH]
    assert 'bound="soft"' not in advice[0].change


def test_per_head_tensor_names_its_elements_once() -> None:
    records: List[Dict] = []
    for h in range(4):
        raws = [2.5, 4.8, 5.5, 6.0, 6.5] if h in (1, 3) else [2.5, 2.6, 2.7, 2.6, 2.5]
        grads = [-0.3, -0.3, 0.0, 0.0, 0.0] if h in (1, 3) else [0.0] * 5
        records += trajectory(f"attn.s[{h}]", raws, grads, tensor="attn.s", index=h)
    records.sort(key=lambda r: (r["step"], r["index"]))
    advice = advise(records)
    assert kinds(advice) == [PINNED_HIGH]
    assert advice[0].scale == "attn.s" and advice[0].elements == (1, 3)
    assert advice[0].happened.startswith("elements [1, 3] (2 of 4); e.g. [1] pinned at its upper bound 5")
    quiet = advise([r for r in records if r["index"] in (0, 2)])
    assert kinds(quiet) == [QUIET] and quiet[0].happened.startswith("all 2 elements stayed well inside")


def test_attention_max_logit_near_its_threshold_gets_qk_clip_with_that_tau() -> None:
    """#19's per-head records (M.max_logit[h] against its threshold τ as max): QK-layernorm or QK-clip with τ."""
    records: List[Dict] = []
    for h, peak in enumerate([20.0, 95.0, 120.0]):
        values = [10.0, peak * 0.8, peak]
        records += trajectory(f"blocks.0.attn.max_logit[{h}]", values, [None] * 3, lo=None, hi=100.0,
                              bound="soft", tensor="blocks.0.attn.max_logit", index=h)
    advice = advise(records)
    assert kinds(advice) == [adv.MAX_LOGIT]
    a = advice[0]
    assert "max logit past its threshold τ=100: up to 120 at step 29" in a.happened and "heads [1, 2]" in a.happened
    assert "QK-clip with τ=100" in a.change and "QK-layernorm" in a.change


def test_entropy_collapse_is_told_only_while_a_scale_pins() -> None:
    entropy = trajectory("m.entropy[0]", [1.2, 0.8, 0.3, 0.1], [None] * 4, lo=None, hi=None, bound="soft",
                         tensor="m.entropy", index=0)
    pinned = trajectory("m.gen", [4.0, 5.5, 6.0, 6.2], [-0.2, 0.0, 0.0, 0.0])
    assert adv.ENTROPY_COLLAPSE in kinds(advise(entropy + pinned))
    assert "fell from 1.2 to 0.1 nats while m.gen pinned" in advise(entropy + pinned)[1].happened
    quiet = trajectory("m.gen", [2.5, 2.6, 2.5, 2.6], [0.1] * 4)
    assert adv.ENTROPY_COLLAPSE not in kinds(advise(entropy + quiet))


def test_the_pinned_alert_gets_one_line_of_what_to_do() -> None:
    from scalewatch.callbacks.notify_message import format_message

    alert = Alert("pinned", "head.gen", 24, 5.0, 5.251, 0.0, 0.5, 5.0, "m")
    line = alert_advice(alert)
    # specific, as the report's advice: the scale, its bound, the numbers, the change with its numbers
    assert line == ("what to do: head.gen pinned at its upper bound 5 at step 24 (raw 5.251, 0.251 beyond the "
                    "bound; gradient exactly 0: the hard clamp cuts it) → " + adv.pinned_change("high", 5.0, 0.5, None))
    assert 'bound="soft"' in line and "a wider upper bound (above 5; an AttentionBiasGenerator's max_scale=8, the " \
        "aggressive preset's, its bias itself still clamped to ±min(5, max_scale) = ±5)" in line
    low = alert_advice(Alert("pinned", "m.temp", 7, 0.5, 0.3, 0.2, 0.5, 5.0, "m"))
    assert low.startswith("what to do: m.temp pinned at its lower bound 0.5 at step 7 (raw 0.3, 0.2 beyond the "
                          "bound; gradient 0.2 pushing further out") and "a lower lower bound (below 0.5)" in low
    one_sided = alert_advice(Alert("pinned", "attn.logit_scale[2]", 9, 4.605, 4.7, 0.0, None, 4.605, "m"))
    assert 'bound="soft"' not in one_sided and "AttentionBiasGenerator" not in one_sided
    assert "a wider upper bound (above 4.605)" in one_sided
    _, body = format_message("tb/version_0", 24, [alert], {})
    assert f"→ {line}" in body.splitlines()
    near = Alert("near_upper", "head.gen", 24, 4.6, 4.6, -0.1, 0.5, 5.0, "m")
    assert alert_advice(near) == "" and "what to do" not in format_message("r", 24, [near], {})[1]


def test_bias_edge_is_the_generators_clamp() -> None:
    from scalewatch.monitor.attention_bias import SOFTMAX_EDGE

    assert adv.BIAS_EDGE == SOFTMAX_EDGE


# ---- every view shows it -------------------------------------------------------------------


def _write(path: Any, records: List[Dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_report_text_and_json_show_the_advice(tmp_path: Any, capsys: Any) -> None:
    records = trajectory("head.gen", [2.5, 4.6, 5.3, 5.8, 6.2], [-0.2, -0.2, 0.0, 0.0, 0.0], clamp_fraction=0.2)
    path = _write(tmp_path / "scalewatch_history.jsonl", records)
    assert cli.main(["report", path]) == 0
    out = capsys.readouterr().out
    assert "\nadvice:\n  head.gen: pinned at its upper bound 5 since step 29" in out
    assert '  → bound="soft"' in out and "±min(5, max_scale) = ±5" in out  # a generator: clamp_fraction recorded
    assert cli.main(["report", path, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["advice"]
    assert [a["kind"] for a in got] == [PINNED_HIGH] and got[0]["scale"] == "head.gen" and got[0]["step"] == 29
    quiet = _write(tmp_path / "q.jsonl", trajectory("s", [2.5, 2.6], [0.1, 0.1]))
    assert cli.main(["report", quiet, "--json"]) == 0
    assert [a["kind"] for a in json.loads(capsys.readouterr().out)["advice"]] == [QUIET]


def test_history_and_records_agree(tmp_path: Any) -> None:
    records = trajectory("s", [2.5, 0.4, 0.3, 0.2, 0.1], [0.1, 0.0, 0.0, 0.0, 0.0])
    path = _write(tmp_path / "scalewatch_history.jsonl", records)
    _, from_file = history_series_and_advice(path)
    _, from_records = records_series_and_advice(records)
    assert [a.to_json() for a in from_file] == [a.to_json() for a in from_records]
    assert kinds(from_file) == [PINNED_LOW]


def test_compare_has_a_short_advice_column(tmp_path: Any, capsys: Any) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _write(tmp_path / "a" / "scalewatch_history.jsonl", trajectory("g", [2.5, 4.8, 5.5, 6.0, 6.5],
                                                                 [-0.3, -0.3, 0.0, 0.0, 0.0]))
    _write(tmp_path / "b" / "scalewatch_history.jsonl", trajectory("g", [2.5, 2.6, 2.7], [0.1] * 3))
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("run "))
    assert header.split()[-2:] == ["advice", "val/loss"]
    assert "pinned high: soft bound" in next(line for line in lines if line.startswith("a "))
    assert next(line for line in lines if line.startswith("b ")).split()[-2:] == ["-", "-"]


def test_end_of_fit_logs_the_advice_once(tmp_path: Any, caplog: Any) -> None:
    from scalewatch.callbacks import ScaleWatcher
    from scalewatch.monitor import AttentionBiasGenerator

    model = torch.nn.Module()
    model.gen = AttentionBiasGenerator(bias_scale=4.0, min_scale=0.5, max_scale=5.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    weights = torch.ones(2, 4, 4)
    with caplog.at_level(logging.INFO, logger="scalewatch"):
        with ScaleWatcher(model, log_dir=tmp_path, every_n_steps=2, plot=False, notify=[]) as watcher:
            for step in range(16):
                (-model.gen(weights).mean()).backward()
                watcher.step(step)
                opt.step()
                opt.zero_grad()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("scalewatch advice:")]
    assert len(lines) == 2, lines  # what happened, then what to change: once
    assert lines[0].startswith("scalewatch advice: gen: pinned at its upper bound 5 since step")
    assert "a wider max_scale (e.g. 8, the aggressive preset's" in lines[1]


def test_end_of_fit_logs_the_most_urgent_advice_and_says_where_the_rest_is(tmp_path: Any, caplog: Any) -> None:
    from scalewatch.callbacks import ScaleWatcher
    from scalewatch.callbacks.advice_log import MAX_LOGGED_ADVICE
    from scalewatch.monitor import AttentionBiasGenerator

    model = torch.nn.Module()
    model.gens = torch.nn.ModuleList(AttentionBiasGenerator(bias_scale=4.0, min_scale=0.5, max_scale=5.0)
                                     for _ in range(MAX_LOGGED_ADVICE + 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    weights = torch.ones(2, 4, 4)
    with caplog.at_level(logging.INFO, logger="scalewatch"):
        with ScaleWatcher(model, log_dir=tmp_path, every_n_steps=2, plot=False, notify=[]) as watcher:
            for step in range(16):
                sum(-g(weights).mean() for g in model.gens).backward()
                watcher.step(step)
                opt.step()
                opt.zero_grad()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("scalewatch advice:")]
    happened = [line for line in lines if ": pinned at its upper bound" in line]
    assert len(happened) == MAX_LOGGED_ADVICE, lines
    assert lines[-1] == f"scalewatch advice: ... and 5 more pieces of advice: scalewatch report {tmp_path}"


# ---- the demo: the advice works -----------------------------------------------------------------


@pytest.mark.slow
def test_demo_fast_scale_lr_gets_the_soft_bound_advice_and_soft_no_longer_pins(tmp_path: Any, capsys: Any) -> None:
    from test_examples import CONFIGS, FAST, run_clis

    bounds = ("hard", "soft")
    for bound in bounds:
        (tmp_path / bound).mkdir()
    run_clis([(["fit", "--config", os.path.join(CONFIGS, "conservative.yaml"), "--config",
                os.path.join(CONFIGS, "fast-scale-lr.yaml"), "--trainer.max_steps", "60", "--trainer.logger",
                "[]", "--model.bound", bound, *FAST], str(tmp_path / bound)) for bound in bounds])
    runs = {}
    for bound in bounds:
        assert cli.main(["report", str(tmp_path / bound), "--json"]) == 0
        runs[bound] = json.loads(capsys.readouterr().out)
    hard = runs["hard"]["advice"]
    assert hard[0]["kind"] == PINNED_HIGH and hard[0]["scale"] == "fusion_attention.attention_bias_generator"
    assert hard[0]["change"].startswith('bound="soft"')
    assert "pinned" in {a["kind"] for a in runs["hard"]["alerts"]}
    # the advice taken: the same run with bound="soft" keeps its gradient and never pins
    assert "pinned" not in {a["kind"] for a in runs["soft"]["alerts"]}
    assert {a["kind"] for a in runs["soft"]["advice"]} <= {NEAR_HIGH, QUIET}
