"""ScaleMonitor: the Lightning front door (``lightning.pytorch`` and ``pytorch_lightning`` alike).

It translates Lightning's life cycle into :class:`ScaleWatcher` calls and owns no
monitoring logic: which step is an optimizer step, where the gradient can still
be read, which loggers exist, where the log directory is, how to stop, how to
checkpoint.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Union

from scalewatch.callbacks import lightning_compat as compat
from scalewatch.callbacks import mlflow_sink
from scalewatch.callbacks.lightning_compat import MisconfigurationException
from scalewatch.callbacks.logger_sinks import MetricsSink, ScaleSink, TensorBoardSink, WandbSink
from scalewatch.callbacks.tracker_sinks import with_tracker
from scalewatch.callbacks.watch_settings import MAX_LOGGED_ELEMENTS, WatchSettings, document_settings
from scalewatch.callbacks.watcher import DEFAULT_EVERY_N_STEPS, ScaleWatcher, WatcherView, metric_key
from scalewatch.dashboards.filenames import PLOT_FILENAME
from scalewatch.monitor.rules import DEFAULT_MAX_PLOT_PANELS, DEFAULT_PATIENCE, DEFAULT_WARN_FRACTION
from scalewatch.monitor.saturation import Alert

__all__ = ["DEFAULT_EVERY_N_STEPS", "MisconfigurationException", "PLOT_FILENAME", "ScaleMonitor", "metric_key"]


@document_settings
class ScaleMonitor(WatcherView, *compat.CALLBACK_BASES):  # type: ignore[misc]
    r"""Record bounded scales every N optimizer steps, alert when they saturate, plot them.

    A Lightning callback for either package: it is a ``lightning.pytorch.Callback``
    and a ``pytorch_lightning.Callback`` (whichever are installed), so both
    Trainers and both ``LightningCLI``\ s take it, and it gives either package's
    loggers the full treatment.

    Finds every bounded scale of scalewatch (e.g. ``AttentionBiasGenerator``) in the
    LightningModule by itself, named by its module path, plus bare parameters
    named in ``params``. On every ``every_n_steps``-th optimizer step it reads, in
    ``on_before_optimizer_step`` (after accumulation, unscaled under AMP, before
    clipping), per scale: the effective ``scale``, the ``raw`` parameter, its
    ``grad``, the bounds and, for the bias generator, the fraction of bias entries
    cut by the final clamp. Readings go to every attached logger as
    ``scalewatch/NAME/{scale,raw,grad,min,max,clamp_fraction}`` at the step
    ``self.log`` uses, and to ``scalewatch_history.jsonl`` in the run's log
    directory. Off check steps it does no tensor work and forces no host-device
    synchronisation; on a check step all values reach the host in one transfer.

    Args:
        every_n_steps: read every N optimizer steps; default: the trainer's
            ``log_every_n_steps``, so readings sit on the loss curve's steps.
        {settings}
        progress_bar: show the current scale in the progress bar.
        state_key_suffix: tells two monitors on one trainer apart in checkpoints.

    Raises:
        MisconfigurationException: on a bad argument (named, with its value), and at
            fit start for a ``params`` name the model does not have. It is caught
            by ``except MisconfigurationException`` of either Lightning package. An
            unusable ``notify`` URL is one too, shown masked.
        ImportError: ``notify`` URLs are given but apprise is not installed
            (``pip install 'scalewatch[notify]'``).

    Example::

        from scalewatch.callbacks import ScaleMonitor
        monitor = ScaleMonitor(every_n_steps=50, warn_fraction=0.9)
        trainer = L.Trainer(callbacks=[monitor], logger=[tb_logger, wandb_logger, csv_logger])
    """

    def __init__(
        self,
        every_n_steps: Optional[int] = None,
        warn_fraction: float = DEFAULT_WARN_FRACTION,
        patience: int = DEFAULT_PATIENCE,
        params: Optional[Dict[str, Any]] = None,
        on_saturation: str = "warn",
        alert_callback: Optional[Callable[[Alert], None]] = None,
        progress_bar: bool = True,
        plot: bool = True,
        plot_every_n_checks: Optional[int] = None,
        max_plot_panels: int = DEFAULT_MAX_PLOT_PANELS,
        notify: Optional[Any] = None,
        max_logged_elements: int = MAX_LOGGED_ELEMENTS,
        attention: Union[bool, Dict[str, Any]] = False,
        state_key_suffix: str = "",
    ) -> None:
        try:
            self.settings = WatchSettings.from_arguments(locals())
        except ValueError as err:
            raise MisconfigurationException(str(err)) from err
        self.every_n_steps = self.settings.every_n_steps
        self.warn_fraction = self.settings.warn_fraction
        self.patience = self.settings.patience
        self.progress_bar = progress_bar
        self.state_key_suffix = state_key_suffix
        self._state_key = self._generate_state_key(params=sorted(self.settings.params), suffix=state_key_suffix)
        self.watcher: Optional[ScaleWatcher] = None
        self._loaded: Optional[Dict[str, Any]] = None   # a checkpoint's state, until training starts
        self._earlier: Optional[Dict[str, Any]] = None  # the last fit's state, for another fit

    @property
    def state_key(self) -> str:
        # Lightning formats this into a profiler name on every hook call: build it once.
        return self._state_key

    # ---- set-up -------------------------------------------------------------------------

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        if self.watcher is not None:
            self._earlier = self.watcher.state_dict()  # another fit() of the same trainer may go on
        try:
            self.watcher = ScaleWatcher(pl_module, settings=self.settings, is_global_zero=trainer.is_global_zero,
                                        door_every_n_steps=trainer.log_every_n_steps)
        except ValueError as err:
            raise MisconfigurationException(str(err)) from err

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # trainer.log_dir is a collective under DDP: every rank asks.
        log_dir = trainer.log_dir or trainer.default_root_dir
        first = trainer.loggers[0] if trainer.loggers else None
        if trainer.is_global_zero and first is not None and mlflow_sink.is_lightning_mlflow(first):
            # an MLflow run's history and plot are its own, not its tracking root's (shared by other runs)
            log_dir = mlflow_sink.lightning_log_dir(first, trainer.default_root_dir) or log_dir
        if self.watcher is not None:
            self.watcher.attach(log_dir=log_dir, loggers=[_sink(logger, log_dir) for logger in trainer.loggers])

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # Runs after a checkpoint's state was restored, whatever the strategy.
        if self.watcher is not None:
            self.watcher.begin(trainer.global_step, self._loaded if self._loaded is not None else self._earlier)
        self._loaded = self._earlier = None

    # ---- reading ------------------------------------------------------------------------

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        watcher = self.watcher
        if watcher is None:
            return
        result = watcher.step(trainer.global_step, grad_must_be_finite=not compat.grad_scaler_active(trainer))
        if not result.read:
            return
        if self.progress_bar:
            self._show_in_progress_bar(trainer)
        if result.stop and not trainer.should_stop:
            trainer.should_stop = True

    def _show_in_progress_bar(self, trainer: Any) -> None:
        # Written into the dict the progress bar reads (it keeps values between steps):
        # `self.log(..., prog_bar=True)` would cost ~1 ms a check and, for a float, a
        # host-to-device copy on a GPU. The connector's dict itself: the `trainer.progress_bar_metrics`
        # property first walks every value logged this step (a detach each, an `.item()` each for
        # prog_bar ones: a host sync on a GPU).
        shown = getattr(getattr(trainer, "_logger_connector", None), "_progress_bar_metrics", None)
        if not isinstance(shown, dict):  # another Lightning layout: the public property
            shown = trainer.progress_bar_metrics
        shown.update(self.watcher.progress_values() if self.watcher is not None else {})

    # ---- the end ------------------------------------------------------------------------

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.watcher is not None:
            self.watcher.close(step=trainer.global_step)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self.watcher is not None:
            self.watcher.close(error=exception)

    # ---- checkpoints --------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        if self.watcher is None:
            return dict(self._loaded or {})
        return self.watcher.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        # Applied when training starts: Lightning may restore callbacks before or after on_fit_start.
        self._loaded = dict(state_dict)


def _sink(logger: Any, log_dir: Optional[str] = None) -> ScaleSink:
    """A Lightning logger of either package as the engine's sink."""
    if mlflow_sink.is_lightning_mlflow(logger):
        return mlflow_sink.lightning_sink(logger, log_dir)
    if isinstance(logger, compat.tensorboard_logger_classes()):
        return TensorBoardSink(logger.experiment, log_metrics=lambda m, s: logger.log_metrics(m, step=s))
    if isinstance(logger, compat.wandb_logger_classes()):
        # Through the logger, so its prefix and step key apply as for every other metric.
        return WandbSink(logger.experiment, log_metrics=lambda m, s: logger.log_metrics(m, step=s))
    return with_tracker(logger, MetricsSink(logger), log_dir)  # Comet, DVCLive: also the alerts and the plot
