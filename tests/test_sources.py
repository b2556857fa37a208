"""Reading a real run back from its history, TensorBoard events and metrics.csv; report numbers; the follower."""
from __future__ import annotations

import json
import math
import os
import shutil
from typing import Any, Dict, List

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from models import DriftModel
from scalewatch.callbacks import ScaleMonitor
from scalewatch.dashboards.report import summarize_records
from scalewatch.dashboards.sources import (CSV, HISTORY, TENSORBOARD, SourceError, find_source, infer_bound,
                                           parse_key, torn_tail)
from scalewatch.dashboards.watch import HistoryFollower, LiveState, holding_now
from scalewatch.monitor import HISTORY_FILENAME, AttentionBiasGenerator, iter_history, lower_warning, upper_warning

UP = "head.attention_bias_generator"
DOWN = "head.low"


class TwoWayDrift(DriftModel):
    """DriftModel plus a second generator the loss pushes down: one scale saturates high, one low."""

    def __init__(self) -> None:
        super().__init__(lr=2.0)
        self.head.low = AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        (x,) = batch
        weights = torch.sigmoid(self.proj(x)).unsqueeze(-1).expand(-1, -1, 8)
        return loss + self.head.low(weights).float().mean()


def train_run(root: str, max_steps: int = 30) -> Dict[str, str]:
    """Train TwoWayDrift with ScaleMonitor, TensorBoard and CSV loggers under ``root``; return the log dirs."""
    tb = TensorBoardLogger(root, name="tb")
    csv_logger = CSVLogger(root, name="csv")
    trainer = pl.Trainer(default_root_dir=root, max_steps=max_steps, log_every_n_steps=2, logger=[tb, csv_logger],
                         callbacks=[ScaleMonitor(every_n_steps=2)], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(TwoWayDrift())
    return {"root": root, "tb": tb.log_dir, "csv": csv_logger.log_dir,
            "history": os.path.join(tb.log_dir, HISTORY_FILENAME)}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Dict[str, str]:
    return train_run(str(tmp_path_factory.mktemp("sources")))


def _by_key(records: List[Dict[str, Any]]) -> Dict[Any, Dict[str, Any]]:
    return {(r["step"], r["name"]): r for r in records}


def test_the_run_saturates_both_ways(run):
    hist = list(iter_history(run["history"]))
    kinds = {(r["name"], k) for r in hist for k in r["alerts"]}
    assert {(UP, "near_upper"), (UP, "pinned"), (DOWN, "near_lower"), (DOWN, "pinned")} <= kinds


def test_find_source_prefers_the_history_and_finds_it_below_a_parent(run):
    src = find_source(run["root"])
    assert (src.kind, src.path) == (HISTORY, run["history"])
    assert find_source(run["root"], kind=TENSORBOARD).path == run["tb"]
    assert find_source(run["root"], kind=CSV).path == os.path.join(run["csv"], "metrics.csv")


@pytest.mark.parametrize("kind", [TENSORBOARD, CSV])
def test_logger_sources_give_the_history_records(run, kind):
    hist = list(iter_history(run["history"]))
    src = find_source(run["root"], kind=kind)
    got = list(src.records())
    assert len(got) == len(hist)
    got_by = _by_key(got)
    for h in hist:
        g = got_by[(h["step"], h["name"])]
        for field in ("scale", "raw", "grad", "min", "max", "clamp_fraction"):
            assert g[field] == pytest.approx(h[field], rel=1e-6, abs=1e-12), (kind, field, h["step"])
        assert g["bound"] == h["bound"] == "hard"
        assert g["alerts"] == h["alerts"], (kind, h["step"], h["name"])  # recomputed with the same rules
    assert not src.problems.torn_last_line and not src.problems.bad_count


def test_several_histories_pick_the_newest_and_say_so(run, tmp_path):
    older = tmp_path / "a" / "version_0"
    newer = tmp_path / "b" / "version_1"
    for d in (older, newer):
        d.mkdir(parents=True)
        shutil.copy(run["history"], d / HISTORY_FILENAME)
    os.utime(older / HISTORY_FILENAME, (1, 1))
    src = find_source(str(tmp_path))
    assert src.path == str(newer / HISTORY_FILENAME)
    assert "newest of 2" in src.describe()


def test_missing_and_empty_places_are_one_line_errors(tmp_path):
    with pytest.raises(SourceError, match="no such file or directory"):
        find_source(str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="no scalewatch history found") as err:
        find_source(str(tmp_path))
    assert "\n" not in str(err.value)


def test_report_numbers_match_the_history(run):
    hist = list(iter_history(run["history"]))
    summaries = {s.name: s for s in summarize_records(hist)}
    for name in (UP, DOWN):
        mine = [r for r in hist if r["name"] == name]
        s = summaries[name]
        values = [r["scale"] for r in mine]
        assert (s.last_scale, s.scale_min, s.scale_max) == (values[-1], min(values), max(values))
        assert s.readings == len(mine) and s.last_step == mine[-1]["step"]
        assert s.near_upper == sum(v > upper_warning(5.0, 0.9) for v in values)
        assert s.near_lower == sum(v < lower_warning(0.5, 5.0, 0.9) for v in values)
        assert s.alerts == [(r["step"], k, r["scale"]) for r in mine for k in r["alerts"]]
    assert summaries[UP].near_upper > 0 and summaries[DOWN].near_lower > 0


def test_parse_key_and_infer_bound():
    assert parse_key("scalewatch/head.attention_bias_generator/raw") == ("head.attention_bias_generator", "raw")
    assert parse_key("scalewatch/a/b/scale") == ("a/b", "scale")
    assert parse_key("scalewatch/plot") is None and parse_key("loss") is None
    assert infer_bound(5.0, 5.5, 0.5, 5.0) == "hard"
    assert infer_bound(4.66, 2.5, 0.5, 5.0) == "soft"


def test_torn_tail_is_seen_cheaply(run, tmp_path):
    path = tmp_path / HISTORY_FILENAME
    shutil.copy(run["history"], path)
    assert not torn_tail(str(path))
    with open(path, "a") as f:
        f.write('{"step": 99, "name": "x", "sca')
    assert torn_tail(str(path))


def test_follower_holds_a_torn_line_until_it_completes(run, tmp_path):
    lines = open(run["history"]).read().splitlines(keepends=True)
    path = tmp_path / HISTORY_FILENAME
    path.write_text("".join(lines[:4]))
    follower = HistoryFollower(str(path))
    assert not follower.check()
    assert [r["step"] for r in follower.read()] == [json.loads(x)["step"] for x in lines[:4]]
    with open(path, "a") as f:
        f.write(lines[4][:17])
    assert list(follower.read()) == [] and follower.waiting_for_rest
    with open(path, "a") as f:
        f.write(lines[4][17:] + lines[5])
    assert [json.loads(json.dumps(r)) for r in follower.read()] == [json.loads(lines[4]), json.loads(lines[5])]
    assert not follower.waiting_for_rest and follower.bad_lines == 0


def test_follower_starts_over_when_the_file_is_cut_back_or_replaced(run, tmp_path):
    lines = open(run["history"]).read().splitlines(keepends=True)
    path = tmp_path / HISTORY_FILENAME
    path.write_text("".join(lines[:6]) + lines[6][:10])
    follower = HistoryFollower(str(path))
    follower.check()
    assert len(list(follower.read())) == 6
    # the writer cuts its torn tail before appending: nothing read is lost, nothing repeats
    with open(path, "r+") as f:
        f.truncate(len("".join(lines[:6])))
    assert not follower.check()
    with open(path, "a") as f:
        f.write(lines[6])
    assert [r["step"] for r in follower.read()] == [json.loads(lines[6])["step"]]
    # resume cuts the history back (atomic replace): read again from the start
    tmp = tmp_path / "new.jsonl"
    tmp.write_text("".join(lines[:2]))
    os.replace(tmp, path)
    assert follower.check()
    assert len(list(follower.read())) == 2


def test_live_state_and_conditions_follow_the_rules(run):
    state = LiveState()
    for r in iter_history(run["history"]):
        state.add(r)
    last = state.scales[UP].last
    assert "near_upper" in holding_now(last) and "pinned" in holding_now(last)
    assert "near_lower" in holding_now(state.scales[DOWN].last)
    assert state.alert_count == sum(len(r["alerts"]) for r in iter_history(run["history"]))
    nan = dict(last, raw=math.nan)
    # As the engine judges it (one rule book): the scale is still near its bound, the raw value is not finite.
    assert holding_now(nan) == ["near_upper", "non_finite"]
