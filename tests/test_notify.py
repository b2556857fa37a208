"""Notifications through apprise, to a real HTTP server on 127.0.0.1 started by each test.

The Notifier on its own first (messages, batching, rate limit, slow, failing and
dead endpoints, the bounded wait at close, bad input, masking), then end to end:
a plain loop through ScaleWatcher, a pytorch_lightning Trainer through
ScaleMonitor, and the SCALEWATCH_NOTIFY route in a subprocess.
"""
from __future__ import annotations

import http.server
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import apprise  # noqa: F401  (make test installs it: a broken install fails, never skips)
import pytest
import torch

from scalewatch.callbacks.notifier import NOTIFY_ENV, Notifier, mask_url, resolve_notify
from scalewatch.monitor.saturation import Alert


GEN = "head.attention_bias_generator"
#: generous bounds: every wait below ends as soon as what it waits for happens
DELIVERY_S = 120.0
#: apprise's own read timeout (4 s by default), raised for endpoints a test holds on purpose
HOLD = "?rto=600"


def wait_until(condition: Callable[[], bool], what: str, timeout: float = DELIVERY_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def alert(kind: str = "pinned", name: str = GEN, step: int = 49, scale: float = 5.0, raw: float = 5.389,
          grad: float = 0.0) -> Alert:
    return Alert(kind=kind, name=name, step=step, scale=scale, raw=raw, grad=grad, min=0.5, max=5.0,
                 message=f"{kind} {name}")


class Endpoint:
    """An HTTP server on a free port of 127.0.0.1 that keeps what apprise posts to it.

    Args:
        status: the HTTP status it answers with.
        hold: answer nothing until :attr:`gate` is opened (``gate.set()``); a request that
            has arrived is counted in :attr:`arrived` while it waits.
    """

    def __init__(self, status: int = 200, hold: bool = False) -> None:
        self.requests: List[Dict[str, str]] = []
        self.arrived = 0
        self.gate = threading.Event()
        if not hold:
            self.gate.set()
        self._lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    fields = json.loads(raw)
                else:
                    fields = {k: v[0] for k, v in urllib.parse.parse_qs(raw).items()}
                with outer._lock:
                    outer.arrived += 1
                outer.gate.wait(timeout=600)  # the test opens it; the bound only ends a forgotten one
                with outer._lock:  # kept before answering: once the sender has its answer, it is here
                    outer.requests.append(dict(fields, path=self.path))
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:  # keep the test output clean
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def url(self, scheme: str = "json", path: str = "hook") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/{path}"

    def stop(self) -> None:
        self.gate.set()  # a held request is answered, so its handler thread can end
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


@pytest.fixture
def endpoint() -> Iterator:
    """Starts Endpoints on demand; stops each by its own handle at the end of the test."""
    started: List[Endpoint] = []

    def start(**kw: object) -> Endpoint:
        started.append(Endpoint(**kw))
        return started[-1]

    yield start
    for ep in started:
        ep.stop()


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port of 127.0.0.1 that is bound but never listens: connections are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


def failure_warnings(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "scalewatch" and "could not send a notification" in r.getMessage()]


# ---- the Notifier on its own --------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["json", "form"])
def test_an_alert_arrives_with_its_content(endpoint, scheme):
    server = endpoint()
    notifier = Notifier([server.url(scheme)], run_name="runs/demo")
    notifier.send([alert()], step=49)
    notifier.close(timeout=DELIVERY_S)
    (msg,) = server.requests
    assert "runs/demo" in msg["title"] and "pinned" in msg["title"] and "step 49" in msg["title"]
    body = msg["message"]
    for part in (GEN, "pinned", "step 49", "scale 5 in [0.5, 5]", "raw 5.389", "grad 0",
                 "the clamp has cut its gradient"):
        assert part in body, (part, body)
    assert msg["type"] == "failure"  # pinned; a near_* alert is a warning


def test_one_message_for_a_batch_of_simultaneous_alerts(endpoint):
    server = endpoint()
    notifier = Notifier([server.url()], run_name="runs/heads", max_listed=5)
    heads = [alert(name=f"blocks.{i}.attn.logit_scale") for i in range(995)]
    heads += [alert("near_upper", name=f"blocks.{i}.attn.bias_scale", scale=4.6, raw=4.6, grad=-0.1) for i in range(5)]
    notifier.send(heads, step=99)
    notifier.close(timeout=DELIVERY_S)
    (msg,) = server.requests
    assert "1000 alerts" in msg["title"] and "pinned ×995" in msg["title"] and "near_upper ×5" in msg["title"]
    listed = [line for line in msg["message"].splitlines() if line.startswith("pinned · ")]
    assert len(listed) == 5
    assert "… and 995 more at this check: pinned ×990, near_upper ×5" in msg["message"]


def test_repeated_crossings_of_one_scale_are_rate_limited(endpoint):
    server = endpoint()
    interval = 5.0  # two back-to-back calls are far closer than this, however loaded the machine
    notifier = Notifier([server.url()], run_name="runs/saw", repeat_interval=interval)
    before_first = time.monotonic()
    notifier.send([alert("near_upper", step=9)], step=9)
    first_sent = time.monotonic()  # the notifier's clock reading for it lies between these two
    notifier.send([alert("near_upper", step=19)], step=19)  # within the interval: held back, counted
    notifier.send([alert("pinned", step=19)], step=19)      # another kind of the same scale: sent
    assert time.monotonic() - before_first < interval, "the premise: the repeat came within the interval"
    time.sleep(max(0.0, first_sent + interval + 0.05 - time.monotonic()))  # the interval is over
    notifier.send([alert("near_upper", step=39)], step=39)
    notifier.close(timeout=DELIVERY_S)
    titles = [m["title"] for m in server.requests]
    assert len(titles) == 3 and "near_upper" in titles[0] and "pinned" in titles[1] and "step 39" in titles[2]
    assert "crossed 1 more time(s) since the last message" in server.requests[2]["message"]


def test_send_never_waits_for_a_slow_endpoint_and_close_waits_for_it(endpoint):
    server = endpoint(hold=True)  # answers nothing until the test opens its gate
    safety = threading.Timer(120, server.gate.set)  # a send() that waited would come back only then
    safety.start()
    notifier = Notifier([server.url() + HOLD], run_name="runs/slow")
    try:
        for step in (9, 19, 29):
            notifier.send([alert("near_upper", name=f"s{step}", step=step)], step=step)
        # every send() came back while the endpoint had answered nothing: none waited on it
        assert not server.gate.is_set() and server.requests == []
        wait_until(lambda: server.arrived == 1, "the first message to reach the endpoint and wait there")
    finally:
        safety.cancel()
    server.gate.set()
    notifier.close(timeout=DELIVERY_S)  # waits for the three answers
    assert [m["title"].rsplit(" ", 1)[-1] for m in server.requests] == ["9", "19", "29"]


def test_a_dead_port_and_a_500_each_give_one_warning(endpoint, dead_port, caplog):
    server = endpoint(status=500)
    urls = [f"json://127.0.0.1:{dead_port}/hook", server.url("form")]
    notifier = Notifier(urls, run_name="runs/down", backoff=0.05)
    with caplog.at_level(logging.WARNING):
        for step in (9, 19, 29):
            notifier.send([alert(name=f"s{step}", step=step)], step=step)
        notifier.close(timeout=DELIVERY_S)
    warnings = failure_warnings(caplog)
    assert len(warnings) == 2, warnings
    assert any(f"json://127.0.0.1:{dead_port}/" in w for w in warnings)
    assert any("error=500" in w and f"form://127.0.0.1:{server.port}/" in w for w in warnings)
    # three tries for the first message; after that one try each until one succeeds
    assert len(server.requests) == 3 + 1 + 1
    assert all(e.failed == 3 for e in notifier.endpoints)


def test_a_full_queue_drops_the_oldest_and_says_so_once(endpoint, caplog):
    server = endpoint(hold=True)  # nothing is delivered while the eight alerts come in
    notifier = Notifier([server.url() + HOLD], run_name="runs/flood", queue_size=2)
    with caplog.at_level(logging.WARNING):
        for step in range(8):
            notifier.send([alert(name=f"s{step}", step=step)], step=step)
        server.gate.set()
        notifier.close(timeout=DELIVERY_S)
    full = [r for r in caplog.records if "not keeping up" in r.getMessage()]
    assert len(full) == 1
    (ep,) = notifier.endpoints
    assert ep.dropped > 0 and ep.dropped + len(server.requests) == 8
    assert "step 7" in server.requests[-1]["title"]  # the newest is never the one dropped
    assert any("earlier message(s) were dropped" in m["message"] for m in server.requests)


def test_close_waits_a_bounded_time_then_gives_up_with_one_warning(endpoint, caplog):
    server = endpoint(hold=True)  # stuck: answers nothing until the end of the test
    safety = threading.Timer(120, server.gate.set)  # a close() that waited would come back only then
    safety.start()
    notifier = Notifier([server.url() + HOLD], run_name="runs/stuck")
    for step in (9, 19, 29):
        notifier.send([alert(name=f"s{step}", step=step)], step=step)
    t = time.perf_counter()
    try:
        with caplog.at_level(logging.WARNING):
            notifier.close(timeout=0.5)
    finally:
        safety.cancel()
    # it came back while the endpoint still held the first message (its gate opens only at the
    # end of the test): a close that waited for the endpoint would not be back yet
    assert not server.gate.is_set() and server.requests == []
    assert time.perf_counter() - t < 60  # 0.5 s asked; generous for a loaded machine
    gave_up = [r.getMessage() for r in caplog.records if "gave up on" in r.getMessage()]
    assert len(gave_up) == 1 and "3 notification(s)" in gave_up[0]
    notifier.close()  # twice is fine
    notifier.send([alert()], step=99)  # after close: dropped, nothing raised


def test_a_notifier_without_alerts_starts_no_thread(endpoint):
    notifier = Notifier([endpoint().url()], run_name="runs/quiet")
    before = threading.active_count()
    notifier.close()
    assert threading.active_count() == before
    assert all(e._thread is None for e in notifier.endpoints)


# ---- input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("notify, match", [
    ("foo://127.0.0.1/hook", r"`notify`: 'foo://127\.0\.0\.1/\*\*\*\*' is not a usable .*no service for 'foo://'"),
    ("https://example.com/hook", r"`notify`.*use json://HOST/PATH"),
    ("json://", r"`notify`.*cannot build a 'json://' service"),
    ("not a url", r"`notify`.*not a URL"),
    ("", r"`notify` is an empty string"),
    ("  ", r"`notify` is an empty string"),
    (["json://127.0.0.1/hook", ""], r"`notify\[1\]` is an empty string"),
    (["json://127.0.0.1/hook", 7], r"`notify\[1\]` must be an apprise URL string, got int"),
    (42, r"`notify` must be an apprise URL .* got int"),
    (b"json://127.0.0.1/hook", r"`notify` must be an apprise URL .* got bytes"),
])
def test_bad_input_is_a_clear_error_naming_notify(notify, match):
    with pytest.raises(ValueError, match=match):
        resolve_notify(notify)


def test_the_lightning_door_turns_bad_input_into_a_misconfiguration():
    from scalewatch.callbacks import ScaleMonitor
    from scalewatch.callbacks.scale_monitor import MisconfigurationException

    with pytest.raises(MisconfigurationException, match="`notify`"):
        ScaleMonitor(notify="foo://example.com/hook")


def test_urls_come_from_the_argument_or_the_environment(monkeypatch):
    monkeypatch.delenv(NOTIFY_ENV, raising=False)
    assert resolve_notify(None) == []
    monkeypatch.setenv(NOTIFY_ENV, " json://127.0.0.1/a, form://127.0.0.1/b  json://127.0.0.1/a ")
    assert resolve_notify(None) == ["json://127.0.0.1/a", "form://127.0.0.1/b"]
    assert resolve_notify([]) == []  # an explicit empty list turns notifications off
    assert resolve_notify("json://127.0.0.1/c") == ["json://127.0.0.1/c"]
    monkeypatch.setenv(NOTIFY_ENV, "json://127.0.0.1/a foo://x")
    with pytest.raises(ValueError, match=rf"`notify` \(from \${NOTIFY_ENV}\): 'foo://\*\*\*\*'"):
        resolve_notify(None)


def test_without_apprise_given_urls_are_an_import_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "apprise", None)  # uninstalling it is not an option in a shared venv
    assert resolve_notify([]) == []
    with pytest.raises(ImportError, match=r"pip install 'scalewatch\[notify\]'"):
        resolve_notify("json://127.0.0.1/hook")


def test_secrets_are_masked_in_errors_and_repr(endpoint):
    token = uuid.uuid4().hex
    for bad in (f"slak://{token}/{token}", f"json://user:{token}@/{token}", f"jsn://x:{token}@127.0.0.1/?-t={token}&x"):
        with pytest.raises(ValueError) as err:
            resolve_notify(bad)
        assert token not in str(err.value)
    server = endpoint()
    notifier = Notifier([f"json://scalewatch:{token}@127.0.0.1:{server.port}/hook/{token}",
                         f"ntfy://127.0.0.1:{server.port}/{token}"], run_name="runs/x")
    assert token not in repr(notifier) and f"127.0.0.1:{server.port}" in repr(notifier)
    from scalewatch.callbacks import ScaleMonitor, ScaleWatcher
    from scalewatch.monitor import AttentionBiasGenerator

    monitor = ScaleMonitor(notify=f"json://scalewatch:{token}@127.0.0.1:{server.port}/hook")
    watcher = ScaleWatcher(AttentionBiasGenerator(), notify=f"json://127.0.0.1:{server.port}/{token}")
    for obj in (monitor, monitor.settings, watcher, watcher.settings):
        assert token not in repr(obj), obj
    watcher.close()
    hidden = f"{token[0]}...{token[-1]}"
    assert mask_url(f"slack://{token}/{token}/{token}/#alerts") == f"slack://{hidden}/{hidden}/{hidden}/#****"
    notifier.close()


# ---- end to end: a plain loop (ScaleWatcher), a Trainer (ScaleMonitor), the environment --------

def drift_loop(tmp_path: Path, steps: int = 40, before_close: Optional[Callable[[], None]] = None,
               **watcher_kw: object) -> Dict[str, object]:
    """DriftModel trained in a plain loop under ScaleWatcher: near_upper fires at step 9, pinned at 24.

    ``before_close`` runs after the loop, before ``watcher.close()`` (a test waits there for
    the deliveries it expects, so the close's own bounded wait never decides the outcome).
    Returns the loop's time (training and ``watcher.step``), ``close()``'s time, the
    alerts that fired and the watcher.
    """
    from models import DriftModel, loader
    from scalewatch.callbacks import ScaleWatcher

    torch.manual_seed(0)
    model = DriftModel(lr=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    batches = [x for (x,) in loader()]
    gen = model.head.attention_bias_generator
    watcher = ScaleWatcher(model, log_dir=tmp_path, every_n_steps=5, plot=False, **watcher_kw)
    fired: List[Alert] = []
    t = time.perf_counter()
    for step in range(steps):
        x = batches[step % len(batches)]
        weights = torch.sigmoid(model.proj(x)).unsqueeze(-1).expand(-1, -1, 8)
        loss = -gen(weights).float().mean() + 0.01 * model.proj.weight.pow(2).sum()  # DriftModel's loss
        loss.backward()
        fired += watcher.step(step)
        optimizer.step()
        optimizer.zero_grad()
    loop = time.perf_counter() - t
    if before_close is not None:
        before_close()
    t = time.perf_counter()
    watcher.close()
    return dict(loop=loop, close=time.perf_counter() - t, alerts=fired, watcher=watcher)


def history_alerts(log_dir: Path) -> List[tuple]:
    lines = [json.loads(line) for line in (log_dir / "scalewatch_history.jsonl").read_text().splitlines()]
    return [(r["step"], kind) for r in lines for kind in r["alerts"]]


@pytest.mark.slow
def test_a_plain_loop_sends_every_alert(endpoint, tmp_path, monkeypatch):
    monkeypatch.delenv(NOTIFY_ENV, raising=False)
    server = endpoint()
    run = drift_loop(tmp_path / "runs" / "drift", notify=server.url(),
                     before_close=lambda: wait_until(lambda: len(server.requests) == 2, "both messages"))
    assert [(a.step, a.kind) for a in run["alerts"]] == [(9, "near_upper"), (24, "pinned")]
    titles = [m["title"] for m in server.requests]
    assert len(titles) == 2
    assert "runs/drift: near_upper head.attention_bias_generator at step 9" in titles[0]
    assert "runs/drift: pinned head.attention_bias_generator at step 24" in titles[1]


@pytest.mark.slow
def test_a_stalled_endpoint_costs_the_loop_nothing_and_every_alert_arrives(endpoint, tmp_path, monkeypatch):
    monkeypatch.delenv(NOTIFY_ENV, raising=False)
    server = endpoint(hold=True)  # answers nothing until the loop is over
    safety = threading.Timer(300, server.gate.set)  # a loop that waited on it would end here, and fail
    safety.start()
    during_loop: Dict[str, object] = {}

    def after_loop() -> None:
        during_loop.update(gate_open=server.gate.is_set(), answered=len(server.requests))
        server.gate.set()
        wait_until(lambda: len(server.requests) == 2, "both messages once the endpoint answers")

    try:
        run = drift_loop(tmp_path, notify=server.url() + HOLD, before_close=after_loop)
    finally:
        safety.cancel()
    # all 40 steps and both alerts went by while the endpoint answered nothing: the loop never waited
    assert [(a.step, a.kind) for a in run["alerts"]] == [(9, "near_upper"), (24, "pinned")]
    assert during_loop == {"gate_open": False, "answered": 0}
    assert [m["title"].rsplit(" ", 1)[-1] for m in server.requests] == ["9", "24"]


@pytest.mark.slow
def test_dead_and_failing_endpoints_cost_training_nothing_but_one_warning_each(endpoint, dead_port, tmp_path,
                                                                               caplog, monkeypatch):
    monkeypatch.delenv(NOTIFY_ENV, raising=False)
    server = endpoint(status=500)

    def both_endpoints_done() -> None:  # first message: three tries each; the second: one
        wait_until(lambda: len(server.requests) == 3 + 1 and len(failure_warnings(caplog)) == 2,
                   "every try at both endpoints")

    with caplog.at_level(logging.WARNING):
        run = drift_loop(tmp_path, notify=[f"json://127.0.0.1:{dead_port}/hook", server.url("form")],
                         before_close=both_endpoints_done)
    assert history_alerts(tmp_path) == [(9, "near_upper"), (24, "pinned")]
    assert len(run["alerts"]) == 2
    warnings = failure_warnings(caplog)
    assert len(warnings) == 2, warnings
    assert len(server.requests) == 3 + 1  # first message: three tries; the second: one


@pytest.mark.slow
def test_a_lightning_run_notifies_and_keeps_the_secret_out_of_every_file_and_output(endpoint, tmp_path, capfd,
                                                                                    caplog, monkeypatch):
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    from models import DriftModel
    from scalewatch.callbacks import ScaleMonitor

    monkeypatch.delenv(NOTIFY_ENV, raising=False)
    server = endpoint()
    token = f"tok{uuid.uuid4().hex}"
    url = f"json://scalewatch:{token}@127.0.0.1:{server.port}/hook/{token}?-token={token}"
    root = tmp_path / "root"
    loggers = [TensorBoardLogger(str(root), name="tb"), CSVLogger(str(root), name="csv"),
               WandbLogger(save_dir=str(root), offline=True, project="scalewatch-test")]
    caplog.set_level(logging.DEBUG)  # apprise's and urllib3's debug lines carry URL paths
    trainer = pl.Trainer(default_root_dir=str(root), max_steps=40, log_every_n_steps=5, logger=loggers,
                         callbacks=[ScaleMonitor(notify=url)], enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(DriftModel(lr=0.5))
    loggers[2].experiment.finish()

    titles = [m["title"] for m in server.requests]
    assert len(titles) == 2 and "near_upper" in titles[0] and "pinned" in titles[1]
    assert all(m["path"] == f"/hook/{token}?token={token}" for m in server.requests)  # only the endpoint sees it
    assert "tb/version_0" in titles[0]
    files = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ckpt" for p in files) and any(p.name == "hparams.yaml" for p in files)
    assert any(p.suffix == ".wandb" for p in files)
    for path in files:
        assert token.encode() not in path.read_bytes(), path
    out, err = capfd.readouterr()
    assert token not in out and token not in err
    assert not [r for r in caplog.records if token in r.getMessage()]


ENV_SCRIPT = """
import torch
from scalewatch.callbacks import ScaleWatcher
from scalewatch.monitor import AttentionBiasGenerator

gen = AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0)
opt = torch.optim.SGD(gen.parameters(), lr=0.5)
with ScaleWatcher(gen, log_dir=__import__("sys").argv[1], every_n_steps=5, plot=False) as watcher:
    for step in range(40):
        (-gen(torch.full((2, 4, 4), 0.5)).mean()).backward()
        watcher.step(step)
        opt.step()
        opt.zero_grad()
print("TRAINED")
"""


@pytest.mark.slow
def test_the_environment_variable_route_in_a_subprocess(endpoint, tmp_path):
    server = endpoint()
    env = dict(os.environ, **{NOTIFY_ENV: f"{server.url('json', 'env-json')}, {server.url('form', 'env-form')}"})
    run_dir = tmp_path / "runs" / "env"
    done = subprocess.run([sys.executable, "-c", ENV_SCRIPT, str(run_dir)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "TRAINED" in done.stdout
    by_path = sorted((m["path"], m["title"].split(": ", 1)[1]) for m in server.requests)
    assert by_path == [("/env-form", "near_upper AttentionBiasGenerator at step 9"),
                       ("/env-form", "pinned AttentionBiasGenerator at step 24"),
                       ("/env-json", "near_upper AttentionBiasGenerator at step 9"),
                       ("/env-json", "pinned AttentionBiasGenerator at step 24")]
