"""Two gloo processes, for real: ScaleWatcher under plain ``torch.distributed`` (its own rank
detection) and ScaleMonitor under Lightning DDP; notifications counted at a local receiver.

Always subprocesses: DDP inside pytest would start pytest again as rank 1.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("apprise")

import readback  # noqa: E402
from front_doors import torchrun  # noqa: E402
from scalewatch.callbacks.notifier import NOTIFY_ENV  # noqa: E402
from scalewatch.monitor import HISTORY_FILENAME  # noqa: E402
from test_notify import Endpoint  # noqa: E402 - a real HTTP server on 127.0.0.1 that keeps what apprise posts

HERE = Path(__file__).parent
GEN = "head.attention_bias_generator"


@pytest.fixture
def receiver():
    server = Endpoint()
    yield server
    server.stop()


def rank_results(out_dir: Path) -> dict:
    return {r["rank"]: r for r in (json.loads(p.read_text()) for p in sorted(out_dir.glob("rank*.json")))}


@pytest.mark.slow
def test_plain_torch_distributed_one_writer_one_sender_every_rank_stops_together(tmp_path, receiver):
    log_dir = tmp_path / "run"
    results = tmp_path / "ranks"
    results.mkdir()
    out = torchrun(str(HERE / "plain_ddp_script.py"), str(log_dir), str(results), receiver.url(path="ddp"),
                   timeout=180)
    assert out.returncode == 0, out.stderr[-4000:]
    ranks = rank_results(results)
    assert sorted(ranks) == [0, 1], out.stdout[-3000:]

    # rank detection without is_global_zero: rank 0 writes and alerts, rank 1 only reads
    assert ranks[0]["is_global_zero"] is True and ranks[0]["history"] is True
    assert ranks[1]["is_global_zero"] is False and ranks[1]["history"] is False

    # every rank read the same all-reduced values, fired the same alert, and stopped at the same step
    assert ranks[0]["last"] == ranks[1]["last"]
    assert ranks[0]["alerts"] == ranks[1]["alerts"]  # step() returns the alerts on every rank
    stop = ranks[0]["stopped_at"]
    assert ranks[1]["stopped_at"] == stop and ranks[0]["checks"] == ranks[1]["checks"] == (stop + 1) // 2
    assert [tuple(a) for a in ranks[0]["alerts"]] == [("near_upper", stop)]
    assert stop < 59  # stopped by the alert, not by the end of the loop

    # one history, in the shared log directory, each check once: written by rank 0 alone
    histories = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("scalewatch_history*.jsonl"))
    assert histories == [Path("run") / HISTORY_FILENAME]
    rows = readback.history(str(log_dir))
    assert [r["step"] for r in rows] == list(range(1, stop + 1, 2))
    assert [(r["step"], r["alerts"]) for r in rows if r["alerts"]] == [(stop, ["near_upper"])]
    assert rows[-1]["grad"] == pytest.approx(ranks[0]["last"][0]["grad"])
    assert (log_dir / "scale_history.png").stat().st_size > 0

    # the alert callback and the notification: rank 0 only
    assert ranks[0]["callback"] == [["near_upper", stop]] and ranks[1]["callback"] == []
    assert len(receiver.requests) == 1, receiver.requests
    assert receiver.requests[0]["path"] == "/ddp"
    assert receiver.requests[0]["title"].endswith(f"near_upper {GEN} at step {stop}")


@pytest.mark.slow
def test_lightning_ddp_only_rank_zero_sends_notifications(tmp_path, receiver):
    """tests/ddp_monitor_script.py (2 gloo processes, ScaleMonitor with notify=None) with the URL in
    SCALEWATCH_NOTIFY, which both ranks inherit: near_upper and pinned arrive once each."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", **{NOTIFY_ENV: receiver.url(path="lightning-ddp")})
    out = subprocess.run([sys.executable, str(HERE / "ddp_monitor_script.py"), str(tmp_path), "warn",
                          "lightning.pytorch"], capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.count("DONE global_step=40") == 2  # both ranks trained to the end
    fired = [line.split()[1:] for line in out.stdout.splitlines() if line.startswith("ALERT")]
    assert [kind for kind, _, _ in fired] == ["near_upper", "pinned"]
    titles = [m["title"] for m in receiver.requests]
    assert len(titles) == 2, titles  # 4 if rank 1 sent too
    assert all(m["path"] == "/lightning-ddp" for m in receiver.requests)
    assert [t.rsplit(": ", 1)[1] for t in titles] == [f"{kind} {name} at step {step}" for kind, name, step in fired]
    (history,) = tmp_path.rglob(HISTORY_FILENAME)
    assert [(r["step"], r["alerts"]) for r in readback.history(str(history.parent)) if r["alerts"]] == [
        (int(step), [kind]) for kind, _, step in fired]
