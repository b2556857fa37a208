"""MLflow 3, for real: each run its own history, plot artifact and alerts, through Lightning's MLFlowLogger
(file store and sqlite), HF ``report_to=["mlflow"]``, mmengine's MLflowVisBackend, Ignite's MLflowLogger,
and one real ``mlflow server`` on 127.0.0.1; everything read back through ``MlflowClient``.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any, Dict, Iterator, List

import pytest

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

from scalewatch.callbacks.mlflow_sink import ALERT_TAG, ALERTS_TAG, ARTIFACT_DIR, key_from_mlflow, mlflow_key  # noqa: E402
from scalewatch.dashboards import cli  # noqa: E402
from scalewatch.monitor import HISTORY_FILENAME  # noqa: E402

GEN = "head.attention_bias_generator"
SCALE_KEY = f"scalewatch/{GEN}/scale"


@pytest.fixture(autouse=True)
def _mlflow_env(monkeypatch: Any) -> Iterator[None]:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses the file store otherwise
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()
    # the fluent API's process-wide choices (another test's tracking root and experiment) go too
    import mlflow.tracking.fluent as fluent

    import mlflow.tracking._tracking_service.utils as tracking_utils

    fluent._active_experiment_id = None
    # unset, not "": an empty URI is a choice too (./mlruns in the working directory), and it would
    # outrank the next test's MLFLOW_TRACKING_URI
    tracking_utils._tracking_uri = None
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):  # set by mmengine's MLflowVisBackend, not undone
        os.environ.pop(name, None)


def run_lightning(tracking_uri: str, root: Any, run_name: str) -> Any:
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import MLFlowLogger

    from models import DriftModel
    from scalewatch.callbacks import ScaleMonitor

    logger = MLFlowLogger(experiment_name="scalewatch-test", run_name=run_name, tracking_uri=tracking_uri)
    trainer = pl.Trainer(max_steps=24, logger=logger, log_every_n_steps=4, default_root_dir=str(root),
                         callbacks=[ScaleMonitor(every_n_steps=4, notify=[])], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(DriftModel(lr=0.5))
    return logger


def artifact_text(client: MlflowClient, run_id: str, path: str, dst: Any) -> str:
    local = client.download_artifacts(run_id, path, str(dst))
    with open(local, encoding="utf-8") as f:
        return f.read()


def check_run(client: MlflowClient, run_id: str, dst: Any, steps: Any = (3, 7, 11, 15, 19, 23),
              scale_key: str = SCALE_KEY, name: str = GEN) -> List[Dict[str, Any]]:
    """The run has the keys at the reading steps, its own history and plot artifacts, its alerts as tags."""
    names = {a.path for a in client.list_artifacts(run_id, ARTIFACT_DIR)}
    assert {f"{ARTIFACT_DIR}/{HISTORY_FILENAME}", f"{ARTIFACT_DIR}/scale_history.png"} <= names, names
    os.makedirs(dst, exist_ok=True)
    records = [json.loads(line) for line in artifact_text(client, run_id, f"{ARTIFACT_DIR}/{HISTORY_FILENAME}",
                                                          dst).splitlines() if line.strip()]
    recorded = [r["step"] for r in records]
    metric = client.get_metric_history(run_id, scale_key)
    assert sorted(m.step for m in metric) == recorded == list(steps)
    assert [m.value for m in sorted(metric, key=lambda m: m.step)] == pytest.approx([r["scale"] for r in records])
    tags = client.get_run(run_id).data.tags
    fired = [k for r in records for k in r["alerts"]]
    assert "pinned" in fired
    assert tags[ALERT_TAG.format(kind="pinned")] == f"{name}@{next(r['step'] for r in records if 'pinned' in r['alerts'])}"
    assert "pinned@" in tags[ALERTS_TAG]
    return records


def test_key_encoding_round_trips() -> None:
    key = "scalewatch/blocks.0.attn.logit_scale[3]/scale"
    assert mlflow_key(key) == "scalewatch/blocks.0.attn.logit_scale:3/scale"
    assert key_from_mlflow(mlflow_key(key)) == key


@pytest.mark.slow
@pytest.mark.parametrize("store", ["file", "sqlite"])
def test_two_lightning_runs_in_one_tracking_root_keep_their_own(tmp_path: Any, store: str, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)  # the working directory both runs share (sqlite's artifacts go below it)
    uri = f"file:{tmp_path}/mlruns" if store == "file" else f"sqlite:///{tmp_path}/mlflow.db"
    first = run_lightning(uri, tmp_path, "first")
    second = run_lightning(uri, tmp_path, "second")
    assert first.run_id != second.run_id
    client = MlflowClient(uri)
    for logger in (first, second):
        check_run(client, logger.run_id, tmp_path / "dl" / logger.run_id)
    # nothing in the shared root or the working directory itself
    for shared in (tmp_path / "mlruns", tmp_path):
        assert not (shared / HISTORY_FILENAME).exists() and not (shared / "scale_history.png").exists()
        assert not list(shared.glob("scalewatch_history.previous-*"))
    # the CLI reads a run from its own folder (its local artifacts)
    run_dir = os.path.dirname(client.get_run(second.run_id).info.artifact_uri.replace("file://", "")
                              .replace("file:", ""))
    assert cli.main(["report", run_dir, "--json"]) == 0


@pytest.mark.slow
def test_hf_report_to_mlflow_two_runs_in_one_output_dir(tmp_path: Any, monkeypatch: Any) -> None:
    from hf_models import hf_trainer
    from scalewatch.callbacks.hf import ScaleMonitorCallback

    uri = f"file:{tmp_path}/mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "hf")
    run_ids = []
    for _ in range(2):
        trainer = hf_trainer(tmp_path / "out", [ScaleMonitorCallback(notify=[])], report_to=("mlflow",), max_steps=30)
        trainer.train()
        runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("hf").experiment_id],
                                            order_by=["attributes.start_time DESC"])
        run_ids.append(runs[0].info.run_id)
    assert run_ids[0] != run_ids[1]
    for run_id in run_ids:  # readings at HF's global_step 5, 10, ... (logging_steps=5)
        check_run(MlflowClient(uri), run_id, tmp_path / "dl" / run_id, steps=range(5, 31, 5))


@pytest.mark.slow
def test_mmengine_mlflow_vis_backend(tmp_path: Any) -> None:
    from mmengine_models import make_runner

    uri = f"file:{tmp_path}/mlruns"
    runner = make_runner(str(tmp_path / "work"), hook=dict(interval=5, notify=[]), max_iters=30, lr=0.5,
                         name="mm-mlflow", vis_backends=[dict(type="MLflowVisBackend", save_dir=str(tmp_path / "mlb"),
                                                              tracking_uri=uri, exp_name="mm")])
    from mmengine.config import Config

    # as a Runner built from a config file has it: MLflowVisBackend.close() needs its work_dir
    runner.visualizer.add_config(Config(dict(work_dir=str(tmp_path / "work"))))
    runner.train()
    runner.visualizer.close()
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("mm").experiment_id])
    run = next(r for r in runs if "loss" in r.data.metrics)  # mmengine's run (add_config may start an empty one)
    gen = next((k for k in run.data.metrics if k.startswith("scalewatch/") and k.endswith("/scale")), str(run.data.metrics))
    check_run(client, run.info.run_id, tmp_path / "dl", steps=range(5, 31, 5), scale_key=gen,
              name=gen.split("/")[1])


def test_ignite_mlflow_logger(tmp_path: Any) -> None:
    pytest.importorskip("ignite")
    from ignite.handlers.mlflow_logger import MLflowLogger
    from test_ignite_door import setup

    from scalewatch.callbacks import ScaleMonitorHandler

    uri = f"file:{tmp_path}/mlruns"
    model, opt, trainer, data = setup()
    logger = MLflowLogger(tracking_uri=uri)
    handler = ScaleMonitorHandler(model, opt, every_n_steps=4, notify=[], loggers=[logger]).attach(trainer)
    trainer.run(data[:24], max_epochs=1)
    run_id = mlflow.active_run().info.run_id
    logger.close()
    assert handler.watcher.log_dir.endswith(os.path.join(run_id, "artifacts", ARTIFACT_DIR))  # the run's own
    check_run(MlflowClient(uri), run_id, tmp_path / "dl", steps=range(4, 25, 4), scale_key="scalewatch/gen/scale",
              name="gen")


# ---- a real tracking server ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: Any) -> Iterator[str]:
    """One ``mlflow server`` on 127.0.0.1 for the session: sqlite backend, artifacts proxied by the server
    (``mlflow-artifacts:/``), so the client has no local artifact folder and scalewatch uploads."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    cmd = [os.path.join(os.path.dirname(sys.executable), "mlflow"), "server", "--backend-store-uri",
           f"sqlite:///{root}/mlflow.db", "--artifacts-destination", f"{root}/art", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(root))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not come up: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.slow
def test_a_real_server_run_gets_its_history_plot_and_alerts(mlflow_server: str, tmp_path: Any,
                                                            monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    logger = run_lightning(mlflow_server, tmp_path, "served")
    check_run(MlflowClient(mlflow_server), logger.run_id, tmp_path / "dl")
    # remote artifacts: the local copy is in a folder named by the run, never in the working directory itself
    assert (tmp_path / "mlflow" / logger.run_id / HISTORY_FILENAME).is_file()
    assert not (tmp_path / HISTORY_FILENAME).exists()


def test_an_unreachable_tracking_server_delays_no_step(tmp_path: Any) -> None:
    """The sink's calls go out on its own thread: a dead server costs training nothing but the bounded end."""
    from scalewatch.callbacks.mlflow_sink import MlflowSink
    from scalewatch.monitor.saturation import Alert

    client = MlflowClient(f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    sink = MlflowSink(client, "0" * 32, str(tmp_path))
    sink._local = False
    for step in range(50):
        sink.log_metrics({SCALE_KEY: 1.0}, step)
        sink.alert(Alert("pinned", GEN, step, 5.0, 5.2, 0.0, 0.5, 5.0, "m"))
    # every call returned while the dead server still holds the sink's thread: they were queued, not sent
    assert sink._queue or sink._busy
    sink.wait(timeout=5.0)
