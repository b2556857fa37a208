"""The HF ``Trainer``'s ``report_to`` integrations, for its front door (:mod:`scalewatch.callbacks.hf`).

HF hands a callback no reference to the Trainer or its other callbacks, and runs the
integrations first: TensorBoardCallback's ``on_train_end`` closes the writer before a
later callback's ``on_train_end`` could send the final plot through it. So the door
finds the :class:`CallbackHandler` that is calling it (:func:`calling_handler`) and
moves itself before the first integration (:func:`move_before_integrations`). Its
values do not ride on HF's ``logs`` dict (whose keys the integrations rewrite to
``train/...``); :func:`integration_sinks` writes through the integrations' own writer
and run with the engine's keys, so no second writer opens in HF's TensorBoard directory.
"""
from __future__ import annotations

import copy
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK, TensorBoardCallback, WandbCallback
from transformers.trainer_callback import CallbackHandler, TrainerCallback

from scalewatch.callbacks.logger_sinks import ScaleSink, TensorBoardSink, WandbSink
from scalewatch.callbacks.tracker_sinks import with_tracker

__all__ = ["HF_WANDB_STEP_METRIC", "INTEGRATIONS", "IntegrationSink", "calling_handler", "integration_sinks",
           "move_before_integrations"]

log = logging.getLogger("scalewatch")

#: the W&B x-axis HF's WandbCallback defines for every metric
HF_WANDB_STEP_METRIC = "train/global_step"
#: every ``report_to`` integration's callback class
INTEGRATIONS: Tuple[type, ...] = tuple(INTEGRATION_TO_CALLBACK.values())


def calling_handler(callback: TrainerCallback) -> Optional[CallbackHandler]:
    """The :class:`CallbackHandler` whose ``call_event`` is calling a hook of ``callback`` now."""
    frame = sys._getframe(1)
    for _ in range(6):  # this function <- the door's helper <- the hook <- call_event (<- a super() call)
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, CallbackHandler) and any(cb is callback for cb in owner.callbacks):
            return owner
        frame = frame.f_back
    return None


def move_before_integrations(handler: CallbackHandler, callback: TrainerCallback) -> None:
    """Move ``callback`` before the first ``report_to`` integration in ``handler``'s list."""
    callbacks = handler.callbacks
    me = next(i for i, cb in enumerate(callbacks) if cb is callback)
    first = next((i for i, cb in enumerate(callbacks[:me]) if isinstance(cb, INTEGRATIONS)), None)
    if first is not None:
        # The handler is iterating this list right now, at index `me`: moving this
        # element to an earlier index leaves the callbacks after it at their indices,
        # so none of them is skipped or called twice.
        callbacks.insert(first, callbacks.pop(me))


def integration_sinks(handler: Optional[CallbackHandler], args: Any, state: Any, control: Any) -> List[ScaleSink]:
    """The ``report_to`` integrations among ``handler``'s callbacks as the engine's sinks (after their set-up)."""
    sinks: List[ScaleSink] = []
    for cb in handler.callbacks if handler is not None else ():
        if isinstance(cb, TensorBoardCallback):
            if cb.tb_writer is not None:
                sinks.append(TensorBoardSink(cb.tb_writer))
        elif isinstance(cb, WandbCallback):
            run = getattr(getattr(cb, "_wandb", None), "run", None)
            if run is not None:
                sinks.append(WandbSink(run, step_metric=HF_WANDB_STEP_METRIC))
        elif type(cb).__name__ == "MLflowCallback":  # its run: metrics, alert tags, history and plot artifacts
            from scalewatch.callbacks.mlflow_sink import active_run_sink

            sink = active_run_sink(os.path.abspath(args.output_dir))
            sinks.append(sink if sink is not None else IntegrationSink(cb, args, state, control))
        elif isinstance(cb, INTEGRATIONS):
            sinks.append(with_tracker(cb, IntegrationSink(cb, args, state, control), args.output_dir))
    return sinks


class IntegrationSink(ScaleSink):
    """Any other ``report_to`` integration (Comet, ...): values through its ``on_log``.

    That is how ``Trainer.log`` hands an integration its metrics, with the state's
    ``global_step`` set to the reading's step.
    """

    def __init__(self, callback: TrainerCallback, args: Any, state: Any, control: Any) -> None:
        self.callback, self.args, self.state, self.control = callback, args, state, control

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        at_step = copy.copy(self.state)
        at_step.global_step = step
        try:
            self.callback.on_log(self.args, at_step, self.control, logs=dict(metrics))
        except Exception as err:  # a logger must never end training
            log.warning("scalewatch could not log to %s: %s", type(self.callback).__name__, err)
