"""MLflow 3, for real: each run its own history, plot artifact and alerts, through Lightning's MLFlowLogger
(file store and sqlite), HF ``report_to=["mlflow"]``, mmengine's MLflowVisBackend, Ignite's MLflowLogger,
and one real ``mlflow server`` on 127.0.0.1; everything read back through ``MlflowClient``; and
``scalewatch report|plot|compare runs:/RUN_ID`` reading those runs back (their history artifact, or a run
that kept only its metrics), with one error line for an unknown run or an unreachable server.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any, Dict, Iterator, List

import pytest

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

from scalewatch.callbacks.mlflow_sink import (ALERT_TAG, ALERTS_TAG, ARTIFACT_DIR, MlflowSink,  # noqa: E402
                                               key_from_mlflow, mlflow_key)
from scalewatch.dashboards import cli  # noqa: E402
from scalewatch.dashboards.sources import HISTORY, MLFLOW, find_source, records_from_logged  # noqa: E402
from scalewatch.monitor import HISTORY_FILENAME  # noqa: E402
from scalewatch.monitor.history.keys import parse_metric_key, reading_metrics  # noqa: E402
from scalewatch.monitor.reading import Reading  # noqa: E402

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
    recorded = [r["step"] for r in records if r["name"] == name]
    metric = client.get_metric_history(run_id, scale_key)
    assert sorted(m.step for m in metric) == recorded == list(steps)
    assert [m.value for m in sorted(metric, key=lambda m: m.step)] == pytest.approx(
        [r["scale"] for r in records if r["name"] == name])
    tags = client.get_run(run_id).data.tags
    fired = [k for r in records for k in r["alerts"]]
    assert "pinned" in fired
    first = next(r["step"] for r in records if "pinned" in r["alerts"] and r["name"] == name)
    assert f"{name}@{first}" in tags[ALERT_TAG.format(kind="pinned")].split(", ")
    assert "pinned@" in tags[ALERTS_TAG]
    return records


def test_key_encoding_round_trips() -> None:
    key = "scalewatch/blocks.0.attn.logit_scale[3]/scale"
    assert mlflow_key(key) == "scalewatch/blocks.0.attn.logit_scale:3/scale"
    assert key_from_mlflow(mlflow_key(key)) == key
    # the one codec reads MLflow's spelling: NAME:3 is the element NAME[3]
    assert parse_metric_key(mlflow_key(key), mlflow=True) == ("blocks.0.attn.logit_scale[3]", "scale", False)
    assert parse_metric_key(mlflow_key(key)) == ("blocks.0.attn.logit_scale:3", "scale", False)
    assert mlflow_key("train/loss[0]") == "train/loss[0]"  # only a scalewatch element key is respelt


def run_folder(client: MlflowClient, run_id: str) -> str:
    """A run's own local folder (its artifacts' parent)."""
    return os.path.dirname(client.get_run(run_id).info.artifact_uri.replace("file://", "").replace("file:", ""))


def report_lines(capsys: Any, *args: str) -> List[str]:
    """``scalewatch report ARGS`` in this process: its lines without the first, which names the source."""
    capsys.readouterr()
    assert cli.main(["report", *args]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out.splitlines()
    return out[1:]


def cli_error(capsys: Any, *args: str) -> str:
    """A command that must fail on bad input: exit 1, one line on stderr (returned), nothing on stdout."""
    capsys.readouterr()
    assert cli.main(list(args)) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scalewatch: error: ") and not captured.out, captured
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("store", ["file", "sqlite"])
def test_two_lightning_runs_in_one_tracking_root_keep_their_own(tmp_path: Any, store: str, monkeypatch: Any,
                                                                capsys: Any) -> None:
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
    # the CLI reads a run from its own folder (its local artifacts), and by its URI the same
    run_dir = run_folder(client, second.run_id)
    assert cli.main(["report", run_dir, "--json"]) == 0
    by_uri = report_lines(capsys, f"runs:/{second.run_id}", "--tracking-uri", uri)
    assert by_uri == report_lines(capsys, run_dir) and any("pinned" in line for line in by_uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # as the environment gives it; --from mlflow: a bare id
    assert report_lines(capsys, "--from", "mlflow", first.run_id) == report_lines(capsys,
                                                                                 run_folder(client, first.run_id))
    assert cli.main(["plot", f"mlflow:{first.run_id}", "-o", str(tmp_path / "p.png"), "-q"]) == 0
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert cli.main(["compare", f"runs:/{first.run_id}", f"runs:/{second.run_id}"]) == 0
    table = capsys.readouterr().out
    assert first.run_id in table and second.run_id in table  # each run named by its id
    # the final metric from the run itself, as compare takes it from a metrics.csv or TensorBoard events
    assert cli.main(["compare", f"runs:/{first.run_id}", f"runs:/{second.run_id}", "--metric", "loss", "--json"]) == 0
    for run in json.loads(capsys.readouterr().out)["runs"]:
        run_id = run["metric"]["path"].split("/")[-1]
        last = max(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)
        assert run["metric"]["step"] == last.step and run["metric"]["value"] == pytest.approx(last.value)


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


def per_head_net() -> Any:
    """mmengine's DriftNet with a per-head scale ``head.logit_scale`` (3 heads, watched in [0, 2]) that the
    loss pushes up until the clamp pins it."""
    import torch
    from mmengine_models import DriftNet

    class HeadNet(DriftNet):
        def __init__(self) -> None:
            super().__init__()
            self.head.logit_scale = torch.nn.Parameter(torch.tensor([0.5, 1.0, 1.5]))

        def forward(self, x: Any, mode: str = "tensor") -> Any:
            out = super().forward(x, mode)
            clamped = self.head.logit_scale.clamp(0.0, 2.0)
            return {"loss": out["loss"] - clamped.sum()} if mode == "loss" else out

    return HeadNet()


PER_HEAD = "head.logit_scale"


@pytest.mark.slow
def test_mmengine_mlflow_vis_backend(tmp_path: Any, capsys: Any) -> None:
    """The keys, a per-head scale's ``NAME[i]`` among them (as ``NAME:i``), land in mmengine's MLflow run."""
    from mmengine_models import make_runner

    uri = f"file:{tmp_path}/mlruns"
    runner = make_runner(str(tmp_path / "work"), hook=dict(interval=5, notify=[], params={PER_HEAD: (0.0, 2.0)}),
                         max_iters=30, lr=0.5, name="mm-mlflow", model=per_head_net(),
                         vis_backends=[dict(type="MLflowVisBackend", save_dir=str(tmp_path / "mlb"),
                                            tracking_uri=uri, exp_name="mm")])
    from mmengine.config import Config

    # as a Runner built from a config file has it: MLflowVisBackend.close() needs its work_dir
    runner.visualizer.add_config(Config(dict(work_dir=str(tmp_path / "work"))))
    runner.train()
    runner.visualizer.close()
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("mm").experiment_id])
    run = next(r for r in runs if "loss" in r.data.metrics)  # mmengine's run (add_config may start an empty one)
    records = check_run(client, run.info.run_id, tmp_path / "dl", steps=range(5, 31, 5))
    for i in range(3):  # each head under MLflow's spelling, at the reading steps, the history's values
        logged = sorted(client.get_metric_history(run.info.run_id, f"scalewatch/{PER_HEAD}:{i}/scale"),
                        key=lambda m: m.step)
        recorded = [r for r in records if r["name"] == f"{PER_HEAD}[{i}]"]
        assert [m.step for m in logged] == [r["step"] for r in recorded] == list(range(5, 31, 5))
        assert [m.value for m in logged] == pytest.approx([r["scale"] for r in recorded])
    assert not [k for k in run.data.metrics if "[" in k]
    assert "scalewatch_plot.png" in {a.path for a in client.list_artifacts(run.info.run_id)}  # the door's image
    # read back through the key codec from the metrics alone: the same elements, steps and values
    from scalewatch.dashboards.mlflow_source import logged_rows

    rebuilt = [r for r in records_from_logged(logged_rows(client, run)) if r.get("tensor") == PER_HEAD]
    assert [(r["name"], r["step"], r["index"]) for r in rebuilt] == [
        (r["name"], r["step"], r["index"]) for r in records if r.get("tensor") == PER_HEAD]
    assert [r["scale"] for r in rebuilt] == pytest.approx(
        [r["scale"] for r in records if r.get("tensor") == PER_HEAD])
    assert any("pinned" in r["alerts"] for r in rebuilt)


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
    # no job runner (its 7 consumer processes: GenAI jobs, nothing of tracking's), and a process group of
    # its own, so that the server, its uvicorn and nothing else stop together at the end
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(root), env=env, start_new_session=True)
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
        os.killpg(proc.pid, signal.SIGTERM)  # the group this fixture started (mlflow server and its uvicorn)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.mark.slow
def test_a_real_server_run_gets_its_history_plot_and_alerts(mlflow_server: str, tmp_path: Any,
                                                            monkeypatch: Any, capsys: Any) -> None:
    monkeypatch.chdir(tmp_path)
    logger = run_lightning(mlflow_server, tmp_path, "served")
    check_run(MlflowClient(mlflow_server), logger.run_id, tmp_path / "dl")
    # remote artifacts: the local copy is in a folder named by the run, never in the working directory itself
    assert (tmp_path / "mlflow" / logger.run_id / HISTORY_FILENAME).is_file()
    assert not (tmp_path / HISTORY_FILENAME).exists()
    # report by URI: the history artifact downloaded through the server, the same report as the local copy's
    src = find_source(f"runs:/{logger.run_id}", tracking_uri=mlflow_server)
    assert src.kind == HISTORY and not src.path.startswith(str(tmp_path)) and src.origin == f"runs:/{logger.run_id}"
    assert report_lines(capsys, f"runs:/{logger.run_id}", "--tracking-uri", mlflow_server) == report_lines(
        capsys, str(tmp_path / "mlflow" / logger.run_id))
    assert f"no MLflow run {'f' * 32} at {mlflow_server}" in cli_error(
        capsys, "report", f"runs:/{'f' * 32}", "--tracking-uri", mlflow_server)


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


# ---- report|plot|compare runs:/RUN_ID: a run that kept only its metrics, and bad input ------------------

HEADS = "blocks.0.attn.logit_scale"


def logged_readings() -> List[Reading]:
    """A scale the loss walks into its upper bound 5 (the clamp pins it) and a per-head tensor of 3 heads,
    6 checks 4 steps apart."""
    readings = []
    for k, step in enumerate(range(3, 24, 4)):
        raw = 3.0 + 0.8 * k
        readings.append(Reading(step, GEN, min(raw, 5.0), raw, 0.0 if raw > 5.0 else -0.2, 0.5, 5.0,
                                clamp_fraction=0.01 * k))
        for i in range(3):
            value = 1.0 + 0.1 * i + 0.05 * k
            readings.append(Reading(step, f"{HEADS}[{i}]", value, value, 0.01, None, 4.605, tensor=HEADS, index=i))
    return readings


@pytest.fixture(scope="module")
def metrics_only_run(tmp_path_factory: Any) -> Dict[str, Any]:
    """A run in a file store that kept only the ``scalewatch/*`` metrics, logged through the sink
    (``NAME[i]`` as ``NAME:i``), no artifacts: as a run whose history never got uploaded."""
    root = tmp_path_factory.mktemp("mlflow-metrics")
    uri = f"file:{root}/mlruns"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        client = MlflowClient(uri)
        experiment = client.create_experiment("metrics-only")
        run_id = client.create_run(experiment).info.run_id
        empty = client.create_run(experiment).info.run_id
        client.log_metric(empty, "train/loss", 1.0, step=1)
        sink = MlflowSink(client, run_id)
        readings = logged_readings()
        for step in sorted({r.step for r in readings}):
            sink.log_metrics(reading_metrics([r for r in readings if r.step == step]), step)
        assert sink.wait(timeout=30)
        assert client.list_artifacts(run_id) == []
    return dict(uri=uri, run_id=run_id, empty_run_id=empty, readings=readings, root=root)


def test_a_metrics_only_run_reads_back_with_its_steps_and_values(metrics_only_run: Dict[str, Any],
                                                                 capsys: Any) -> None:
    run = metrics_only_run
    src = find_source(f"runs:/{run['run_id']}", tracking_uri=run["uri"])
    assert src.kind == MLFLOW and src.origin == f"runs:/{run['run_id']}"
    records = list(src.records())
    by_name: Dict[str, List[Dict[str, Any]]] = {}
    for r in records:
        by_name.setdefault(r["name"], []).append(r)
    assert set(by_name) == {GEN} | {f"{HEADS}[{i}]" for i in range(3)}
    for name, got in by_name.items():
        want = [r for r in run["readings"] if r.name == name]
        assert [r["step"] for r in got] == [r.step for r in want] == list(range(3, 24, 4))
        for field in ("scale", "raw", "grad", "max"):
            assert [r[field] for r in got] == pytest.approx([getattr(r, field) for r in want]), (name, field)
    heads = [r for r in records if r.get("tensor") == HEADS]
    assert {r["index"] for r in heads} == {0, 1, 2} and all(r["min"] is None for r in heads)  # one-sided
    assert "pinned" in [a for r in by_name[GEN] for a in r["alerts"]]  # recomputed by the rule book
    lines = report_lines(capsys, f"runs:/{run['run_id']}", "--tracking-uri", run["uri"])
    assert any(line.startswith(GEN) for line in lines) and any("pinned" in line for line in lines)
    png = run["root"] / "metrics-only.png"
    assert cli.main(["plot", f"runs:/{run['run_id']}", "--tracking-uri", run["uri"], "-o", str(png), "-q"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unknown_run_is_one_error_line(metrics_only_run: Dict[str, Any], capsys: Any) -> None:
    uri, unknown = metrics_only_run["uri"], "0123456789abcdef0123456789abcdef"
    line = cli_error(capsys, "report", f"runs:/{unknown}", "--tracking-uri", uri)
    assert line == f"scalewatch: error: runs:/{unknown}: no MLflow run {unknown} at {uri}"
    assert "not an MLflow run" in cli_error(capsys, "plot", "runs:/a/b", "--tracking-uri", uri)
    assert "an MLflow run, not a csv source" in cli_error(capsys, "report", "runs:/abc", "--from", "csv")
    assert f"runs:/{unknown}: no MLflow run" in cli_error(  # compare reads the first and names the second
        capsys, "compare", f"runs:/{metrics_only_run['run_id']}", f"runs:/{unknown}", "--tracking-uri", uri)
    empty = metrics_only_run["empty_run_id"]  # a run with neither the history artifact nor a scalewatch key
    assert cli_error(capsys, "report", f"mlflow:{empty}", "--tracking-uri", uri) == (
        f"scalewatch: error: mlflow:{empty}: MLflow run {empty} at {uri} has no scalewatch/{HISTORY_FILENAME} "
        "artifact and no scalewatch/* metrics")


def test_a_missing_local_store_is_an_error_not_a_new_one(tmp_path: Any, capsys: Any) -> None:
    db = tmp_path / "mlflow.db"
    line = cli_error(capsys, "report", "runs:/abc", "--tracking-uri", f"sqlite:///{db}")
    assert line == f"scalewatch: error: sqlite:///{db}: no MLflow tracking store there"
    assert not db.exists()  # reading never creates a store
    assert "no MLflow tracking store there" in cli_error(capsys, "report", "runs:/abc", "--tracking-uri",
                                                         f"file:{tmp_path}/none")


def test_an_unreachable_tracking_server_is_one_error_line(capsys: Any) -> None:
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    line = cli_error(capsys, "report", "runs:/abc", "--tracking-uri", url)
    assert line == f"scalewatch: error: {url}: the MLflow tracking server cannot be reached (connection refused)"


@pytest.mark.timeout(60)
def test_a_server_that_never_answers_is_bounded(capsys: Any, monkeypatch: Any) -> None:
    """A port that takes the connection and never answers: one timeout, no retries (MLflow's default
    retries with back-off for minutes); the user's timeout (1 s here) wins over the read's 10 s."""
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        line = cli_error(capsys, "report", "runs:/abc", "--tracking-uri", url)
        took = time.monotonic() - started
    assert line == f"scalewatch: error: {url}: the MLflow tracking server cannot be reached (no answer within 1 s)"
    assert took < 30, took  # one 1 s request, not MLflow's 7 retries with back-off
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # the read's bound is undone after it
