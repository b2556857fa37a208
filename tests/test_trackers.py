"""Comet (offline), DVCLive, ClearML (offline), trackio and Aim (local), for real: a short training
through the door users use for each, read back from what the tracker wrote on disk: the keys at the
reading steps, the plot image, the alerts.

Lightning's ``CometLogger`` with ``COMET_START_ONLINE=false`` (its ``OfflineExperiment`` zip),
DVCLive's own Lightning ``DVCLiveLogger`` (its ``plots/`` and ``params.yaml``), HF
``report_to=["clearml"]`` under ``CLEARML_OFFLINE_MODE=1`` (its offline session folder), HF
``report_to=["trackio"]`` (its sqlite file and media), Aim's Lightning ``AimLogger`` (its repository).
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import zipfile
from typing import Any, Dict, Iterator, List

import pytest

from scalewatch.monitor import HISTORY_FILENAME

GEN = "head.attention_bias_generator"
SCALE_KEY = f"scalewatch/{GEN}/scale"
PNG = b"\x89PNG"


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables (and the working directory, ``cwd``) for one module-scoped run."""
    cwd = values.pop("cwd", None)
    before = {k: os.environ.get(k) for k in values}
    here = os.getcwd()
    os.environ.update(values)
    if cwd:
        os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(here)
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def lightning_fit(logger: Any, root: Any) -> Any:
    import pytorch_lightning as pl

    from models import DriftModel
    from scalewatch.callbacks import ScaleMonitor

    monitor = ScaleMonitor(every_n_steps=4, notify=[])
    trainer = pl.Trainer(max_steps=24, logger=logger, log_every_n_steps=4, default_root_dir=str(root),
                         callbacks=[monitor], enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(DriftModel(lr=0.5))
    return monitor


def history(log_dir: str) -> List[Dict[str, Any]]:
    with open(os.path.join(log_dir, HISTORY_FILENAME), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def first_pinned(records: List[Dict[str, Any]]) -> int:
    return next(r["step"] for r in records if "pinned" in r["alerts"])


def assert_alert_tags(tags: Dict[str, Any], records: List[Dict[str, Any]]) -> None:
    """The alerts as MLflow's tags have them: ``scalewatch.alerts`` and ``scalewatch.alert.pinned``."""
    step = first_pinned(records)
    assert f"pinned@{step}" in tags["scalewatch.alerts"]
    assert tags["scalewatch.alert.pinned"] == f"{GEN}@{step}"
    assert "pinned" in tags["scalewatch.alert.pinned.last"].lower()
    assert tags["scalewatch.alert.near_upper"].startswith(f"{GEN}@")  # every kind kept, not only the last


# ---- DVCLive through its Lightning logger -------------------------------------------------------


@pytest.fixture(scope="module")
def dvclive_run(tmp_path_factory: Any) -> Dict[str, Any]:
    pytest.importorskip("dvclive")
    root = tmp_path_factory.mktemp("dvclive")
    with environment(cwd=str(root), DVC_NO_ANALYTICS="1", DVCLIVE_TEST="false"):
        from dvclive.lightning import DVCLiveLogger

        logger = DVCLiveLogger(dir=str(root / "dvclive"), save_dvc_exp=False, report=None)
        monitor = lightning_fit(logger, root / "root")
    return dict(dir=root / "dvclive", records=history(monitor.log_dir))


def test_dvclive_keys_plot_alerts(dvclive_run: Dict[str, Any]) -> None:
    import yaml

    out, records = dvclive_run["dir"], dvclive_run["records"]
    with open(out / "plots" / "metrics" / "scalewatch" / GEN / "scale.tsv", encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    assert [int(step) for step, _ in rows] == [r["step"] for r in records] == list(range(3, 24, 4))
    assert [float(v) for _, v in rows] == pytest.approx([r["scale"] for r in records])
    with open(out / "plots" / "images" / "scalewatch" / "scale_history.png", "rb") as f:
        assert f.read(4) == PNG
    with open(out / "params.yaml", encoding="utf-8") as f:
        assert_alert_tags(yaml.safe_load(f), records)


# ---- Comet offline through Lightning's CometLogger ------------------------------------------------


@pytest.fixture(scope="module")
def comet_run(tmp_path_factory: Any) -> Dict[str, Any]:
    pytest.importorskip("comet_ml")
    root = tmp_path_factory.mktemp("comet")
    with environment(cwd=str(root), COMET_START_ONLINE="false", COMET_OFFLINE_DIRECTORY=str(root / "offline"),
                     COMET_DISABLE_AUTO_LOGGING="1", COMET_LOGGING_CONSOLE="error"):
        from pytorch_lightning.loggers import CometLogger

        logger = CometLogger(project="scalewatch-test")
        monitor = lightning_fit(logger, root / "root")
        logger.experiment.end()  # writes the offline zip
    archive = zipfile.ZipFile(glob.glob(str(root / "offline" / "*.zip"))[0])
    messages = [json.loads(line) for line in archive.read("messages.json").decode().splitlines() if line.strip()]
    return dict(archive=archive, messages=messages, records=history(monitor.log_dir))


def test_comet_offline_keys_plot_alerts(comet_run: Dict[str, Any]) -> None:
    archive, messages, records = comet_run["archive"], comet_run["messages"], comet_run["records"]
    metrics = [m["payload"]["metric"] for m in messages if m["type"] == "metric_msg"
               and m["payload"]["metric"]["metricName"] == SCALE_KEY]
    assert [m["step"] for m in metrics] == [r["step"] for r in records] == list(range(3, 24, 4))
    assert [float(m["metricValue"]) for m in metrics] == pytest.approx([r["scale"] for r in records])
    params = [(m["payload"]["additional_params"] or {}, m["payload"]) for m in messages if m["type"] == "file_upload"]
    uploads = {p.get("figName", p.get("fileName")): payload for p, payload in params}
    assert archive.read(uploads["scale_history.png"]["file_path"])[:4] == PNG
    recorded = archive.read(uploads[f"scalewatch/{HISTORY_FILENAME}"]["file_path"]).decode()
    assert [json.loads(line)["step"] for line in recorded.splitlines()] == [r["step"] for r in records]
    others = {m["payload"]["key"]: m["payload"]["value"] for m in messages if m["type"] == "log_other"}
    assert_alert_tags(others, records)
    tags = json.loads(archive.read("experiment.json")).get("tags", [])
    assert "scalewatch:pinned" in tags


# ---- ClearML offline through HF report_to ---------------------------------------------------------


@pytest.fixture(scope="module")
def clearml_run(tmp_path_factory: Any) -> Dict[str, Any]:
    pytest.importorskip("clearml")
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("clearml")
    with environment(CLEARML_OFFLINE_MODE="1", CLEARML_CACHE_DIR=str(root / "cache"), CLEARML_LOG_MODEL="false",
                     CLEARML_PROJECT="scalewatch-test", CLEARML_TASK="hf"):
        from clearml import Task
        from hf_models import hf_trainer
        from scalewatch.callbacks.hf import ScaleMonitorCallback

        # as ClearML documents it (the variable alone counts only before clearml's import); it stays offline
        # in this process: going back online connects to a server
        Task.set_offline(True)
        # the script as the task's code, not this checkout's git state: its git commands (which close() waits
        # for) took minutes here, forked from a process this size next to other engineers' work
        Task.force_store_standalone_script(True)
        monitor = ScaleMonitorCallback(notify=[])
        hf_trainer(root / "out", [monitor], report_to=("clearml",), max_steps=30).train()  # closes the task
    session = next(p for p in glob.glob(str(root / "cache" / "offline" / "offline-*")) if os.path.isdir(p))

    def lines(name: str) -> List[Dict[str, Any]]:
        with open(os.path.join(session, name), encoding="utf-8") as f:
            return [event for line in f if line.strip() for event in json.loads(line)]

    with open(os.path.join(session, "task.json"), encoding="utf-8") as f:
        task = json.load(f)
    return dict(session=session, metrics=lines("metrics.jsonl"), log=lines("log.jsonl"), task=task,
                records=history(monitor.log_dir))


# ClearML's configuration parser calls pyparsing's old spellings when it loads its defaults
@pytest.mark.filterwarnings("ignore::pyparsing.warnings.PyparsingDeprecationWarning")
def test_clearml_offline_keys_plot_alerts(clearml_run: Dict[str, Any]) -> None:
    events, records, task = clearml_run["metrics"], clearml_run["records"], clearml_run["task"]
    scalars = [e for e in events if e["type"] == "training_stats_scalar" and e["variant"] == SCALE_KEY]
    assert [e["iter"] for e in scalars] == [r["step"] for r in records] == list(range(5, 31, 5))
    assert [e["value"] for e in scalars] == pytest.approx([r["scale"] for r in records])
    images = [e for e in events if e["type"] == "training_debug_image" and e["metric"] == "scalewatch"
              and e["variant"] == "scale_history"]
    assert images, sorted({(e["type"], e.get("metric")) for e in events})
    from PIL import Image

    with Image.open(images[-1]["url"]) as image:  # ClearML stores a figure's image as JPEG
        assert image.width > 100 and image.height > 100
    assert "scalewatch:pinned" in task["tags"]
    params = {f"scalewatch.{name}": p["value"] for name, p in task["hyperparams"]["scalewatch"].items()}
    assert_alert_tags(params, records)
    assert set(task["hyperparams"]) - {"scalewatch"}, "the trainer's own parameters are kept"
    assert any("pinned at its bound" in e.get("msg", "") and e["level"] == "warning" for e in clearml_run["log"])


# ---- trackio (local sqlite) through HF report_to -------------------------------------------------


@pytest.fixture(scope="module")
def trackio_run(tmp_path_factory: Any) -> Dict[str, Any]:
    pytest.importorskip("transformers")
    import sqlite3

    root = tmp_path_factory.mktemp("trackio")
    # TRACKIO_DIR counts only at trackio's first import: read back from wherever trackio writes, in a
    # project of this run's own (trackio resumes a run of the same name)
    project = f"scalewatch-test-{root.name}"
    with environment(TRACKIO_DIR=str(root / "trackio"), HF_HUB_OFFLINE="1"):
        pytest.importorskip("trackio")
        from hf_models import hf_trainer
        from scalewatch.callbacks.hf import ScaleMonitorCallback

        monitor = ScaleMonitorCallback(notify=[])
        hf_trainer(root / "out", [monitor], report_to=("trackio",), max_steps=30, project=project,
                   run_name="hf").train()  # TrackioCallback finishes the run
        from trackio import utils
        from trackio.sqlite_storage import SQLiteStorage

        db = SQLiteStorage.get_project_db_path(project)
    with contextlib.closing(sqlite3.connect(db)) as con:
        rows = con.execute("select step, metrics from metrics where run_name = 'hf' order by id").fetchall()
        alerts = con.execute("select title, text, level, step from alerts where run_name = 'hf'").fetchall()
    return dict(rows=[(step, json.loads(values)) for step, values in rows], alerts=alerts, project=project, db=db,
                media=utils.MEDIA_DIR, records=history(monitor.log_dir))


def test_trackio_keys_plot_alerts(trackio_run: Dict[str, Any]) -> None:
    from scalewatch.callbacks.trackio_sink import IMAGE_KEY

    rows, records = trackio_run["rows"], trackio_run["records"]
    scales = [(step, values[SCALE_KEY]) for step, values in rows if SCALE_KEY in values]
    assert [step for step, _ in scales] == [r["step"] for r in records] == list(range(5, 31, 5))
    assert [value for _, value in scales] == pytest.approx([r["scale"] for r in records])
    images = [values[IMAGE_KEY] for _, values in rows if IMAGE_KEY in values]
    assert len(images) == 1 and images[0]["_type"] == "trackio.image"
    with open(os.path.join(trackio_run["media"], images[0]["file_path"]), "rb") as f:
        assert f.read(4) == PNG
    step = first_pinned(records)
    pinned = [a for a in trackio_run["alerts"] if a[0] == "scalewatch.alert.pinned"]
    assert pinned and pinned[0][1].startswith(f"{GEN}@{step}: ") and pinned[0][3] == step
    assert "pinned at its bound" in pinned[0][1] and pinned[0][2] == "warn"
    assert any(a[0] == "scalewatch.alert.near_upper" for a in trackio_run["alerts"])


# ---- Aim (a local repository) through its Lightning AimLogger -----------------------------------


@pytest.fixture(scope="module")
def aim_run(tmp_path_factory: Any) -> Dict[str, Any]:
    pytest.importorskip("aim")
    import lightning.pytorch as lp
    from aim import Repo
    from aim.pytorch_lightning import AimLogger
    from aim.sdk.index_manager import RepoIndexManager
    from aim.storage.context import Context

    from models import modules_for
    from scalewatch.callbacks import ScaleMonitor
    from scalewatch.callbacks.aim_sink import IMAGE_NAME

    root = tmp_path_factory.mktemp("aim")
    logger = AimLogger(repo=str(root), experiment="scalewatch-test", system_tracking_interval=None,
                       log_system_params=False, capture_terminal_logs=False)
    monitor = ScaleMonitor(every_n_steps=4, notify=[])
    trainer = lp.Trainer(max_steps=24, logger=logger, log_every_n_steps=4, default_root_dir=str(root / "root"),
                         callbacks=[monitor], enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(modules_for("lightning.pytorch")[0](lr=0.5))
    run_hash = logger.experiment.hash
    logger.finalize("success")  # closes the run
    repo = Repo(str(root))
    # a closed run's metadata is read through the repository's index, which `aim up` would update
    RepoIndexManager.get_index_manager(repo).index(run_hash)
    run = Repo(str(root)).get_run(run_hash)
    metric = next(m for m in run.metrics() if m.name == SCALE_KEY)
    images = run.get_image_sequence(IMAGE_NAME, Context({}))
    points = sorted((step, value) for step, (value, *_) in metric.data.items())  # step -> (value, epoch, time)
    return dict(steps=[step for step, _ in points], values=[value for _, value in points], run=run,
                images=[image.to_pil_image() for image in images.values.values_list()] if images else [],
                warnings=[record.message for record in run.get_log_records().values.values_list()],
                records=history(monitor.log_dir))


def test_aim_keys_plot_alerts(aim_run: Dict[str, Any]) -> None:
    run, records = aim_run["run"], aim_run["records"]
    assert aim_run["steps"] == [r["step"] for r in records] == list(range(3, 24, 4))
    assert aim_run["values"] == pytest.approx([r["scale"] for r in records])
    assert len(aim_run["images"]) == 1 and aim_run["images"][0].width > 100
    tags = {key: run.get(key) for key in ("scalewatch.alerts", "scalewatch.alert.pinned",
                                          "scalewatch.alert.pinned.last", "scalewatch.alert.near_upper")}
    assert_alert_tags(tags, records)
    assert "scalewatch:pinned" in run.props.tags
    assert any("pinned at its bound" in message for message in aim_run["warnings"])


def test_trackio_run_as_an_ignite_logger(trackio_run: Dict[str, Any], tmp_path: Any) -> None:
    """``trackio.init``'s run handed to the Ignite door as a plain logger (it has ``log``, no ``log_metrics``)."""
    pytest.importorskip("ignite")
    import sqlite3

    import trackio
    from test_ignite_door import GEN as IGNITE_GEN, setup

    from scalewatch.callbacks import ScaleMonitorHandler

    model, opt, trainer, data = setup()
    run = trackio.init(project=trackio_run["project"], name="ignite", auto_log_cpu=False)
    ScaleMonitorHandler(model, opt, log_dir=str(tmp_path), every_n_steps=8, notify=[], loggers=[run]).attach(trainer)
    trainer.run(data, max_epochs=1)
    trackio.finish()
    with contextlib.closing(sqlite3.connect(trackio_run["db"])) as con:
        rows = [(step, json.loads(values)) for step, values in
                con.execute("select step, metrics from metrics where run_name = 'ignite' order by id")]
        titles = {title for title, in con.execute("select title from alerts where run_name = 'ignite'")}
    key = f"scalewatch/{IGNITE_GEN}/scale"
    assert [step for step, values in rows if key in values] == [r["step"] for r in history(str(tmp_path))] \
        == [8, 16, 24, 32, 40]
    assert "scalewatch.alert.pinned" in titles
