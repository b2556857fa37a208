"""A real TensorBoard server shows the margin charts and follows the scale while training runs."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).parent
GEN = "head.attention_bias_generator"
TAG = f"scalewatch/{GEN}/scale"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.loads(r.read())


def wait_for(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except OSError as err:  # server not up yet
            last = err
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


#: Trains until the test says it has seen enough (the file ROOT/stop appears), so the test waits
#: for TensorBoard and never races the training's end. The deadline only ends a forgotten run.
TRAIN = """
import os, sys, time
sys.path.insert(0, sys.argv[2])
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from models import DriftModel
from scalewatch.callbacks import ScaleMonitor

root = sys.argv[1]
deadline = time.monotonic() + float(sys.argv[3])

class UntilTold(pl.Callback):
    def on_train_batch_end(self, trainer, *args, **kwargs):
        time.sleep(0.02)  # a few readings a second: TensorBoard sees the values grow step by step
        if os.path.exists(os.path.join(root, "stop")) or time.monotonic() > deadline:
            trainer.should_stop = True

trainer = pl.Trainer(max_steps=1_000_000, logger=TensorBoardLogger(root, name="tb"), log_every_n_steps=5,
                     callbacks=[ScaleMonitor(every_n_steps=5), UntilTold()], enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False)
print("TRAINING", flush=True)
trainer.fit(DriftModel(lr=0.05))
print("STOPPED", trainer.global_step, flush=True)
"""
#: generous bounds: each wait ends as soon as what it waits for happens
SERVER_UP_S = 240
RUN_FOR_AT_MOST_S = 540


@pytest.fixture
def training_and_tensorboard(tmp_path):
    log = open(tmp_path / "train.log", "w")  # a file, not a pipe: a full pipe would stall the training
    train = subprocess.Popen([sys.executable, "-c", TRAIN, str(tmp_path), str(HERE), str(RUN_FOR_AT_MOST_S)],
                             stdout=log, stderr=subprocess.STDOUT, text=True)
    port = free_port()
    tb = subprocess.Popen([str(Path(sys.executable).with_name("tensorboard")), "--logdir", str(tmp_path),
                           "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield port, train, tmp_path
    finally:
        log.close()
        for proc in (train, tb):  # only the processes this test started, by PID
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()


@pytest.mark.timeout(900)
def test_margin_layout_and_scalars_grow_while_training(training_and_tensorboard):
    port, train, root = training_and_tensorboard

    def layout():
        data = get_json(port, "/data/plugin/custom_scalars/layout")
        return data.get("category")

    categories = wait_for(layout, SERVER_UP_S, "the custom-scalars layout")
    cat = next(c for c in categories if c["title"] == "scalewatch")
    chart = next(c for c in cat["chart"] if c["title"] == GEN)
    series = chart["margin"]["series"]
    assert series == [{"value": TAG, "lower": f"scalewatch/{GEN}/min", "upper": f"scalewatch/{GEN}/max"}]

    query = urllib.parse.urlencode({"run": "tb/version_0", "tag": TAG})

    def scalars():
        return get_json(port, f"/data/plugin/scalars/scalars?{query}")

    first = wait_for(scalars, SERVER_UP_S, "the first scale values")
    assert train.poll() is None, "training ended before the live check"

    def more():
        now = scalars()
        return now if len(now) > len(first) else None

    grown = wait_for(more, SERVER_UP_S, "more scale values")
    assert train.poll() is None, "training must still be running while the values grow"
    (root / "stop").touch()  # seen enough: the training ends at its next step
    train.wait(timeout=SERVER_UP_S)
    out = (root / "train.log").read_text()
    assert train.returncode == 0 and "STOPPED" in out, out[-3000:]
    steps = [step for _, step, _ in grown]
    assert steps[: len(first)] == [step for _, step, _ in first]
    assert all(b - a == 5 for a, b in zip(steps, steps[1:])) and steps[0] == 4
    assert all(0.5 <= v <= 5.0 for _, _, v in grown)
    lower = get_json(port, "/data/plugin/scalars/scalars?" + urllib.parse.urlencode(
        {"run": "tb/version_0", "tag": f"scalewatch/{GEN}/min"}))
    assert {v for _, _, v in lower} == {0.5}
