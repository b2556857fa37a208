"""An MLflow run as the engine's sink: the keys as metrics, the alerts as tags, the history and plot as artifacts.

An MLflow run is a run: its history, its plot and its alerts belong to it, never to a
tracking root (or working directory) shared by other runs. So a door that logs to MLflow
puts the history in a folder of that run (:func:`run_log_dir`): the run's own artifact
folder when it is local (the file store, or a local artifact root next to sqlite), so the
history and plot *are* the run's artifacts as they are written; otherwise a folder named by
the run's id, uploaded as the run's artifacts at the end.

Every call to MLflow goes out on this sink's own thread, through a bounded queue: a slow or
unreachable tracking server never holds a training step, and the end of training waits at
most :data:`MLFLOW_CLOSE_WAIT` seconds for what is still queued.

MLflow refuses ``[`` and ``]`` in metric names, so a per-head element's key
``scalewatch/NAME[3]/scale`` is logged as ``scalewatch/NAME:3/scale`` (:func:`mlflow_key`);
``scalewatch report runs:/RUN_ID`` reads it back as ``NAME[3]`` (the key codec's MLflow spelling).
"""
from __future__ import annotations

import collections
import io
import logging
import os
import tempfile
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence

from scalewatch.callbacks.logger_sinks import ScaleSink
from scalewatch.dashboards.filenames import PLOT_FILENAME
from scalewatch.dashboards.mlflow_source import ARTIFACT_DIR, local_path
from scalewatch.monitor.history import HISTORY_FILENAME
from scalewatch.monitor.history.keys import key_from_mlflow, mlflow_metric_key
from scalewatch.monitor.saturation import Alert

log = logging.getLogger("scalewatch")

#: the end of training waits at most this long for queued MLflow calls (as for notifications)
MLFLOW_CLOSE_WAIT = 10.0
#: MLflow calls queued at most; beyond, the oldest is dropped (and counted in one warning)
MLFLOW_QUEUE = 256
#: metrics per ``log_batch`` (MLflow's limit is 1000)
BATCH = 1000
#: tag values are cut to this many characters (MLflow 3 allows 8000)
TAG_CHARS = 5000
#: the tags that make alerts visible on the run
ALERTS_TAG = "scalewatch.alerts"
ALERT_TAG = "scalewatch.alert.{kind}"

#: a scalewatch key as MLflow takes it, ``NAME[3]`` -> ``NAME:3``, and back: the key codec's MLflow spelling
mlflow_key = mlflow_metric_key


def mlflow_vis_backend(backend: Any) -> Any:
    """Have an mmengine ``MLflowVisBackend`` log element keys ``NAME[i]`` as ``NAME:i``.

    LoggerHook hands every backend the same scalars; MLflow refuses the brackets and the
    whole ``log_batch`` with them (and training with it), so this backend's ``add_scalar`` and
    ``add_scalars`` rename the keys first. Its ``add_image`` gets a ``.png`` on a name without
    an extension (``mlflow.log_image`` refuses one; the door's plot is ``scalewatch_plot``).
    Wrapped once per backend object.
    """
    if getattr(backend, "_scalewatch_keys", False):
        return backend
    add_scalar, add_scalars, add_image = backend.add_scalar, backend.add_scalars, backend.add_image

    def image(name: str, image: Any, step: int = 0, **kwargs: Any) -> None:
        add_image(name if os.path.splitext(name)[1] else name + ".png", image, step, **kwargs)

    def scalar(name: str, value: Any, step: int = 0, **kwargs: Any) -> None:
        add_scalar(mlflow_key(name), value, step, **kwargs)

    def scalars(scalar_dict: Dict[str, Any], step: int = 0, file_path: Optional[str] = None, **kwargs: Any) -> None:
        add_scalars({mlflow_key(k): v for k, v in scalar_dict.items()}, step, file_path, **kwargs)

    backend.add_scalar, backend.add_scalars, backend.add_image = scalar, scalars, image
    backend._scalewatch_keys = True
    return backend


def run_log_dir(client: Any, run_id: str, root: Optional[str] = None) -> str:
    """Where a run's history and plot go: ``<the run's local artifact folder>/scalewatch``, or, for
    remote artifacts, ``<root or the working directory>/mlflow/<run_id>`` (uploaded at the end)."""
    artifacts = local_path(client.get_run(run_id).info.artifact_uri)
    if artifacts is not None:
        return os.path.join(artifacts, ARTIFACT_DIR)
    return os.path.join(os.path.abspath(root or os.getcwd()), "mlflow", run_id)


class MlflowSink(ScaleSink):
    """One MLflow run, through ``MlflowClient`` and the run's id, on a thread of its own.

    Args:
        client: an ``mlflow.tracking.MlflowClient`` for the run's tracking URI.
        run_id: the run.
        log_dir: the watcher's log directory (history and plot). When it is not inside the
            run's artifact folder, both are uploaded to the run's ``scalewatch/`` artifacts
            at the end of training.
    """

    def __init__(self, client: Any, run_id: str, log_dir: Optional[str] = None) -> None:
        if not run_id:
            raise ValueError("MlflowSink needs an MLflow run id (is the run started?)")
        self.client, self.run_id, self.log_dir = client, run_id, log_dir
        self._queue: Deque[Callable[[], None]] = collections.deque()
        self._ready = threading.Condition()
        self._busy = False
        self._dropped = 0
        self._failed = False
        self._alerts: Dict[str, List[str]] = {}
        self._thread: Optional[threading.Thread] = None
        self._local: Optional[bool] = None

    # ---- the thread -----------------------------------------------------------------------

    def _submit(self, call: Callable[[], None]) -> None:
        with self._ready:
            if len(self._queue) >= MLFLOW_QUEUE:
                self._queue.popleft()
                self._dropped += 1
                if self._dropped == 1:
                    log.warning("scalewatch: MLflow does not keep up (run %s); dropping the oldest queued calls",
                                self.run_id)
            self._queue.append(call)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="scalewatch-mlflow", daemon=True)
                self._thread.start()
            self._ready.notify()

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._busy = False
                    self._ready.notify_all()
                    self._ready.wait()
                call = self._queue.popleft()
                self._busy = True
            try:
                call()
            except Exception as err:  # a tracker must never end training
                if not self._failed:
                    log.warning("scalewatch could not log to MLflow run %s: %s", self.run_id, err)
                self._failed = True

    def wait(self, timeout: float = MLFLOW_CLOSE_WAIT) -> bool:
        """Wait (at most ``timeout`` s) until every queued call is done; whether they all are."""
        end = time.monotonic() + timeout
        with self._ready:
            while self._queue or self._busy:
                left = end - time.monotonic()
                if left <= 0:
                    log.warning("scalewatch: gave up waiting for MLflow after %.0f s (run %s); %d call(s) left",
                                timeout, self.run_id, len(self._queue))
                    return False
                self._ready.wait(left)
        return True

    # ---- the sink -------------------------------------------------------------------------

    @property
    def local(self) -> bool:
        """Whether the log directory is inside the run's local artifact folder (nothing to upload)."""
        if self._local is None:
            try:
                artifacts = local_path(self.client.get_run(self.run_id).info.artifact_uri)
            except Exception:  # noqa: BLE001 - unknown: upload at the end
                artifacts = None
            self._local = bool(artifacts and self.log_dir and os.path.abspath(self.log_dir).startswith(
                os.path.abspath(artifacts)))
        return self._local

    def start(self, names: Sequence[str], summarised: Sequence[str] = ()) -> None:
        count = str(len(names) + len(summarised))
        self._submit(lambda: self.client.set_tag(self.run_id, "scalewatch.scales", count))

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(mlflow_key(k), float(v), stamp, int(step)) for k, v in metrics.items()]

        def send() -> None:
            for i in range(0, len(batch), BATCH):
                self.client.log_batch(self.run_id, metrics=batch[i:i + BATCH])

        self._submit(send)

    def alert(self, alert: Alert) -> None:
        fired = self._alerts.setdefault(alert.kind, [])
        fired.append(f"{alert.name}@{alert.step}")
        summary = " ".join(f"{kind}@{entries[0].rsplit('@', 1)[1]}" + (f"+{len(entries) - 1}" if len(entries) > 1
                                                                        else "")
                           for kind, entries in self._alerts.items())
        tags = {ALERTS_TAG: summary, ALERT_TAG.format(kind=alert.kind): ", ".join(fired)[:TAG_CHARS],
                ALERT_TAG.format(kind=alert.kind) + ".last": alert.message[:TAG_CHARS]}

        def send() -> None:
            from mlflow.entities import RunTag

            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

        self._submit(send)

    def log_figure(self, fig: Any, series: List[Any], step: int, final: bool) -> None:
        if not final or self.local:
            return  # a local artifact folder gets the PNG the watcher writes there
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)  # drawn here; the thread only sends the bytes
        data = buffer.getvalue()
        self._submit(lambda: self._upload_bytes(PLOT_FILENAME, data))

    def _upload_bytes(self, name: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, name)
            with open(path, "wb") as f:
                f.write(data)
            self.client.log_artifact(self.run_id, path, ARTIFACT_DIR)

    def flush(self) -> None:
        """The end of training: upload the history (when it is not a local artifact already), then wait."""
        history = os.path.join(self.log_dir, HISTORY_FILENAME) if self.log_dir else None
        if history and os.path.isfile(history) and not self.local:
            with open(history, "rb") as f:
                data = f.read()
            self._submit(lambda: self._upload_bytes(HISTORY_FILENAME, data))
        self.wait()


def active_run_sink(log_dir: Optional[str] = None) -> Optional[MlflowSink]:
    """A sink for the fluent API's active run (Ignite's ``MLflowLogger``, HF's ``MLflowCallback``,
    mmengine's ``MLflowVisBackend``); ``None`` when no run is active."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        return None
    return MlflowSink(mlflow.tracking.MlflowClient(mlflow.get_tracking_uri()), run.info.run_id, log_dir)


def is_lightning_mlflow(logger: Any) -> bool:
    """Whether ``logger`` is Lightning's ``MLFlowLogger`` (either package), without importing mlflow."""
    cls = type(logger)
    return cls.__name__ == "MLFlowLogger" and cls.__module__.split(".")[0] in ("lightning", "pytorch_lightning")


def lightning_log_dir(logger: Any, root: Optional[str]) -> Optional[str]:
    """The run's own folder for a Lightning ``MLFlowLogger`` (rank zero), instead of its shared ``save_dir``."""
    run_id = getattr(logger, "run_id", None)
    return run_log_dir(logger.experiment, run_id, root) if run_id else None


def lightning_sink(logger: Any, log_dir: Optional[str]) -> MlflowSink:
    """A Lightning ``MLFlowLogger``'s run as a sink: its client and run id (the keys go out with
    :func:`mlflow_key`: Lightning's own ``log_metrics`` would strip the brackets of ``NAME[i]``)."""
    return MlflowSink(logger.experiment, logger.run_id, log_dir)


__all__ = ["ALERTS_TAG", "ALERT_TAG", "ARTIFACT_DIR", "MLFLOW_CLOSE_WAIT", "MlflowSink", "active_run_sink",
           "is_lightning_mlflow", "key_from_mlflow", "lightning_log_dir", "lightning_sink", "local_path", "mlflow_key",
           "mlflow_vis_backend", "run_log_dir"]
