"""Non-finite values: training goes on, one `non_finite` alert, the value recorded as such,
and TensorBoard, CSV, W&B (offline) and the plot all cope."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

import pytest
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from scalewatch.callbacks import PLOT_FILENAME, ScaleMonitor, metric_key
from scalewatch.dashboards import plot_history
from scalewatch.monitor import HISTORY_FILENAME, iter_history

from .support import (GEN, BlowUpModel, assert_png, csv_series, make_trainer, read_csv_metrics, read_jsonl, read_tb,
                      read_wandb, tb_series, wandb_series)

BLOWUP_STEP = 3
MAX_STEPS = 8


@dataclass
class BlownRun:
    kind: str
    root: Path
    log_dir: Path
    csv_dir: Path
    global_step: int
    alerts: List[Any]
    records: List[Dict[str, Any]]
    log_messages: List[str] = field(default_factory=list)


def _train(kind: str, root: Path) -> BlownRun:
    import wandb

    alerts: List[Any] = []
    tb = TensorBoardLogger(str(root), name="tb", version=0)
    csv_logger = CSVLogger(str(root), name="csv", version=0)
    wb = WandbLogger(save_dir=str(root), offline=True, project="scalewatch-reliability")
    trainer = make_trainer(root, max_steps=MAX_STEPS, logger=[tb, csv_logger, wb],
                           callbacks=[ScaleMonitor(every_n_steps=1, alert_callback=alerts.append)])
    messages: List[str] = []
    handler = logging.Handler()
    handler.emit = lambda rec: messages.append(rec.getMessage())  # type: ignore[method-assign]
    logging.getLogger("scalewatch").addHandler(handler)
    try:
        trainer.fit(BlowUpModel(blowup=kind, blowup_step=BLOWUP_STEP, lr=0.1))
    finally:
        logging.getLogger("scalewatch").removeHandler(handler)
        wandb.finish()
    log_dir = Path(tb.log_dir)
    return BlownRun(kind=kind, root=root, log_dir=log_dir, csv_dir=Path(csv_logger.log_dir),
                    global_step=trainer.global_step, alerts=alerts,
                    records=read_jsonl(log_dir / HISTORY_FILENAME), log_messages=messages)


@pytest.fixture(scope="module", params=["inf", "nan"])
def blown(request, tmp_path_factory) -> BlownRun:
    return _train(request.param, tmp_path_factory.mktemp(f"blowup_{request.param}"))


def _by_step(records):
    return {r["step"]: r for r in records if r["name"] == GEN}


def test_training_goes_on(blown):
    assert blown.global_step == MAX_STEPS
    assert sorted(_by_step(blown.records)) == list(range(MAX_STEPS))


def test_exactly_one_non_finite_alert(blown):
    kinds = [a.kind for a in blown.alerts]
    assert kinds.count("non_finite") == 1, kinds
    alert = next(a for a in blown.alerts if a.kind == "non_finite")
    assert alert.step == BLOWUP_STEP and alert.name == GEN
    # in the history: on that reading's line, and on no other
    assert [(r["step"]) for r in blown.records if "non_finite" in r["alerts"]] == [BLOWUP_STEP]
    # and in Python logging
    assert sum("not finite" in m for m in blown.log_messages) == 1, blown.log_messages


def test_values_are_recorded_as_non_finite(blown):
    by_step = _by_step(blown.records)
    for step in range(BLOWUP_STEP):
        r = by_step[step]
        assert all(math.isfinite(r[k]) for k in ("scale", "raw", "grad")), r
    at = by_step[BLOWUP_STEP]
    after = by_step[BLOWUP_STEP + 1]
    assert math.isfinite(at["raw"])
    if blown.kind == "inf":
        assert at["grad"] == -math.inf            # -push * mean(w) * inf
        assert after["raw"] == math.inf           # SGD: raw - lr * (-inf)
        assert after["scale"] == 5.0              # clamp(inf) = max
    else:
        assert math.isnan(at["grad"])
        assert math.isnan(after["raw"]) and math.isnan(after["scale"])


def test_history_lines_use_json_tokens(blown):
    """Non-finite numbers are written as NaN / Infinity tokens that json (and iter_history) read back."""
    text = (blown.log_dir / HISTORY_FILENAME).read_text()
    token = "-Infinity" if blown.kind == "inf" else "NaN"
    line = next(ln for ln in text.splitlines() if json.loads(ln)["step"] == BLOWUP_STEP)
    assert f'"grad": {token}' in line
    streamed = list(iter_history(str(blown.log_dir / HISTORY_FILENAME)))
    assert len(streamed) == len(blown.records)


def _expected(blown, key):
    return {s: r[key] for s, r in _by_step(blown.records).items()}


def _same(a: Dict[int, float], b: Dict[int, float]) -> None:
    assert sorted(a) == sorted(b)
    for step in a:
        x, y = a[step], b[step]
        assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y), (step, x, y)


def test_tensorboard_copes(blown):
    acc = read_tb(blown.log_dir)
    for key in ("grad", "raw", "scale"):
        _same(tb_series(acc, metric_key(GEN, key)), _expected(blown, key))
    assert "scalewatch/plot" in acc.Tags()["images"]


def test_csv_copes(blown):
    rows = read_csv_metrics(blown.csv_dir)
    for key in ("grad", "raw", "scale"):
        _same(csv_series(rows, metric_key(GEN, key)), _expected(blown, key))


def test_wandb_copes(blown):
    rows, alerts = read_wandb(blown.root)
    for key in ("grad", "raw", "scale"):
        _same(wandb_series(rows, metric_key(GEN, key)), _expected(blown, key))
    titles = [a.title for a in alerts]
    assert titles.count(f"scalewatch non_finite: {GEN}") == 1, titles
    assert any("scalewatch/plot" in "".join(r) for r in rows), "the plot image did not reach W&B"
    assert not [m for m in blown.log_messages if "could not send" in m or "could not define" in m], blown.log_messages


def test_plot_copes(blown, tmp_path):
    assert_png(blown.log_dir / PLOT_FILENAME)
    fig = plot_history(str(blown.log_dir / HISTORY_FILENAME))
    out = tmp_path / "again.png"
    fig.savefig(out)
    assert_png(out)
