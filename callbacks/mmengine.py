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

import dataclasses
import logging
from typing import Any, Callable, Dict, Optional, Union

INSTALL_HINT = ("scalewatch's ScaleMonitorHook needs mmengine: pip install 'scalewatch[mmengine]'. "
                "Without it, use scalewatch.callbacks.ScaleWatcher in your own loop")

try:
    from mmengine.dist import is_main_process
    from mmengine.hooks import Hook
    from mmengine.model import is_model_wrapper
    from mmengine.registry import HOOKS
    from mmengine.runner import EpochBasedTrainLoop
except ImportError as err:  # pragma: no cover - tested with mmengine hidden from sys.modules
    raise ImportError(INSTALL_HINT) from err

from scalewatch.callbacks.mmengine_runner import (HUB_PREFIX, PLOT_NAME, RunLogFile, RunnerSink, StepReaders,
                                                  accumulative_counts, logger_interval, optim_wrappers,
                                                  without_readings)
from scalewatch.callbacks.watch_settings import MAX_LOGGED_ELEMENTS, WatchSettings, check_positive_int, document_settings
from scalewatch.callbacks.watcher import ScaleWatcher, WatcherView
from scalewatch.monitor.rules import DEFAULT_MAX_PLOT_PANELS, DEFAULT_PATIENCE, DEFAULT_WARN_FRACTION
from scalewatch.monitor.saturation import Alert

__all__ = ["HUB_PREFIX", "PLOT_NAME", "STATE_KEY", "ScaleMonitorHook"]

log = logging.getLogger("scalewatch")

#: where the hook's position lives in an mmengine checkpoint
STATE_KEY = "scalewatch"
#: the arguments the hook takes, for the error about an unknown one: the settings, N named as mmengine does
ARGUMENTS = ("interval", *(f.name for f in dataclasses.fields(WatchSettings) if f.name != "every_n_steps"))


@HOOKS.register_module()
@document_settings
class ScaleMonitorHook(WatcherView, Hook):
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
        {settings}

    With ``on_saturation="stop"`` an ``IterBasedTrainLoop`` ends after the alert's
    iteration, an ``EpochBasedTrainLoop`` at the end of that epoch (mmengine's loop
    checks ``stop_training`` between epochs, as for EarlyStoppingHook).

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
        warn_fraction: float = DEFAULT_WARN_FRACTION,
        patience: int = DEFAULT_PATIENCE,
        params: Optional[Dict[str, Any]] = None,
        on_saturation: str = "warn",
        alert_callback: Optional[Callable[[Alert], None]] = None,
        plot: bool = True,
        plot_every_n_checks: Optional[int] = None,
        max_plot_panels: int = DEFAULT_MAX_PLOT_PANELS,
        notify: Optional[Any] = None,
        max_logged_elements: int = MAX_LOGGED_ELEMENTS,
        attention: Union[bool, Dict[str, Any]] = False,
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
            # mmengine's Config hands dicts over as ConfigDict: params as a plain dict
            self.settings = WatchSettings.from_arguments(dict(locals(), every_n_steps=interval,
                                                              params=None if params is None else dict(params)))
        except ValueError as err:
            raise ValueError(f"ScaleMonitorHook: {err}") from err
        self.interval = interval
        self.watcher: Optional[ScaleWatcher] = None
        self._sink: Optional[RunnerSink] = None
        self._log_file: Optional[RunLogFile] = None
        self._readers: Optional[StepReaders] = None  # reading before each optimizer step
        self._loaded: Optional[Dict[str, Any]] = None  # a checkpoint's state, until training starts

    # ---- set-up -------------------------------------------------------------------------

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        # Kept until before_train: only then is it known whether this is a resume.
        self._loaded = checkpoint.get(STATE_KEY)

    def before_train(self, runner: Any) -> None:
        self._unhook()  # a train() of this runner that raised never reached after_train
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        wrappers = optim_wrappers(runner.optim_wrapper)
        main = is_main_process()
        # first_step=1: mmengine logs iteration i (0-based) as i + 1.
        self.watcher = ScaleWatcher(model, settings=self.settings, is_global_zero=main, first_step=1,
                                    door_every_n_steps=logger_interval(runner))
        if main:  # other ranks neither write nor alert
            self._sink = RunnerSink(runner)
            self._log_file = RunLogFile.attach(runner.logger)
        self.watcher.attach(log_dir=runner.log_dir, loggers=[self._sink] if main else [])
        # a checkpoint's state is continued when training resumes (load_from alone starts at 0)
        self.watcher.begin(runner.iter // accumulative_counts(wrappers[0]) + 1, self._loaded)
        self._loaded = None
        self._readers = StepReaders(self.watcher, runner, wrappers)

    def _unhook(self) -> None:
        if self._readers is not None:
            self._readers.remove()
            self._readers = None

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
        self._unhook()
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
        without_readings(checkpoint)

    def __repr__(self) -> str:
        return f"ScaleMonitorHook(interval={self.interval}, watcher={self.watcher!r})"
