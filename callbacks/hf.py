"""ScaleMonitorCallback: the HF Transformers front door (a ``transformers.TrainerCallback``).

It translates the HF ``Trainer``'s life cycle into :class:`ScaleWatcher` calls and
owns no monitoring logic: which step is an optimizer step (``on_pre_optimizer_step``),
which number the loss is logged at (HF's ``global_step`` after the step), which
loggers exist (the ``report_to`` integrations), where the files go
(``args.output_dir``), how to stop (``control.should_training_stop``) and how to
checkpoint (the checkpoint's ``trainer_state.json``).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, Optional, Union

INSTALL_HINT = ("scalewatch's ScaleMonitorCallback needs HF Transformers: pip install 'scalewatch[transformers]'. "
                "Without it, use scalewatch.callbacks.ScaleWatcher in your own loop")

try:
    from transformers.trainer_callback import CallbackHandler, TrainerCallback
except ImportError as err:  # pragma: no cover - exercised in a subprocess without transformers
    raise ImportError(INSTALL_HINT) from err

from scalewatch.callbacks.hf_integrations import calling_handler, integration_sinks, move_before_integrations
from scalewatch.callbacks.watch_settings import MAX_LOGGED_ELEMENTS, WatchSettings, document_settings
from scalewatch.callbacks.watcher import CallWrapper, ScaleWatcher, StepResult, WatcherView
from scalewatch.monitor.rules import DEFAULT_MAX_PLOT_PANELS, DEFAULT_PATIENCE, DEFAULT_WARN_FRACTION
from scalewatch.monitor.saturation import Alert

__all__ = ["STATE_KEY", "ScaleMonitorCallback"]

log = logging.getLogger("scalewatch")

#: where the watcher's position lives in ``TrainerState.stateful_callbacks`` (saved in every
#: checkpoint's trainer_state.json); not a class name, so HF never tries to rebuild a callback from it
STATE_KEY = "scalewatch"


@document_settings
class ScaleMonitorCallback(WatcherView, TrainerCallback):
    r"""Record bounded scales every N optimizer steps of an HF ``Trainer``, alert when they saturate, plot them.

    Finds every bounded scale of scalewatch (e.g. ``AttentionBiasGenerator``) in the
    Trainer's model by itself, named by its module path, plus bare parameters named
    in ``params``. It reads in ``on_pre_optimizer_step``: once per optimizer step
    (after gradient accumulation), after the Trainer unscaled the gradients (fp16)
    and clipped them to ``max_grad_norm``, so ``grad`` is the gradient the optimizer
    steps with. A reading is logged at the step HF logs the loss at (its
    ``global_step`` once the step is taken: N, 2N, ...), so with the default
    ``every_n_steps`` (``logging_steps``) the scale sits next to the loss.

    Where things land:

    - every ``report_to`` integration: TensorBoard (HF's own writer, the events file
      under ``output_dir/runs/``) and W&B (HF's run, against ``train/global_step``)
      get ``scalewatch/NAME/{scale,raw,grad,min,max,clamp_fraction}``, the alerts
      (W&B), the Margin layout and the plot image; any other integration gets the
      values through its ``on_log``, as ``Trainer.log`` would give them;
    - ``output_dir/scalewatch_history.jsonl``: one line per scale and reading;
    - ``output_dir/scale_history.png``: at the end of training (after a crash the
      history is complete up to the last reading: ``scalewatch plot OUTPUT_DIR``);
    - checkpoints: the watcher's position goes into ``trainer_state.json``, so
      ``trainer.train(resume_from_checkpoint=...)`` continues one record.

    Only the world process zero writes and alerts; every rank reads the same
    (all-reduced) values, so with ``on_saturation="stop"`` every rank stops at the
    same step.

    Args:
        every_n_steps: read every N optimizer steps; default: the Trainer's
            ``logging_steps`` (a ratio < 1 as HF resolves it).
        {settings}

    Raises:
        ValueError: on a bad argument (named, with its value) here, and when training
            starts for a ``params`` name the model does not have.

    Example::

        from scalewatch.callbacks.hf import ScaleMonitorCallback
        args = TrainingArguments(output_dir="out", logging_steps=50, report_to=["tensorboard"])
        trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[ScaleMonitorCallback()])
        trainer.train()   # out/scalewatch_history.jsonl, out/scale_history.png, out/runs/...
    """

    def __init__(
        self,
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
    ) -> None:
        self.settings = WatchSettings.from_arguments(locals())
        self.watcher: Optional[ScaleWatcher] = None
        self._handler: Optional[CallbackHandler] = None
        self._start_at: Optional[int] = None  # the step the record starts at, once the loggers exist
        self._deepspeed_reader: Optional[CallWrapper] = None  # reading before DeepSpeed's optimizer steps
        self._stop = False  # an alert asked to stop: HF is told at the next on_pre_optimizer_step

    # ---- set-up -------------------------------------------------------------------------

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._find_place()

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._find_place()  # a callback added with trainer.add_callback() after the Trainer was built
        if self._handler is None:
            log.warning("scalewatch: ScaleMonitorCallback found no Trainer callback list calling it; readings go "
                        "to the history file only, not to the report_to integrations")
        if self.watcher is not None:
            self.watcher.close()  # a train() that ended without on_train_end (an exception)
        # first_step=1: HF numbers a step by its global_step once taken, and logs the loss there.
        self.watcher = ScaleWatcher(model, settings=self.settings, is_global_zero=state.is_world_process_zero,
                                    first_step=1, door_every_n_steps=int(state.logging_steps or 0) or None)
        self._start_at = state.global_step + 1
        self._stop = False
        self._unwrap_deepspeed_step()
        self._read_before_deepspeed_step(kwargs.get("optimizer"), state)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # The first step, not on_train_begin: that may run before the integrations' own
        # on_train_begin has made their TensorBoard writer / W&B run (see _find_place).
        if self._start_at is not None and self.watcher is not None:
            # abspath: the checkpointed history path must survive a cd
            self.watcher.attach(log_dir=os.path.abspath(args.output_dir),
                                loggers=integration_sinks(self._handler, args, state, control))
            # a checkpoint this callback wrote into (trainer_state.json) is continued when resuming
            self.watcher.begin(self._start_at, state.stateful_callbacks.get(STATE_KEY))
            self._start_at = None

    # ---- reading ------------------------------------------------------------------------

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None,
                              **kwargs: Any) -> None:
        # HF calls this once per optimizer step, after accumulation, unscaling and clipping.
        if self._deepspeed_reader is None and self.watcher is not None:
            # A GradScaler (fp16) skips its overflow steps: non-finite gradients there are by design.
            self._took(state, self.watcher.step(state.global_step + 1,
                                                grad_must_be_finite=getattr(optimizer, "scaler", None) is None))
        if self._stop:
            control.should_training_stop = True

    def _took(self, state: Any, result: StepResult) -> None:
        if result.read:  # saved with trainer_state.json by every checkpoint from here on
            state.stateful_callbacks[STATE_KEY] = self.watcher.state_dict()
            self._stop = self._stop or result.stop

    def _read_before_deepspeed_step(self, optimizer: Any, state: Any) -> None:
        # Under DeepSpeed accelerate runs engine.step() inside accelerator.backward, before
        # on_pre_optimizer_step: read as the engine's optimizer steps (every rank), not one update late.
        # The gradient is then the accumulated, reduced one, before DeepSpeed's own clipping.
        inner = getattr(optimizer, "optimizer", None)
        if type(optimizer).__name__ == "DeepSpeedOptimizerWrapper" and inner is not None:
            self._deepspeed_reader = self.watcher.read_before_call(
                inner, lambda: state.global_step + 1, lambda result: self._took(state, result),
                grad_must_be_finite=getattr(optimizer, "scaler", None) is None)

    def _unwrap_deepspeed_step(self) -> None:
        if self._deepspeed_reader is not None:
            self._deepspeed_reader.remove()
            self._deepspeed_reader = None

    # ---- the end ------------------------------------------------------------------------

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._unwrap_deepspeed_step()
        if self.watcher is not None:
            self.watcher.close(step=state.global_step)
        self._handler = None  # found again by the next train(); holds the Trainer's model and optimizer

    # ---- the Trainer's other callbacks --------------------------------------------------

    def _find_place(self) -> None:
        # HF hands a callback no reference to the Trainer: find the handler calling it (see hf_integrations).
        handler = calling_handler(self)
        if handler is not None:
            self._handler = handler
            move_before_integrations(handler, self)

    def __repr__(self) -> str:
        return f"ScaleMonitorCallback(every_n_steps={self.settings.every_n_steps}, watcher={self.watcher!r})"
