"""Resuming from a checkpoint continues one record; DDP gives one record and one alert.
Each under both Lightning packages."""
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

import readback
from models import LIGHTNING_PACKAGES, modules_for
from scalewatch.callbacks import ScaleMonitor

HERE = Path(__file__).parent

pytestmark = pytest.mark.parametrize("package", LIGHTNING_PACKAGES)


def fit(root, version, max_steps, alerts, ckpt_path=None, package="pytorch_lightning"):
    pl = importlib.import_module(package)
    TensorBoardLogger = importlib.import_module(f"{package}.loggers").TensorBoardLogger
    ModelCheckpoint = importlib.import_module(f"{package}.callbacks").ModelCheckpoint
    DriftModel, _ = modules_for(package)
    logger = TensorBoardLogger(str(root), name="tb", version=version)
    ck = ModelCheckpoint(dirpath=str(root / "ck"), every_n_train_steps=10, save_top_k=-1, filename="{step}")
    trainer = pl.Trainer(max_steps=max_steps, logger=logger, callbacks=[ScaleMonitor(every_n_steps=2,
                         alert_callback=alerts.append), ck], enable_progress_bar=False, enable_model_summary=False,
                         log_every_n_steps=2)
    trainer.fit(DriftModel(lr=0.3), ckpt_path=ckpt_path)
    return logger.log_dir


def test_resume_in_the_same_directory_continues_one_record(tmp_path, package):
    alerts = []
    log_dir = fit(tmp_path, 0, 25, alerts, package=package)  # ran on past the step-20 checkpoint, then "crashed"
    assert [r["step"] for r in readback.history(log_dir)][-1] == 23
    first_alerts = [a.kind for a in alerts]
    assert "near_upper" in first_alerts
    alerts.clear()
    fit(tmp_path, 0, 40, alerts, ckpt_path=str(tmp_path / "ck" / "step=20.ckpt"), package=package)
    steps = [r["step"] for r in readback.history(log_dir)]
    assert steps == list(range(1, 40, 2))  # cut back to the checkpoint, then continued: no gap, no repeat
    assert "near_upper" not in [a.kind for a in alerts]  # already fired for this crossing before the checkpoint


def test_resume_into_a_new_directory_starts_with_the_earlier_readings(tmp_path, package):
    alerts = []
    first = fit(tmp_path, 0, 25, alerts, package=package)
    second = fit(tmp_path, 1, 30, alerts, ckpt_path=str(tmp_path / "ck" / "step=20.ckpt"), package=package)
    assert first != second
    assert [r["step"] for r in readback.history(second)] == list(range(1, 30, 2))
    assert [r["step"] for r in readback.history(first)] == list(range(1, 25, 2))  # the old record is untouched


def ddp(root, mode, package):
    return subprocess.run([sys.executable, str(HERE / "ddp_monitor_script.py"), str(root), mode, package],
                          capture_output=True, text=True, timeout=240, env=dict(os.environ, PYTHONWARNINGS="ignore"))


def _alerts(stdout: str) -> List[str]:
    """The script's ``ALERT KIND NAME STEP`` lines; two ranks share the pipe, so another rank's
    line may run into one without its newline yet (seen: ``...trainer.trainerALERT near_upper ...``)."""
    return re.findall(r"ALERT \S+ \S+ \d+", stdout)


def test_ddp_gives_one_record_and_one_alert(tmp_path, package):
    out = ddp(tmp_path, "warn", package)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("DONE global_step=40") == 2  # both ranks trained
    assert out.stdout.count(f"package={package}.trainer.trainer") == 2
    alerts = _alerts(out.stdout)
    assert [a.split()[1] for a in alerts] == ["near_upper", "pinned"]  # once each, from rank zero only
    assert out.stderr.count("Scale near upper bound!") == 1
    histories = list(tmp_path.rglob("scalewatch_history.jsonl"))
    assert len(histories) == 1
    steps = [r["step"] for r in readback.history(str(histories[0].parent))]
    assert steps == list(range(1, 40, 2))


def test_ddp_stop_on_saturation_stops_every_rank(tmp_path, package):
    out = ddp(tmp_path, "stop", package)
    assert out.returncode == 0, out.stderr[-3000:]
    alerts = _alerts(out.stdout)
    assert alerts, (out.stdout[-3000:], out.stderr[-3000:])
    alert = alerts[0]
    step = int(alert.split()[3])
    assert out.stdout.count(f"DONE global_step={step + 1}") == 2
