"""ScaleMonitorHook: the mmengine front door (a ``Hook`` registered in mmengine's ``HOOKS``).

It translates mmengine's life cycle into :class:`ScaleWatcher` calls and owns no
monitoring logic: which call is an optimizer step (the optim wrapper's ``step``,
inside ``update_params``), where the gradient can still be read (before that
step, unscaled), which loggers exist (``runner.message_hub`` for LoggerHook and
every visualizer backend), where the files go (``runner.log_dir``), how to stop
(``runner.train_loop.stop_training``) and how to checkpoint
(``before_save_checkpoint`` / ``after_load_checkpoint``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

INSTALL_HINT = ("scalewatch's ScaleMonitorHook needs mmengine: pip install 'scalewatch[mmengine]'. "
                "Without it, use scalewatch.callbacks.ScaleWatcher in your own loop")

try:
    from mmengine.dist import is_main_process
    from mmengine.hooks import Hook, LoggerHook
    from mmengine.model import is_model_wrapper
    from mmengine.optim import OptimWrapperDict
    from mmengine.registry import HOOKS
    from mmengine.runner import EpochBasedTrainLoop
    from mmengine.visualization import TensorboardVisBackend, WandbVisBackend
except ImportError as err:  # pragma: no cover - tested with mmengine hidden from sys.modules
    raise ImportError(INSTALL_HINT) from err

from scalewatch.callbacks.logger_sinks import ScaleSink, WandbSink
from scalewatch.callbacks.watch_settings import MAX_LOGGED_ELEMENTS, WatchSettings, check_positive_int
from scalewatch.callbacks.watcher import DEFAULT_EVERY_N_STEPS, ScaleWatcher
from scalewatch.dashboards import tensorboard_layout
from scalewatch.dashboards.tensor_series import TensorSeries
from scalewatch.monitor.saturation import Alert

__all__ = ["STATE_KEY", "ScaleMonitorHook"]

log = logging.getLogger("scalewatch")

#: where the hook's position lives in an mmengine checkpoint
STATE_KEY = "scalewatch"
#: message hub keys are ``train/`` + the engine's ``scalewatch/NAME/FIELD``: LoggerHook
#: collects the ``train/`` keys and writes them without that prefix
HUB_PREFIX = "train/"
#: the plot's name in the visualizer: a slash would send LocalVisBackend's PNG into a missing folder
PLOT_NAME = "scalewatch_plot"
#: the arguments the hook takes, for the error about an unknown one
ARGUMENTS = ("interval", "warn_fraction", "patience", "params", "on_saturation", "alert_callback", "plot",
             "plot_every_n_checks", "max_plot_panels", "notify", "max_logged_elements")


@HOOKS.register_module()
class ScaleMonitorHook(Hook):
    r"""Record bounded scales every N optimizer steps of an mmengine Runner, alert when they saturate, plot them.

    Finds every bounded scale of scalewatch (e.g. ``AttentionBiasGenerator``) in the
    runner's model by itself, named by its module path, plus bare parameters named in
    ``params``. It reads inside ``OptimWrapper.update_params``, right before the
    optimizer step: after gradient accumulation (one reading per optimizer step),
    unscaled under ``AmpOptimWrapper``, before gradient clipping, so ``grad`` is the
    gradient the optimizer steps with.

    Steps. The hook counts optimizer steps from 1: step ``s`` is taken in train
    iteration ``s * accumulative_counts`` (counted from 1, as mmengine's logs count
    them), and a reading is taken on steps N, 2N, ... With ``accumulative_counts=1``
    (the default) optimizer steps are train iterations, so the history's ``step`` is
    the ``Iter(train) [step/...]`` of the log line and the step of the scalars in
    every visualizer backend.

    Where things land:

    - the values ``scalewatch/NAME/{scale,raw,grad,min,max,clamp_fraction}`` go through
      ``runner.message_hub`` (as ``train/scalewatch/...``), so LoggerHook writes them
      into its line of the run's ``.log`` file and to every visualizer backend
      (LocalVisBackend's ``vis_data/scalars.json``, TensorBoard, W&B). Each value is
      in the hub for its check iteration only: the line shows the reading, never an
      average with or a repeat of an earlier one. When LoggerHook does not log that
      iteration (``interval * accumulative_counts`` not a multiple of its
      ``interval``, or no LoggerHook), the hook writes its own ``scalewatch
      Iter(train) [...]`` line and visualizer record at the same step;
    - ``scalewatch_history.jsonl`` and ``scale_history.png`` in ``runner.log_dir``
      (``work_dir/<timestamp>/``); the plot also goes to the visualizer as
      ``scalewatch_plot``;
    - alerts, and every other ``scalewatch`` log line, in the run's ``.log`` file
      (``runner.logger``'s file), on the console through the ``scalewatch`` Python
      logger, to W&B alerts with a WandbVisBackend, and to ``alert_callback``. Rank
      zero only in distributed runs: every rank reads the same all-reduced gradient.

    Keep the hook's priority (``LOW``): it takes its values back out of the message hub
    after LoggerHook (``BELOW_NORMAL``) wrote them.

    Off check steps the hook does integer arithmetic only: no tensor work and no
    host-device synchronisation. Its position (not the history) is saved in mmengine
    checkpoints under ``"scalewatch"``; a resumed run continues one record with no
    repeated step (in a new ``log_dir`` its history starts with the earlier readings).

    Args:
        interval: read every N optimizer steps (train iterations when
            ``accumulative_counts`` is 1); default: LoggerHook's ``interval``, so the
            readings sit on its lines. Keep ``interval * accumulative_counts`` a
            multiple of LoggerHook's ``interval``.
        warn_fraction: ``near_upper`` fires when ``scale > warn_fraction * max``,
            ``near_lower`` when ``scale < min + (1 - warn_fraction) * (max - min)``.
        patience: consecutive checks a scale must be pinned (raw at/beyond a bound
            with a gradient that cannot bring it back) before ``pinned`` fires.
        params: bare parameters to watch, ``{"logit_scale": (0.0, 4.6052)}``
            (name as in ``model.named_parameters()``, glob patterns allowed).
        on_saturation: ``"warn"`` only alerts; ``"stop"`` also ends training: an
            ``IterBasedTrainLoop`` after the alert's iteration, an
            ``EpochBasedTrainLoop`` at the end of that epoch (mmengine's loop checks
            ``stop_training`` between epochs, as for EarlyStoppingHook).
        alert_callback: called with each :class:`~scalewatch.monitor.Alert` (rank zero).
        plot: write ``scale_history.png`` at the end of training and send it to the
            visualizer.
        plot_every_n_checks: also send the plot to the visualizer every K checks.
        max_plot_panels: how many scales the plot draws (those closest to a bound).
        max_logged_elements: the per-element key cap for per-head scales (see ``ScaleWatcher``).
        notify: notification URL(s) for alerts (apprise); ``None`` reads
            ``SCALEWATCH_NOTIFY``.

    Raises:
        TypeError: for an argument the hook does not take (named, with the ones it
            takes), when the Runner builds its hooks.
        ValueError: for a bad value (named), when the Runner builds its hooks; for a
            ``params`` name the model does not have, when training starts.

    Example::

        custom_imports = dict(imports=["scalewatch.callbacks.mmengine"], allow_failed_imports=False)
        custom_hooks = [dict(type="ScaleMonitorHook", interval=50, params={"logit_scale": (0.0, 4.6052)})]
    """

    # After LoggerHook (BELOW_NORMAL) in after_train_iter, so the values it logged can be
    # taken out of the hub; before CheckpointHook (VERY_LOW), so a checkpoint holds this
    # iteration's reading.
    priority = "LOW"

    def __init__(
        self,
        interval: Optional[int] = None,
        warn_fraction: float = 0.9,
        patience: int = 3,
        params: Optional[Dict[str, Any]] = None,
        on_saturation: str = "warn",
        alert_callback: Optional[Callable[[Alert], None]] = None,
        plot: bool = True,
        plot_every_n_checks: Optional[int] = None,
        max_plot_panels: int = 6,
        notify: Optional[Any] = None,
        max_logged_elements: int = MAX_LOGGED_ELEMENTS,
        **unknown: Any,
    ) -> None:
        if unknown:
            # mmengine builds hooks from config dicts: name the stray key and what the hook takes.
            hint = " (mmengine's name for every N is `interval`)" if "every_n_steps" in unknown else ""
            raise TypeError(f"ScaleMonitorHook got unknown argument(s) {', '.join(map(repr, unknown))}{hint}; "
                            f"it takes {', '.join(ARGUMENTS)}")
        try:
            if interval is not None:
                check_positive_int("interval", interval)
            self.settings = WatchSettings(every_n_steps=interval, warn_fraction=warn_fraction, patience=patience,
                                          params=dict(params) if params is not None else None,
                                          on_saturation=on_saturation, alert_callback=alert_callback, plot=plot,
                                          plot_every_n_checks=plot_every_n_checks, max_plot_panels=max_plot_panels,
                                          notify=notify, max_logged_elements=max_logged_elements)
        except ValueError as err:
            raise ValueError(f"ScaleMonitorHook: {err}") from err
        self.interval = interval
        self.watcher: Optional[ScaleWatcher] = None
        self._sink: Optional[RunnerSink] = None
        self._log_file: Optional[_RunLogFile] = None
        self._wrapped: List[Any] = []
        self._loaded: Optional[Dict[str, Any]] = None  # a checkpoint's state, until training starts

    # ---- set-up -------------------------------------------------------------------------

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        # Kept until before_train: only then is it known whether this is a resume.
        self._loaded = checkpoint.get(STATE_KEY)

    def before_train(self, runner: Any) -> None:
        self._unwrap()  # a train() of this runner that raised never reached after_train
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        wrappers = _optim_wrappers(runner.optim_wrapper)
        every = self.settings.every_n_steps or _logger_interval(runner) or DEFAULT_EVERY_N_STEPS
        main = is_main_process()
        self.watcher = ScaleWatcher(model, settings=dataclasses.replace(self.settings, every_n_steps=every),
                                    is_global_zero=main, first_step=1)
        self.watcher.log_dir = runner.log_dir
        if main:  # other ranks neither write nor alert
            self._sink = RunnerSink(runner)
            self.watcher.sinks = [self._sink]
            self._log_file = _RunLogFile.attach(runner.logger)
        if self._loaded is not None and runner.iter > 0:  # resumed (load_from alone starts at 0)
            self.watcher.load_state_dict(self._loaded)
        self._loaded = None
        for wrapper in wrappers:
            self._wrap(runner, wrapper)
        self.watcher.start(runner.iter // _accumulative_counts(wrappers[0]) + 1)

    def _wrap(self, runner: Any, wrapper: Any) -> None:
        """Read before ``wrapper.step`` for this run: inside ``update_params``, before the optimizer steps."""
        step = wrapper.step  # the bound method; the instance attribute below shadows it
        accumulate = _accumulative_counts(wrapper)
        scaler = getattr(wrapper, "loss_scaler", None)  # AmpOptimWrapper's GradScaler
        watcher = self.watcher

        def read_then_step(**kwargs: Any) -> Any:
            # runner.iter is the 0-based iteration; its optimizer step, counted from 1.
            number = runner.iter // accumulate + 1
            if scaler is None or not scaler.is_enabled():
                watcher.step(number)
                return step(**kwargs)
            if watcher.schedule(number) and number > watcher.last_step:
                with _unscaled(scaler, wrapper.optimizer):  # only on check steps
                    watcher.step(number, grad_must_be_finite=False)
                    return step(**kwargs)
            watcher.step(number, grad_must_be_finite=False)  # overflow steps are skipped by the scaler
            return step(**kwargs)

        wrapper.step = read_then_step
        self._wrapped.append(wrapper)

    def _unwrap(self) -> None:
        for wrapper in self._wrapped:
            vars(wrapper).pop("step", None)  # OptimWrapper.step is itself again
        self._wrapped = []

    # ---- every iteration ----------------------------------------------------------------

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None,
                         outputs: Optional[dict] = None) -> None:
        sink = self._sink
        if sink is not None and sink.pending:
            sink.end_of_check(runner, batch_idx)
        watcher = self.watcher
        if watcher is not None and watcher.should_stop and not runner.train_loop.stop_training:
            runner.train_loop.stop_training = True
            if isinstance(runner.train_loop, EpochBasedTrainLoop):  # it checks between epochs only
                log.info("scalewatch: the epoch-based train loop stops at the end of this epoch")

    # ---- the end ------------------------------------------------------------------------

    def after_train(self, runner: Any) -> None:
        self._unwrap()
        try:
            if self.watcher is not None:
                self.watcher.close(step=runner.iter)
        finally:
            if self._log_file is not None:
                self._log_file.detach()
                self._log_file = None

    # ---- checkpoints --------------------------------------------------------------------

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        if self.watcher is not None:
            checkpoint[STATE_KEY] = self.watcher.state_dict()
        # The hub keys live for one iteration and are never resumed: keep them out of the
        # checkpoint, or resuming warns about each one.
        hub = checkpoint.get("message_hub")
        if isinstance(hub, dict) and isinstance(hub.get("resumed_keys"), dict):
            hub["resumed_keys"] = {k: v for k, v in hub["resumed_keys"].items()
                                   if not k.startswith(HUB_PREFIX + "scalewatch/")}

    def __repr__(self) -> str:
        return f"ScaleMonitorHook(interval={self.interval}, watcher={self.watcher!r})"


class RunnerSink(ScaleSink):
    """The runner's loggers as the engine's sink: message hub, visualizer, W&B alerts.

    A check's values go into ``runner.message_hub`` during the check iteration, for
    LoggerHook to write after it; :meth:`end_of_check` then takes them out again (and
    writes them itself if LoggerHook did not log that iteration).
    """

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.pending: Dict[str, float] = {}

    def start(self, names: Sequence[str], summarised: Sequence[str] = ()) -> None:
        for backend in _backends(self.runner, TensorboardVisBackend):
            tensorboard_layout.write_margin_layout(backend.experiment, names, summarised)

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        hub = self.runner.message_hub
        for key, value in metrics.items():
            hub.update_scalar(HUB_PREFIX + key, value, resumed=False)
        self.pending = dict(metrics)

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

    def log_figure(self, fig: Any, series: List[TensorSeries], step: int, final: bool) -> None:
        import numpy as np

        fig.canvas.draw()
        image = np.ascontiguousarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
        # Visualizer steps are iterations counted from 1: during training, this one's end.
        iteration = self.runner.iter if final else self.runner.iter + 1
        self.runner.visualizer.add_image(PLOT_NAME, image, step=iteration)


class _RunLogFile(logging.Handler):
    """Copies the ``scalewatch`` logger's lines (alerts among them) into the run's ``.log`` file.

    Only to the runner logger's file handlers: on the console the lines already show
    once, through the ``scalewatch`` logger's own handler.
    """

    def __init__(self, files: List[logging.Handler]) -> None:
        super().__init__()
        self.files = files

    @classmethod
    def attach(cls, mm_logger: logging.Logger) -> "_RunLogFile":
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


@contextlib.contextmanager
def _unscaled(scaler: Any, optimizer: Any) -> Iterator[None]:
    """Unscale the gradients before they are read; the wrapper's own ``unscale_`` (before
    clipping) then finds them unscaled, and the scaler's step does not unscale again."""
    scaler.unscale_(optimizer)
    scaler.unscale_ = lambda optimizer: None  # a second call would raise: done already
    try:
        yield
    finally:
        del scaler.unscale_


def _optim_wrappers(optim_wrapper: Any) -> List[Any]:
    if isinstance(optim_wrapper, OptimWrapperDict):
        return list(optim_wrapper.values())
    return [optim_wrapper]


def _accumulative_counts(wrapper: Any) -> int:
    return int(getattr(wrapper, "_accumulative_counts", 1))


def _logger_hooks(runner: Any) -> List[Any]:
    return [hook for hook in runner.hooks if isinstance(hook, LoggerHook)]


def _logger_interval(runner: Any) -> Optional[int]:
    hooks = _logger_hooks(runner)
    return hooks[0].interval if hooks else None


def _logger_hook_logs(runner: Any, batch_idx: int) -> bool:
    """Whether a LoggerHook writes a train line after iteration ``batch_idx`` (its rule in mmengine 0.10)."""
    for hook in _logger_hooks(runner):
        if hook.every_n_inner_iters(batch_idx, hook.interval):
            return True
        if hook.end_of_epoch(runner.train_dataloader, batch_idx) and (
                not hook.ignore_last or len(runner.train_dataloader) <= hook.interval):
            return True
    return False


def _backends(runner: Any, kind: type) -> List[Any]:
    # The Visualizer lists its backends only by name (get_backend), and names can be chosen.
    return [b for b in getattr(runner.visualizer, "_vis_backends", {}).values() if isinstance(b, kind)]
