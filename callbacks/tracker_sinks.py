"""Trackers handed to a door as plain objects (Ignite's loggers, an MLflow run, other trackers' runs) as sinks.

Recognised by their module and class, so nothing here imports a tracker that is not in use:
Ignite's ``TensorboardLogger`` (its ``SummaryWriter``), ``WandBLogger`` (its W&B run) and
``MLflowLogger`` (the fluent API's active run); a ``trackio.Run`` (``trackio.init``'s) as a
``TrackioSink``; a :class:`ScaleSink` as it is; anything else with ``log_metrics(metrics, step)``
as a :class:`MetricsSink`.

A door's Comet, DVCLive, ClearML, Aim or trackio logger (:func:`run_sink`: Lightning's ``CometLogger``,
DVCLive's ``DVCLiveLogger`` and Aim's ``AimLogger``, HF's ``CometCallback``, ``DVCLiveCallback``,
``ClearMLCallback`` and ``TrackioCallback``, mmengine's ``DVCLiveVisBackend``, ``ClearMLVisBackend``
and ``AimVisBackend``) becomes a :class:`RunSink`: the keys through the door's own path (trackio:
straight to its run at the reading step), the alerts on the run as MLflow's tags are
(``scalewatch.alerts`` and ``scalewatch.alert.KIND``; trackio: its own alerts), the final plot as the
run's image. Unlike MLflow's client, these trackers already hand what they are given to a thread of
their own (Comet's streamer, ClearML's reporter, trackio's sender) or write a local file (DVCLive,
Aim's repository), so their sinks call them directly.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence

from scalewatch.callbacks.logger_sinks import MetricsFn, MetricsSink, ScaleSink, TensorBoardSink, WandbSink
from scalewatch.callbacks.mlflow_sink import ALERT_TAG, ALERTS_TAG, TAG_CHARS
from scalewatch.monitor.saturation import Alert

log = logging.getLogger("scalewatch")


def _kind(logger: Any) -> str:
    cls = type(logger)
    return f"{cls.__module__}.{cls.__name__}"


def _is_ignite_mlflow(logger: Any) -> bool:
    return _kind(logger).startswith("ignite.") and type(logger).__name__ == "MLflowLogger"


class RunSink(ScaleSink):
    """A tracker's run: what every Comet, DVCLive, ClearML, Aim and trackio sink shares.

    Subclasses say how the run takes values (:meth:`send_metrics`), an alert and its tags
    (:meth:`send_alert`), the final plot (:meth:`send_plot`) and the end (:meth:`send_end`).
    Every call is guarded: a tracker never ends training.

    Args:
        run: the tracker's run object (a Comet experiment, a DVCLive ``Live``, a ClearML ``Task``, an Aim
            or a trackio ``Run``).
        log_metrics: how values are logged; default :meth:`send_metrics`. A door passes its
            logger's own path so that its prefix and step apply as for every other metric.
        plot: whether the final plot goes to the run (``False`` where the door sends it itself).
        log_dir: the watcher's log directory (its history, for trackers that keep a copy).

    Raises:
        ValueError: ``run`` is ``None`` (the tracker's run has not started).
    """

    tracker = "tracker"

    def __init__(self, run: Any, log_metrics: Optional[MetricsFn] = None, plot: bool = True,
                 log_dir: Optional[str] = None) -> None:
        if run is None:
            raise ValueError(f"{type(self).__name__} needs a started {self.tracker} run, got None")
        self.run, self._log_metrics, self.plot, self.log_dir = run, log_metrics, plot, log_dir
        self._fired: Dict[str, List[str]] = {}

    def _guard(self, call: Callable[..., None], *args: Any) -> None:
        try:
            call(*args)
        except Exception as err:  # a tracker must never end training
            log.warning("scalewatch could not log to %s: %s", self.tracker, err)

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        self._guard(self._log_metrics or self.send_metrics, metrics, step)

    def alert(self, alert: Alert) -> None:
        self._guard(self.send_alert, alert, self.alert_tags(alert))

    def alert_tags(self, alert: Alert) -> Dict[str, str]:
        """The tags MLflow's sink sets for ``alert``: every kind's first step (and count), this kind's list, its text."""
        fired = self._fired.setdefault(alert.kind, [])
        fired.append(f"{alert.name}@{alert.step}")
        summary = " ".join(f"{kind}@{entries[0].rsplit('@', 1)[1]}" + (f"+{len(entries) - 1}" if len(entries) > 1
                                                                        else "")
                           for kind, entries in self._fired.items())
        key = ALERT_TAG.format(kind=alert.kind)
        return {ALERTS_TAG: summary, key: ", ".join(fired)[:TAG_CHARS], key + ".last": alert.message[:TAG_CHARS]}

    def log_figure(self, fig: Any, series: List[Any], step: int, final: bool) -> None:
        if final and self.plot:
            self._guard(self.send_plot, fig, step)

    def flush(self) -> None:
        self._guard(self.send_end)

    def send_metrics(self, metrics: Dict[str, float], step: int) -> None:
        raise NotImplementedError

    def send_alert(self, alert: Alert, tags: Dict[str, str]) -> None:
        raise NotImplementedError

    def send_plot(self, fig: Any, step: int) -> None:
        raise NotImplementedError

    def send_end(self) -> None:
        """The end of training (nothing by default: the run is the user's to end)."""


def run_sink(tracker: Any, metrics: Optional[ScaleSink] = None, log_dir: Optional[str] = None) -> Optional[RunSink]:
    """A door's Comet, DVCLive, ClearML, Aim or trackio logger as a :class:`RunSink`; ``None`` for anything else
    (or a logger whose run has not started).

    Args:
        tracker: a Lightning logger, an HF ``report_to`` callback or an mmengine visualizer backend.
        metrics: the door's own path for the values (they go through it); ``None`` for mmengine's
            backends, which LoggerHook gives the values and the visualizer the plot image.
        log_dir: the watcher's log directory.

    Example::

        logger = CometLogger(project="clip")  # COMET_START_ONLINE=false: an OfflineExperiment
        sink = run_sink(logger, MetricsSink(logger), "runs/clip")  # a CometSink; None for a CSVLogger
    """
    kind, name = _kind(tracker), type(tracker).__name__
    package = kind.split(".")[0]
    send = metrics.log_metrics if metrics is not None else None
    if name in ("CometLogger", "CometCallback") and package in ("lightning", "pytorch_lightning", "transformers"):
        from scalewatch.callbacks.comet_sink import CometSink

        run = tracker.experiment if name == "CometLogger" else getattr(tracker, "_experiment", None)
        return CometSink(run, send, log_dir=log_dir) if run is not None else None
    if name in ("DVCLiveLogger", "DVCLiveCallback", "DVCLiveVisBackend"):
        from scalewatch.callbacks.dvclive_sink import DvcliveSink

        run = getattr(tracker, "live", None) if name == "DVCLiveCallback" else tracker.experiment
        return DvcliveSink(run, send, plot=metrics is not None, log_dir=log_dir) if run is not None else None
    if name in ("ClearMLCallback", "ClearMLVisBackend"):
        from scalewatch.callbacks.clearml_sink import ClearmlSink

        if name == "ClearMLVisBackend":
            tracker.experiment  # noqa: B018 - starts its task if it has not yet
        run = getattr(tracker, "_clearml_task" if name == "ClearMLCallback" else "_task", None)
        return ClearmlSink(run, send, plot=metrics is not None, log_dir=log_dir) if run is not None else None
    if (package == "aim" and name == "AimLogger") or name == "AimVisBackend":
        from scalewatch.callbacks.aim_sink import AimSink

        return AimSink(tracker.experiment, send, plot=metrics is not None, log_dir=log_dir)
    if name == "TrackioCallback":
        from scalewatch.callbacks.trackio_sink import TrackioSink

        # it holds no run: trackio's current one is its run (None before its set-up); the keys go
        # straight to the run at the reading step (HF's on_log renames them and drops the step)
        run = tracker._trackio.context_vars.current_run.get()
        return TrackioSink(run, log_dir=log_dir) if run is not None else None
    return None


def with_tracker(tracker: Any, metrics: ScaleSink, log_dir: Optional[str] = None) -> ScaleSink:
    """``metrics`` (a door's sink for ``tracker``'s values), or, for a Comet, DVCLive or ClearML logger,
    a :class:`RunSink` that sends the values through it and adds the alerts and the plot."""
    return run_sink(tracker, metrics, log_dir) or metrics


def backend_sinks(backends: Sequence[Any], log_dir: Optional[str] = None) -> List[ScaleSink]:
    """mmengine's DVCLive and ClearML visualizer backends as sinks for the alerts (LoggerHook sends
    them the values, the visualizer the plot image)."""
    sinks = [run_sink(backend, None, log_dir) for backend in backends]
    return [sink for sink in sinks if sink is not None]


def tracker_log_dir(loggers: Sequence[Any]) -> Optional[str]:
    """A folder of the MLflow run among ``loggers`` (see :func:`~scalewatch.callbacks.mlflow_sink.run_log_dir`)."""
    for logger in loggers:
        if _is_ignite_mlflow(logger):
            import mlflow

            from scalewatch.callbacks.mlflow_sink import run_log_dir

            run = mlflow.active_run()
            if run is not None:
                return run_log_dir(mlflow.tracking.MlflowClient(mlflow.get_tracking_uri()), run.info.run_id)
    return None


def tracker_sink(logger: Any, log_dir: Optional[str] = None) -> ScaleSink:
    """``logger`` as the engine's sink (see the module docstring)."""
    if isinstance(logger, ScaleSink):
        return logger
    kind = _kind(logger)
    if kind.startswith("ignite.") and type(logger).__name__ == "TensorboardLogger":
        return TensorBoardSink(logger.writer)
    if kind.startswith("ignite.") and type(logger).__name__ == "WandBLogger":
        return WandbSink(logger._wandb.run)
    if kind.startswith("trackio.") and type(logger).__name__ == "Run":  # trackio.init's: log(), no log_metrics()
        from scalewatch.callbacks.trackio_sink import TrackioSink

        return TrackioSink(logger, log_dir=log_dir)
    if _is_ignite_mlflow(logger):
        from scalewatch.callbacks.mlflow_sink import active_run_sink

        sink = active_run_sink(log_dir)
        if sink is None:
            raise ValueError("the Ignite MLflowLogger has no active MLflow run")
        return sink
    return with_tracker(logger, MetricsSink(logger), log_dir)


__all__ = ["RunSink", "backend_sinks", "run_sink", "tracker_log_dir", "tracker_sink", "with_tracker"]
