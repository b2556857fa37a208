"""The example under DDP on two CPU processes: one history, one set of alerts.

Always a subprocess: ``strategy="ddp"`` inside pytest would start pytest again
as rank 1.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from collections import Counter

from test_examples import ALERT_LINES, clean_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "examples", "configs")
TRAIN = os.path.join(REPO, "examples", "train.py")

#: the documented multi-process command, plus the setting that saturates the scale
DDP_ARGS = ["--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"]
def test_ddp_writes_one_history_and_one_set_of_alerts(tmp_path) -> None:
    env = clean_env()
    args = [sys.executable, TRAIN, "fit", "--config", os.path.join(CONFIGS, "conservative.yaml"),
            "--config", os.path.join(CONFIGS, "fast-scale-lr.yaml"), *DDP_ARGS, "--trainer.max_steps", "60",
            "--trainer.enable_progress_bar", "false", "--data.train_samples", "512", "--data.val_samples", "128"]
    proc = subprocess.run(args, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-8000:]
    assert "Starting with 2 processes" in output

    run = tmp_path / "demo_runs" / "fast-scale-lr"
    histories = glob.glob(f"{tmp_path}/**/scalewatch_history.jsonl", recursive=True)
    assert histories == [f"{run}/tensorboard/version_0/scalewatch_history.jsonl"]
    assert len(glob.glob(f"{run}/tensorboard/version_*")) == 1
    assert len(glob.glob(f"{run}/csv/version_*")) == 1
    assert len(glob.glob(f"{run}/wandb/offline-run-*")) == 1

    with open(histories[0], encoding="utf-8") as f:  # the scale's lines (the overlay also records attention)
        records = [r for r in map(json.loads, f) if "attention" not in r]
    steps = [r["step"] for r in records]
    assert steps == list(range(9, 60, 10)), steps  # each check once, none duplicated by rank 1

    fired = Counter(kind for r in records for kind in r["alerts"])
    assert fired["near_upper"] == 1
    for kind, line in ALERT_LINES.items():
        assert fired[kind] <= 1
        assert output.count(line) == fired[kind], (kind, output[-8000:])
