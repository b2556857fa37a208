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


@pytest.fixture
def training_and_tensorboard(tmp_path):
    train = subprocess.Popen([sys.executable, str(HERE / "slow_train_script.py"), str(tmp_path), "400"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    port = free_port()
    tb = subprocess.Popen([str(Path(sys.executable).with_name("tensorboard")), "--logdir", str(tmp_path),
                           "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield port, train
    finally:
        for proc in (train, tb):  # only the processes this test started, by PID
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()


def test_margin_layout_and_scalars_grow_while_training(training_and_tensorboard):
    port, train = training_and_tensorboard

    def layout():
        data = get_json(port, "/data/plugin/custom_scalars/layout")
        return data.get("category")

    categories = wait_for(layout, 90, "the custom-scalars layout")
    cat = next(c for c in categories if c["title"] == "scalewatch")
    chart = next(c for c in cat["chart"] if c["title"] == GEN)
    series = chart["margin"]["series"]
    assert series == [{"value": TAG, "lower": f"scalewatch/{GEN}/min", "upper": f"scalewatch/{GEN}/max"}]

    query = urllib.parse.urlencode({"run": "tb/version_0", "tag": TAG})

    def scalars():
        return get_json(port, f"/data/plugin/scalars/scalars?{query}")

    first = wait_for(scalars, 60, "the first scale values")
    assert train.poll() is None, "training ended before the live check"
    def more():
        now = scalars()
        return now if len(now) > len(first) else None

    grown = wait_for(more, 60, "more scale values")
    assert train.poll() is None, "training must still be running while the values grow"
    steps = [step for _, step, _ in grown]
    assert steps[: len(first)] == [step for _, step, _ in first]
    assert all(b - a == 5 for a, b in zip(steps, steps[1:])) and steps[0] == 4
    assert all(0.5 <= v <= 5.0 for _, _, v in grown)
    lower = get_json(port, "/data/plugin/scalars/scalars?" + urllib.parse.urlencode(
        {"run": "tb/version_0", "tag": f"scalewatch/{GEN}/min"}))
    assert {v for _, _, v in lower} == {0.5}
