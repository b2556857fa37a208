"""What the mmengine door needs from a Runner: its loggers as one sink, its log file for alerts, its optim wrappers.

Imported by :mod:`scalewatch.callbacks.mmengine` (which names the extra when mmengine is missing).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Dict, Iterator, List, Optional, Sequence

from mmengine.hooks import LoggerHook
from mmengine.optim import OptimWrapperDict
from mmengine.visualization import TensorboardVisBackend, WandbVisBackend

from scalewatch.callbacks.logger_sinks import ScaleSink, WandbSink
from scalewatch.callbacks.tracker_sinks import backend_sinks
from scalewatch.dashboards import tensorboard_layout
from scalewatch.dashboards.tensor_series import TensorSeries
from scalewatch.monitor.history.keys import KEY_PREFIX
from scalewatch.monitor.saturation import Alert

#: message hub keys are ``train/`` + the engine's ``scalewatch/NAME/FIELD``: LoggerHook
#: collects the ``train/`` keys and writes them without that prefix
HUB_PREFIX = "train/"
#: the plot's name in the visualizer: a slash would send LocalVisBackend's PNG into a missing folder
PLOT_NAME = "scalewatch_plot"


class RunnerSink(ScaleSink):
    """The runner's loggers as the engine's sink: message hub, visualizer, W&B alerts.

    A check's values go into ``runner.message_hub`` during the check iteration, for
    LoggerHook to write after it; :meth:`end_of_check` then takes them out again (and
    writes them itself if LoggerHook did not log that iteration).
    """

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.pending: Dict[str, float] = {}
        #: an MLflowVisBackend's run: its alerts as tags, the history and plot as its artifacts
        self.trackers: List[ScaleSink] = []

    def start(self, names: Sequence[str], summarised: Sequence[str] = ()) -> None:
        for backend in _backends(self.runner, TensorboardVisBackend):
            tensorboard_layout.write_margin_layout(backend.experiment, names, summarised)
        self.trackers = _mlflow_sinks(self.runner) + backend_sinks(_backends(self.runner, object))  # DVCLive, ClearML
        for tracker in self.trackers:
            tracker.start(names, summarised)

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        hub = self.runner.message_hub
        for key, value in metrics.items():
            hub.update_scalar(HUB_PREFIX + key, value, resumed=False)
        self.pending.update(metrics)  # one check may come in parts, one per optimizer

    def end_of_check(self, runner: Any, batch_idx: int) -> None:
        """After LoggerHook's ``after_train_iter`` of the check iteration."""
        metrics, self.pending = self.pending, {}
        if not _logger_hook_logs(runner, batch_idx):
            digits = getattr(runner.log_processor, "num_digits", 4)
            values = "  ".join(f"{k}: {v:.{digits}f}" for k, v in metrics.items())
            runner.logger.info(f"scalewatch Iter(train) [{runner.iter + 1}/{runner.max_iters}]  {values}")
            runner.visualizer.add_scalars(metrics, step=runner.iter + 1, file_path=f"{runner.timestamp}.json")
        scalars = runner.message_hub.log_scalars
        for key in metrics:
            scalars.pop(HUB_PREFIX + key, None)

    def alert(self, alert: Alert) -> None:
        for backend in _backends(self.runner, WandbVisBackend):
            WandbSink(backend.experiment).alert(alert)
        for tracker in self.trackers:
            tracker.alert(alert)

    def flush(self) -> None:
        for tracker in self.trackers:
            tracker.flush()

    def log_figure(self, fig: Any, series: List[TensorSeries], step: int, final: bool) -> None:
        import numpy as np

        for tracker in self.trackers:
            tracker.log_figure(fig, series, step, final)

        fig.canvas.draw()
        image = np.ascontiguousarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
        # Visualizer steps are iterations counted from 1: during training, this one's end.
        iteration = self.runner.iter if final else self.runner.iter + 1
        self.runner.visualizer.add_image(PLOT_NAME, image, step=iteration)


class RunLogFile(logging.Handler):
    """Copies the ``scalewatch`` logger's lines (alerts among them) into the run's ``.log`` file.

    Only to the runner logger's file handlers: on the console the lines already show
    once, through the ``scalewatch`` logger's own handler.
    """

    def __init__(self, files: List[logging.Handler]) -> None:
        super().__init__()
        self.files = files

    @classmethod
    def attach(cls, mm_logger: logging.Logger) -> "RunLogFile":
        target = logging.getLogger("scalewatch")
        for handler in [h for h in target.handlers if isinstance(h, cls)]:  # a crashed run's
            target.removeHandler(handler)
        handler = cls([h for h in mm_logger.handlers if isinstance(h, logging.FileHandler)])
        target.addHandler(handler)
        return handler

    def detach(self) -> None:
        logging.getLogger("scalewatch").removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        # The text as one message: MMLogger's file handler drops a WARNING whose format
        # string it has seen, and every alert shares one.
        line = logging.makeLogRecord(dict(vars(record), msg=record.getMessage(), args=None))
        for handler in self.files:
            if line.levelno >= handler.level:
                handler.handle(line)


def _mlflow_sinks(runner: Any) -> List[ScaleSink]:
    """The MLflow run of each MLflowVisBackend (LoggerHook sends it the values; these add alerts and artifacts)."""
    from mmengine.visualization import MLflowVisBackend

    sinks: List[ScaleSink] = []
    for backend in _backends(runner, MLflowVisBackend):
        backend.experiment  # noqa: B018 - starts its run if it has not yet
        from scalewatch.callbacks.mlflow_sink import active_run_sink, mlflow_vis_backend

        mlflow_vis_backend(backend)  # element keys NAME[i] as NAME:i (MLflow refuses brackets)
        sink = active_run_sink(runner.log_dir)
        if sink is not None:
            sinks.append(sink)
    return sinks


def logger_hooks(runner: Any) -> List[Any]:
    return [hook for hook in runner.hooks if isinstance(hook, LoggerHook)]


def _logger_hook_logs(runner: Any, batch_idx: int) -> bool:
    """Whether a LoggerHook writes a train line after iteration ``batch_idx`` (its rule in mmengine 0.10)."""
    for hook in logger_hooks(runner):
        if hook.every_n_inner_iters(batch_idx, hook.interval):
            return True
        if hook.end_of_epoch(runner.train_dataloader, batch_idx) and (
                not hook.ignore_last or len(runner.train_dataloader) <= hook.interval):
            return True
    return False


def _backends(runner: Any, kind: type) -> List[Any]:
    # The Visualizer lists its backends only by name (get_backend), and names can be chosen.
    return [b for b in getattr(runner.visualizer, "_vis_backends", {}).values() if isinstance(b, kind)]


@contextlib.contextmanager
def unscaled(scaler: Any, optimizer: Any) -> Iterator[None]:
    """Unscale the gradients before they are read; the wrapper's own ``unscale_`` (before
    clipping) then finds them unscaled, and the scaler's step does not unscale again."""
    scaler.unscale_(optimizer)
    scaler.unscale_ = lambda optimizer: None  # a second call would raise: done already
    try:
        yield
    finally:
        del scaler.unscale_


class StepReaders:
    """The engine reading just before each optim wrapper's optimizer steps (inside ``update_params``,
    before it zeroes the gradients), for every wrapper of a runner; :meth:`remove` takes them off.

    A plain wrapper gets the engine's optimizer step pre-hook. An ``AmpOptimWrapper``'s step is
    wrapped instead: its scaler skips ``optimizer.step()`` on an overflow (no pre-hook runs) and
    the gradients are zeroed right after, so only there can a skipped check still be read; on
    check steps the gradients are unscaled first (the wrapper's own ``unscale_`` before clipping
    then finds them done).
    """

    def __init__(self, watcher: Any, runner: Any, wrappers: Sequence[Any]) -> None:
        self._hooks: List[Any] = []    # optimizer step pre-hooks' handles
        self._wrapped: List[Any] = []  # AmpOptimWrappers whose step reads first
        for wrapper in wrappers:
            self._read_before_step(watcher, runner, wrapper)

    def _read_before_step(self, watcher: Any, runner: Any, wrapper: Any) -> None:
        accumulate = accumulative_counts(wrapper)

        def number() -> int:  # runner.iter is the 0-based iteration; its optimizer step, counted from 1
            return runner.iter // accumulate + 1

        scaler = getattr(wrapper, "loss_scaler", None)  # AmpOptimWrapper's GradScaler
        if scaler is None:
            self._hooks.append(watcher.read_before_optimizer_step(wrapper.optimizer, number))
            return
        step = wrapper.step  # the bound method; the instance attribute below shadows it

        def read_then_step(**kwargs: Any) -> Any:
            if watcher.will_read(number()):
                with unscaled(scaler, wrapper.optimizer):  # only on check steps
                    watcher.step(number(), grad_must_be_finite=False)
                    return step(**kwargs)
            watcher.step(number(), grad_must_be_finite=False)  # overflow steps are skipped by the scaler
            return step(**kwargs)

        wrapper.step = read_then_step
        self._wrapped.append(wrapper)

    def remove(self) -> None:
        for handle in self._hooks:
            handle.remove()
        for wrapper in self._wrapped:
            vars(wrapper).pop("step", None)  # OptimWrapper.step is itself again
        self._hooks, self._wrapped = [], []


def without_readings(checkpoint: Dict[str, Any]) -> None:
    """Drop the readings from a checkpoint's message hub: a resumed run must not log them again."""
    hub = checkpoint.get("message_hub")
    if isinstance(hub, dict) and isinstance(hub.get("resumed_keys"), dict):
        hub["resumed_keys"] = {k: v for k, v in hub["resumed_keys"].items()
                               if not k.startswith(HUB_PREFIX + KEY_PREFIX)}


def optim_wrappers(optim_wrapper: Any) -> List[Any]:
    if isinstance(optim_wrapper, OptimWrapperDict):
        return list(optim_wrapper.values())
    return [optim_wrapper]


def accumulative_counts(wrapper: Any) -> int:
    return int(getattr(wrapper, "_accumulative_counts", 1))


def logger_interval(runner: Any) -> Optional[int]:
    hooks = logger_hooks(runner)
    return hooks[0].interval if hooks else None
