"""ScaleMonitorHandler: the PyTorch Ignite front door (``handler.attach(trainer)``).

It translates an Ignite ``Engine`` into :class:`ScaleWatcher` calls and owns no monitoring
logic. Ignite's ``create_supervised_trainer`` runs forward, backward and ``optimizer.step()``
inside one ``ITERATION_COMPLETED``-bound event, so there is no event between backward and
step: the door reads through the engine's pre-step reader (``Optimizer.register_step_pre_hook``).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Union

INSTALL_HINT = ("scalewatch's ScaleMonitorHandler needs PyTorch Ignite: pip install 'scalewatch[ignite]'. "
                "Without it, use scalewatch.callbacks.ScaleWatcher in your own loop")

try:
    from ignite.engine import Engine, Events
except ImportError as err:  # pragma: no cover - tested with ignite hidden from sys.modules
    raise ImportError(INSTALL_HINT) from err

from scalewatch.callbacks.tracker_sinks import tracker_log_dir, tracker_sink
from scalewatch.callbacks.watch_settings import MAX_LOGGED_ELEMENTS, WatchSettings, document_settings
from scalewatch.callbacks.watcher import ScaleWatcher, StepResult, WatcherView
from scalewatch.monitor.rules import DEFAULT_MAX_PLOT_PANELS, DEFAULT_PATIENCE, DEFAULT_WARN_FRACTION
from scalewatch.monitor.saturation import Alert

__all__ = ["ScaleMonitorHandler"]


@document_settings
class ScaleMonitorHandler(WatcherView):
    r"""Record bounded scales every N iterations of an Ignite trainer, alert when they saturate, plot them.

    Finds every bounded scale of scalewatch (e.g. ``AttentionBiasGenerator``) in ``model`` by
    itself, plus bare parameters named in ``params``, and reads them just before
    ``optimizer.step()`` (a step pre-hook): the gradient as the optimizer sees it, after
    accumulation (``gradient_accumulation_steps``: the optimizer steps on every k-th
    iteration), unscaled under an AMP ``GradScaler`` (its ``step`` unscales first; a check
    whose step the scaler skips for an overflow is read at ``ITERATION_COMPLETED``).

    Steps are Ignite's ``engine.state.iteration`` (counted from 1): readings are taken on
    iterations N, 2N, ... and logged there, the step Ignite's loggers
    (``global_step_from_engine(trainer)``) log the loss at. With gradient accumulation keep
    ``every_n_steps`` a multiple of it. ``state_dict()`` / ``load_state_dict()`` make it a
    checkpointable object for Ignite's ``Checkpoint``: a resumed run continues one record.

    Args:
        model: the ``nn.Module`` the trainer trains.
        optimizer: the optimizer that steps its scales (each watched scale must be in it).
        log_dir: where ``scalewatch_history.jsonl`` and ``scale_history.png`` go; default with
            an Ignite ``MLflowLogger``: a folder of that MLflow run; else none on disk.
        every_n_steps: read every N iterations (default 50).
        {settings}
        loggers: Ignite loggers that also get the keys (``TensorboardLogger``, ``WandBLogger``,
            ``MLflowLogger``), or anything with ``log_metrics(metrics, step)``.
        grad_scaler: the AMP ``GradScaler``; default: ``trainer.state.scaler`` (``scaler=True``).

    Raises:
        ValueError: on a bad argument, or an ``optimizer`` that does not hold a watched scale (named).

    Example::

        trainer = create_supervised_trainer(model, optimizer, loss_fn)
        ScaleMonitorHandler(model, optimizer, log_dir="runs/ignite", every_n_steps=50).attach(trainer)
    """

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        log_dir: Optional[str] = None,
        every_n_steps: Optional[int] = None,
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
        loggers: Sequence[Any] = (),
        grad_scaler: Any = None,
    ) -> None:
        settings = WatchSettings.from_arguments(locals())
        log_dir = log_dir if log_dir is not None else tracker_log_dir(loggers)
        self.watcher = ScaleWatcher(model, log_dir=log_dir, settings=settings, first_step=1, grad_scaler=grad_scaler)
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [s.name for s in self.watcher.scales if id(s.raw) not in held]
        if missing:
            raise ValueError(f"ScaleMonitorHandler: the optimizer does not hold the watched scale(s) "
                             f"{', '.join(missing)}: pass the optimizer that steps them")
        self.optimizer, self.loggers = optimizer, list(loggers)
        self._saved: Optional[Dict[str, Any]] = None
        self._hook: Any = None

    def attach(self, engine: Engine) -> "ScaleMonitorHandler":
        """Watch ``engine`` (the trainer): read before its optimizer steps, close when it ends."""
        self.watcher.attach(loggers=[tracker_sink(logger, self.watcher.log_dir) for logger in self.loggers])
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.COMPLETED, lambda e: self._close(e))
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._failed)
        return self

    def _started(self, engine: Engine) -> None:
        if self.watcher.grad_scaler is None:
            self.watcher.grad_scaler = getattr(engine.state, "scaler", None)
        # a Checkpoint's state is continued when the trainer resumes past iteration 0
        self.watcher.begin(engine.state.iteration + 1, self._saved)

        def on_result(result: StepResult) -> None:
            if result.stop:
                engine.terminate()  # Ignite ends after this iteration

        self._on_result = on_result
        self._hook = self.watcher.read_before_optimizer_step(self.optimizer, lambda: engine.state.iteration,
                                                             on_result, grad_must_be_finite=self._finite())

    def _finite(self) -> Optional[bool]:
        return False if self.watcher.grad_scaler is not None else None

    def _iteration_completed(self, engine: Engine) -> None:
        # A GradScaler skips an overflowing step without calling optimizer.step(): read that check here.
        if self.watcher.grad_scaler is not None and self.watcher.will_read(engine.state.iteration):
            self._on_result(self.watcher.step(engine.state.iteration, grad_must_be_finite=False))

    def _close(self, engine: Engine, error: Optional[BaseException] = None) -> None:
        if self._hook is not None:
            self._hook.remove()
        self.watcher.close(error=error, step=engine.state.iteration)

    def _failed(self, engine: Engine, error: BaseException) -> None:
        self._close(engine, error)
        raise error  # Ignite re-raises only when no EXCEPTION_RAISED handler is attached

    def state_dict(self) -> Dict[str, Any]:
        return self.watcher.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self._saved = dict(state_dict)  # applied when the trainer starts: only then is it known to be a resume
