"""ScaleWatcher: the one engine behind every front door, and the way in for a plain PyTorch loop.

It knows no trainer. A front door (Lightning, HF Transformers, mmengine) only
tells it when an optimizer step is about to happen, where the log directory is,
which loggers exist and whether this process is rank zero; everything users see
(keys, history lines, alert rules and messages, the plot) comes from here.
"""
from __future__ import annotations

import logging
import numbers
import os
from types import TracebackType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

from scalewatch.callbacks.alert_sinks import send_alerts
from scalewatch.callbacks.attention_watch import AttentionStat, AttentionWatch
from scalewatch.callbacks.history_recorder import HistoryRecorder
from scalewatch.callbacks.logger_sinks import MetricsSink, ScaleSink, TensorBoardSink, WandbSink
from scalewatch.callbacks.watch_settings import MAX_LOGGED_ELEMENTS, WatchSettings, document_settings
from scalewatch.dashboards.filenames import PLOT_FILENAME
from scalewatch.monitor.history import HISTORY_FILENAME
from scalewatch.monitor.check_columns import CheckColumns, ScaleLayout
from scalewatch.monitor.gc_pause import gc_paused
from scalewatch.monitor.history.keys import check_metrics, column_metrics, metric_key, reading_metrics  # noqa: F401 (importable here)
from scalewatch.monitor.reading import Reading
from scalewatch.monitor.rules import (DEFAULT_MAX_PLOT_PANELS, DEFAULT_PATIENCE, DEFAULT_WARN_FRACTION, SKIPPED_STEP,
                                      condition_columns)
from scalewatch.monitor.saturation import Alert, SaturationTracker
from scalewatch.monitor.scale_reader import read_columns, read_scales  # noqa: F401 (read_scales: importable here)
from scalewatch.monitor.summary import SummaryColumns, summary_columns
from scalewatch.monitor.schedule import EveryNSteps
from scalewatch.monitor.watched_scale import WatchedScale, find_bounded_scales, watch_parameters
from scalewatch.monitor import sharded

log = logging.getLogger("scalewatch")
if not logging.getLogger().hasHandlers() and not log.handlers:
    # As Lightning does for its own logger: the engine's info lines ("wrote the plot",
    # "recording 2 scales to ...") show without any logging set-up, alerts as warnings.
    log.setLevel(logging.INFO)
    log.addHandler(logging.StreamHandler())

#: every_n_steps when neither the user nor the front door chooses one
DEFAULT_EVERY_N_STEPS = 50
#: watches of at least this many values write their history on a writer thread
#: (encoding 1000 lines is a few milliseconds, 16k tens of them; a few hundred cost well under one)
BACKGROUND_HISTORY_VALUES = 1000


class StepResult(List[Alert]):
    """What :meth:`ScaleWatcher.step` did: the alerts that fired (it is that list), whether it read,
    and whether training should stop now. Falsy when no alert fired, as the plain list it extends."""

    def __init__(self, alerts: Sequence[Alert] = (), read: bool = False, stop: bool = False) -> None:
        super().__init__(alerts)
        #: whether this step was a check step (the scales were read)
        self.read = read
        #: whether an alert fired with ``on_saturation="stop"``: end training after this step
        self.stop = stop



class CallWrapper:
    """``owner.<method>`` wrapped to call ``before()`` first (an instance attribute shadowing the
    class's method); :meth:`remove` restores it."""

    def __init__(self, owner: Any, method: str, before: Callable[[], None]) -> None:
        self.owner, self.method = owner, method
        self._shadowed = vars(owner).get(method)  # an instance attribute of its own, if any
        own = getattr(owner, method)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            before()
            return own(*args, **kwargs)

        setattr(owner, method, wrapped)

    def remove(self) -> None:
        if self.owner is None:
            return
        if self._shadowed is None:
            vars(self.owner).pop(self.method, None)  # the class's method is the owner's again
        else:
            setattr(self.owner, self.method, self._shadowed)
        self.owner = None


class WatcherView:
    """What a front door shows of its engine, under the same names on every door.

    A door holds its :class:`ScaleWatcher` in ``self.watcher`` once training starts
    (``None`` before): these read through it, with empty values until then.
    """

    watcher: Optional["ScaleWatcher"]

    @property
    def scales(self) -> List[WatchedScale]:
        return self.watcher.scales if self.watcher is not None else []

    @property
    def log_dir(self) -> Optional[str]:
        return self.watcher.log_dir if self.watcher is not None else None

    @property
    def history_path(self) -> Optional[str]:
        return self.watcher.history_path if self.watcher is not None else None

    @property
    def history(self) -> Any:
        return self.watcher.history if self.watcher is not None else None

    @property
    def checks(self) -> int:
        return self.watcher.checks if self.watcher is not None else 0

    @property
    def last_step(self) -> int:
        return self.watcher.last_step if self.watcher is not None else -1

    @property
    def tracker(self) -> Optional[SaturationTracker]:
        return self.watcher.tracker if self.watcher is not None else None


def _default_is_global_zero() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@document_settings
class ScaleWatcher:
    r"""Record bounded scales every N optimizer steps, alert when they saturate, plot them.

    The framework-free engine. In a plain loop, call :meth:`step` after
    ``backward()`` (and after ``scaler.unscale_(optimizer)`` under a GradScaler),
    before ``optimizer.step()``, with the 0-based optimizer step; call
    :meth:`close` at the end (or use it as a context manager).

    A reading is taken when ``(step + 1) % every_n_steps == 0`` and logged at
    ``step``. Off check steps :meth:`step` does integer work only: no tensor op, no
    host-device synchronisation. On a check all watched values reach the host in
    one transfer, however many scales are watched.

    Args:
        model: the ``nn.Module`` to watch. Every bounded scale of scalewatch in it
            (``AttentionBiasGenerator``, ``LearnableScale``, any ``BoundedScale``) is
            found by itself and named by its module path.
        log_dir: where ``scalewatch_history.jsonl`` and ``scale_history.png`` go;
            ``None`` keeps nothing on disk (loggers and alerts only).
        every_n_steps: read every N optimizer steps (``None``: 50, ``DEFAULT_EVERY_N_STEPS``).
        tensorboard: a ``torch.utils.tensorboard.SummaryWriter`` to log to.
        wandb_run: a W&B run (``wandb.init(...)``) to log to and alert through.
        loggers: more destinations: :class:`ScaleSink`\ s, or any object with
            ``log_metrics(metrics, step)`` (e.g. Lightning's ``CSVLogger``).
        {settings}
        grad_scaler: the loop's ``torch.amp.GradScaler``: its overflow steps have
            non-finite gradients by design (it skips them), so those raise no alert.
        is_global_zero: whether this process writes and alerts; default: rank 0 of
            ``torch.distributed`` when it is initialised, else ``True``. Every rank
            reads (the same all-reduced values), so every rank stops at the same step.
        first_step: how the caller numbers optimizer steps: ``0`` (default), the
            0-based index of the step about to be taken (readings at N-1, 2N-1, ...,
            Lightning's ``global_step``); ``1``, the step's number counted from 1
            (readings at N, 2N, ..., HF Transformers' ``global_step`` after the step).
            Readings are recorded and logged at the step as given, so a front door
            picks the numbering its trainer logs the loss with.
        settings: the arguments above as one :class:`WatchSettings` (a front door's
            way in); the keyword arguments they cover are then ignored.
        door_every_n_steps: N when the user chose none (``every_n_steps=None``): a
            front door passes its trainer's logging interval here.

    Raises:
        ValueError: on a bad argument (named, with its value; a ``notify`` URL shown
            masked), a model that is not an ``nn.Module``, or a ``params`` name the
            model does not have.
        ImportError: ``notify`` URLs are given but apprise is not installed
            (``pip install 'scalewatch[notify]'``).

    Example::

        watcher = ScaleWatcher(model, log_dir="runs/clip", every_n_steps=50,
                               params={"logit_scale": (0.0, math.log(100))})
        with watcher:
            for step, batch in enumerate(loader):
                loss = loss_fn(model(batch))
                loss.backward()
                watcher.step(step)          # before optimizer.step()
                optimizer.step(); optimizer.zero_grad()
                if watcher.should_stop:
                    break
    """

    def __init__(
        self,
        model: nn.Module,
        log_dir: "Optional[str | os.PathLike[str]]" = None,
        every_n_steps: Optional[int] = None,
        params: Optional[Dict[str, Any]] = None,
        tensorboard: Any = None,
        wandb_run: Any = None,
        loggers: Sequence[Any] = (),
        warn_fraction: float = DEFAULT_WARN_FRACTION,
        patience: int = DEFAULT_PATIENCE,
        alert_callback: Optional[Callable[[Alert], None]] = None,
        on_saturation: str = "warn",
        plot: bool = True,
        plot_every_n_checks: Optional[int] = None,
        max_plot_panels: int = DEFAULT_MAX_PLOT_PANELS,
        notify: Optional[Any] = None,
        max_logged_elements: int = MAX_LOGGED_ELEMENTS,
        attention: Union[bool, Dict[str, Any]] = False,
        grad_scaler: Any = None,
        is_global_zero: Optional[bool] = None,
        settings: Optional[WatchSettings] = None,
        first_step: int = 0,
        door_every_n_steps: Optional[int] = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"`model` must be a torch.nn.Module, got {type(model).__name__}: {model!r:.200}")
        if settings is None:
            settings = WatchSettings.from_arguments(locals())
        self.settings = settings
        self.model = model
        self.log_dir: Optional[str] = None if log_dir is None else os.fspath(log_dir)
        self.scales: List[WatchedScale] = find_bounded_scales(model) + watch_parameters(model, settings.params)
        # several processes, or a sharded scale: every check gathers the full values in one
        # collective (monitor/sharded.py); the ranks agree here once on what they watch
        self._reader: Optional[sharded.DistributedReader] = sharded.reader_for(model, self.scales)
        # The user's N, else the trainer's logging interval (a door's choice), else the default.
        self.schedule = EveryNSteps(settings.every_n_steps or door_every_n_steps or DEFAULT_EVERY_N_STEPS, first_step)
        self.tracker = SaturationTracker(settings.warn_fraction, settings.patience)
        self.is_global_zero = _default_is_global_zero() if is_global_zero is None else bool(is_global_zero)
        self.sinks: List[ScaleSink] = self._sinks(tensorboard, wandb_run, loggers)
        self.grad_scaler = grad_scaler
        self._flagged_modules = list({id(s.module): s.module for s in self.scales if s.module is not None}.values())
        #: the attention statistics (``attention=``): per-head readings of the softmax itself, whose
        #: interception is armed for the forwards of check steps only (callbacks/attention_watch.py)
        self.attention: Optional[AttentionWatch] = (None if settings.attention_options is None else
                                                    AttentionWatch(model, settings.attention_options))
        self._attention_now: List[AttentionStat] = []  # the statistics read at this check
        #: multi-element tensors logged as per-tensor summaries (beyond the element cap)
        self.summarised: List[str] = self._summarised()

        self.last_step: int = -1      # the last step read
        self.checks: int = 0          # readings taken
        self.should_stop = False
        self.last_columns: Optional[CheckColumns] = None  # the last check's readings
        self._layouts: Dict[Tuple[int, ...], ScaleLayout] = {}
        self.history: Optional[HistoryRecorder] = None
        self._last_seen: Optional[int] = None
        self._resume: Optional[Dict[str, Any]] = None
        self._started = False
        self._closed = False
        self._started_at: Optional[int] = None  # the step whose step() started the record
        self._tracking = False
        self._notifier: Any = None
        # per-optimizer reads (step(..., optimizer=)): each optimizer's scales, and which read this check
        self._optimizer_scales: Dict[int, List[WatchedScale]] = {}
        self._owned: set = set()
        self._optimizers_read: set = set()
        if not self.scales and self.attention is None:
            log.warning("scalewatch found no bounded scale (AttentionBiasGenerator, LearnableScale, ...) in %s and "
                        "no `params` were given, so it records nothing; watch a bare parameter with "
                        "params={'logit_scale': (0.0, 4.6052)}", type(model).__name__)

    @staticmethod
    def _sinks(tensorboard: Any, wandb_run: Any, loggers: Sequence[Any]) -> List[ScaleSink]:
        sinks: List[ScaleSink] = []
        if tensorboard is not None:
            sinks.append(tensorboard if isinstance(tensorboard, ScaleSink) else TensorBoardSink(tensorboard))
        if wandb_run is not None:
            sinks.append(wandb_run if isinstance(wandb_run, ScaleSink) else WandbSink(wandb_run))
        if isinstance(loggers, (str, bytes)) or not isinstance(loggers, Sequence):
            raise ValueError(f"`loggers` must be a list of loggers, got {loggers!r}")
        sinks.extend(x if isinstance(x, ScaleSink) else MetricsSink(x) for x in loggers)
        return sinks

    # ---- properties ---------------------------------------------------------------------

    @property
    def every_n_steps(self) -> int:
        return self.schedule.every_n_steps

    @property
    def warn_fraction(self) -> float:
        return self.tracker.warn_fraction

    @property
    def patience(self) -> int:
        return self.tracker.patience

    @property
    def history_path(self) -> Optional[str]:
        return None if self.log_dir is None else os.path.join(self.log_dir, HISTORY_FILENAME)

    @property
    def plot_path(self) -> Optional[str]:
        return None if self.log_dir is None else os.path.join(self.log_dir, PLOT_FILENAME)

    @property
    def names(self) -> List[str]:
        """What loggers get keys for: every scale, or element (``NAME[i]``) of a tensor
        that is not :attr:`summarised`."""
        skip = set(self.summarised)
        return [n for s in self._all_scales() if s.name not in skip for n in s.element_names()]

    def _all_scales(self) -> List[WatchedScale]:
        """The watched scales, then every attention statistic seen so far."""
        if self.attention is None:
            return self.scales
        return self.scales + [h for handles in self.attention.stats.values() for h in handles]

    def _summarised(self) -> List[str]:
        scales = self._all_scales()
        elements = sum(s.numel for s in scales if s.numel > 1)
        return [s.name for s in scales if s.numel > 1] if elements > self.settings.max_logged_elements else []

    # ---- the door kit ---------------------------------------------------------------------

    def attach(self, *, log_dir: "Optional[str | os.PathLike[str]]" = None, loggers: Sequence[Any] = (),
               is_global_zero: Optional[bool] = None) -> None:
        r"""Where a front door's trainer puts things, once it knows (before :meth:`begin`).

        Args:
            log_dir: the run's directory (history and plot); ``None`` keeps the current one.
            loggers: the trainer's loggers, as :class:`ScaleSink`\ s or anything with
                ``log_metrics(metrics, step)``; used on rank zero only.
            is_global_zero: whether this process writes and alerts; ``None`` keeps it.
        """
        if self._started:
            raise RuntimeError("ScaleWatcher.attach() must come before the record starts (begin() or the first step())")
        if log_dir is not None:
            self.log_dir = os.fspath(log_dir)
        if is_global_zero is not None:
            self.is_global_zero = bool(is_global_zero)
        sinks = self._sinks(None, None, loggers)
        if sinks:
            self.sinks = sinks if self.is_global_zero else []  # other ranks neither write nor alert

    def begin(self, step: int, saved: Optional[Mapping[str, Any]] = None) -> None:
        """Start the record at optimizer step ``step``, continuing ``saved`` when training resumes.

        The one rule for "is this a resume": a saved state (a checkpoint's, or an earlier
        fit's) is continued when training does not start at ``first_step``; at
        ``first_step`` the run is fresh whatever was saved (weights loaded to fine-tune).
        """
        if saved and _check_step(step) > self.schedule.first_step:
            self.load_state_dict(saved)
        self.start(step)

    def will_read(self, step: int) -> bool:
        """Whether :meth:`step` will read at optimizer step ``step`` (integer work only)."""
        return (bool(self.scales) or self.attention is not None) and self.schedule(step) and step > self.last_step

    def read_before_optimizer_step(self, optimizer: Any, step_number: Callable[[], int],
                                   on_result: Optional[Callable[[StepResult], None]] = None,
                                   grad_must_be_finite: Optional[bool] = None) -> Any:
        """Read just before ``optimizer.step()`` runs, for trainers with no hook between backward and step.

        Registers ``torch.optim.Optimizer.register_step_pre_hook``: it calls
        :meth:`step` with ``step_number()`` (the trainer's optimizer step count) and
        this optimizer, and hands the result to ``on_result``. With one such reader per
        optimizer each scale is read just before its own optimizer steps. Returns the
        hook's handle (``handle.remove()`` takes it off).
        """
        def before_step(opt: Any, args: Any, kwargs: Any) -> None:
            result = self.step(step_number(), grad_must_be_finite=grad_must_be_finite, optimizer=opt)
            if on_result is not None and result.read:
                on_result(result)

        self._scales_of(optimizer, with_unowned=False)  # known from the start: its scales are not "unowned"
        return optimizer.register_step_pre_hook(before_step)

    def read_before_call(self, owner: Any, step_number: Callable[[], int],
                         on_result: Optional[Callable[[StepResult], None]] = None,
                         grad_must_be_finite: Optional[bool] = None, method: str = "step") -> "CallWrapper":
        """Read every scale just before ``owner.<method>()`` runs, where there is no step pre-hook.

        For an optimizer that is no ``torch.optim.Optimizer`` (DeepSpeed's ZeRO optimizers)
        or a step taken where no trainer hook runs. It calls :meth:`step` with
        ``step_number()`` and hands the result to ``on_result``. Returns a handle whose
        ``remove()`` gives ``owner`` its own method back.
        """
        def before_call() -> None:
            result = self.step(step_number(), grad_must_be_finite=grad_must_be_finite)
            if on_result is not None and result.read:
                on_result(result)

        return CallWrapper(owner, method, before_call)

    # ---- life cycle ---------------------------------------------------------------------

    def start(self, step: Optional[int] = None) -> None:
        """Begin (or continue) the record at optimizer step ``step`` (the next one :meth:`step` gets).

        :meth:`step` calls this by itself the first time; a front door calls it when
        training starts, after a checkpoint's state was loaded. A fresh start (at
        ``first_step``, the default, with no state loaded) into a directory that
        already holds a history keeps that history aside as
        ``scalewatch_history.previous-N.jsonl``; a resumed one cuts the history back
        to the last step read, so steps never repeat.
        """
        self._check_open("start")
        step = _check_step(self.schedule.first_step if step is None else step)
        fresh = self._resume is None and step == self.schedule.first_step
        if fresh:  # a watcher reused for a new run starts its position and alerts anew
            self.last_step, self.checks, self._last_seen = -1, 0, None
            self.tracker.load_state_dict({})
        self._started = True
        # the tensors the model holds now (fully_shard replaces them, FSDP1 shards them in place)
        if sharded.rebind(self.model, self.scales):
            self._optimizer_scales, self._owned = {}, set()
        self._reader = sharded.reader_for(self.model, self.scales, self._reader)
        if self.attention is not None:
            self.attention.warn = self.is_global_zero
        self._track_clamp_fraction(self.schedule(step))  # the forward passes of the first step
        if not self.is_global_zero:
            self._resume = None
            return
        if self.history_path is not None:
            if fresh:
                self._set_aside_earlier_history()
            values = sum(s.numel for s in self.scales)
            self.history = HistoryRecorder(self.history_path, background=values >= BACKGROUND_HISTORY_VALUES)
            if self._resume is not None:
                self.history.resume(self._resume.get("history_path"), self._resume["last_step"])
            elif not fresh:  # e.g. another fit() of the same trainer goes on from its step
                self.history.resume(self.history_path, min(self.last_step, step - 1))
        self._resume = None
        if self.settings.notify_urls and self._notifier is None:
            from scalewatch.callbacks.notifier import Notifier

            self._notifier = Notifier(list(self.settings.notify_urls), run_name=self._run_name())
        for sink in self.sinks:
            sink.start(self.names, self.summarised)
        if self.scales:
            where = self.history_path or "the loggers only (no log_dir)"
            elements = sum(s.numel for s in self.scales)
            counted = f"{len(self.scales)} scale(s)" + (f" ({elements} values)" if elements > len(self.scales) else "")
            log.info("scalewatch: recording %s every %d optimizer steps to %s", counted, self.every_n_steps, where)

    def _run_name(self) -> str:
        if self.log_dir is None:
            return "scalewatch run"
        # e.g. demo_runs/conservative/tensorboard/version_0 -> conservative/tensorboard/version_0
        parts = os.path.normpath(os.path.abspath(self.log_dir)).split(os.sep)
        return "/".join(parts[-3:])

    def _set_aside_earlier_history(self) -> None:
        # A fresh (not resumed) run into a directory that already holds a history keeps the
        # old record under another name instead of mixing two runs' steps in one file.
        path = self.history_path
        if path and os.path.isfile(path) and os.path.getsize(path) > 0:
            stem, ext = os.path.splitext(path)
            n = 1
            while os.path.exists(f"{stem}.previous-{n}{ext}"):
                n += 1
            os.replace(path, f"{stem}.previous-{n}{ext}")
            log.info("scalewatch: kept the earlier history of this directory as %s.previous-%d%s", stem, n, ext)

    def step(self, step: int, *, grad_must_be_finite: Optional[bool] = None, optimizer: Any = None) -> StepResult:
        """Read the scales if optimizer step ``step`` is a check step.

        Call it once per optimizer step, after gradients are complete (accumulated,
        unscaled) and before ``optimizer.step()``. Calling it again with the same step
        (one call per optimizer) reads once.

        With several optimizers whose backward passes interleave (a GAN's generator and
        discriminator), pass ``optimizer`` and call it before each one steps: each call
        reads the scales that optimizer steps (the first also those no optimizer
        given here holds), so every gradient is read as its own optimizer sees it.

        Args:
            step: the 0-based optimizer step about to be taken; must not go backwards.
            grad_must_be_finite: ``False`` when this step's gradients may overflow by
                design (a gradient scaler skips such steps); default: ``True`` unless
                a ``grad_scaler`` was given and is enabled.
            optimizer: the optimizer about to step, to read only its scales (see above).

        Returns:
            The alerts that fired at this step (empty off check steps), as a
            :class:`StepResult` list that also says whether it read and whether to stop.

        Raises:
            ValueError: for a ``step`` that is not an integer or goes backwards.
            RuntimeError: after :meth:`close`.
        """
        if not self._started:
            self.start(step)
            self._started_at = step  # this step's forwards ran before the watcher started
        elif self._closed:
            self._check_open("step")
        last_seen = self._last_seen
        if step.__class__ is not int or step < 0:
            step = _check_step(step)
        if last_seen is not None and step < last_seen:
            raise ValueError(f"`step` must not go backwards: got step={step} after step={last_seen} "
                             "(pass the optimizer step count, e.g. the loop's step or trainer.global_step)")
        self._last_seen = step
        if not self.scales and self.attention is None:
            return StepResult()
        # Plain integer checks: off check steps nothing touches a tensor. The clamp
        # fraction is only computed in the forward passes of the next check step.
        schedule = self.schedule
        if schedule(step + 1) != self._tracking:
            self._track_clamp_fraction(not self._tracking)
        if not schedule(step):
            return StepResult()
        if optimizer is None:
            if step <= self.last_step:
                return StepResult()
            return self._check(step, grad_must_be_finite, self.scales)
        if step > self.last_step:
            self._optimizers_read = set()
        elif step < self.last_step or id(optimizer) in self._optimizers_read:
            return StepResult()
        scales = self._scales_of(optimizer, with_unowned=not self._optimizers_read)
        self._optimizers_read.add(id(optimizer))
        return self._check(step, grad_must_be_finite, scales)

    def _scales_of(self, optimizer: Any, with_unowned: bool) -> List[WatchedScale]:
        """The scales ``optimizer`` steps (and, ``with_unowned``, those none of the known optimizers holds)."""
        key = id(optimizer)
        if key not in self._optimizer_scales:
            held = {id(p) for group in optimizer.param_groups for p in group["params"]}
            self._optimizer_scales[key] = [s for s in self.scales if id(s.raw) in held]
            self._owned.update(id(s) for s in self._optimizer_scales[key])
        unowned = [s for s in self.scales if id(s) not in self._owned] if with_unowned else []
        return self._optimizer_scales[key] + unowned

    def _check(self, step: int, grad_must_be_finite: Optional[bool], scales: List[WatchedScale]) -> StepResult:
        new_check = step > self.last_step  # not a later part of it (another optimizer's scales)
        if new_check:
            self.checks += 1
        self.last_step = step
        if grad_must_be_finite is None:
            grad_must_be_finite = not (self.grad_scaler is not None and getattr(self.grad_scaler, "is_enabled",
                                                                                lambda: True)())
        # 16k per-head readings make enough objects to set off full garbage collections
        # that walk the whole process; none of them is garbage until the check is over.
        # The check is columns from the transfer to the record: no object per value.
        # Under torch.distributed with a reader, the attention sums ride in the scales' collective
        # (one all_reduce, one transfer a check); otherwise they are reduced first, then read with them.
        riding = new_check and self.attention is not None and self._reader is not None and bool(scales)
        self._attention_now = self._take_attention(step) if new_check and self.attention is not None \
            and not riding else []
        read = scales
        if self._attention_now:
            assert self.attention is not None and self.attention.values is not None
            # read in the same one transfer, as one tensor (the handles give the layout's rows); else
            # the same list: its layout is found by identity, not by the ids of a thousand scales
            read = scales + [self.attention.values]
            scales = scales + self._attention_now
        if not scales:  # attention only, and no attention call seen yet: nothing to read
            self.last_columns = None
            return StepResult(read=True, stop=self.should_stop)
        with gc_paused():
            if riding:
                columns = self._read_with_attention(step, scales)
            else:
                columns = (read_columns(read, step, self._layout(scales)) if self._reader is None else
                           self._reader.read_columns(read, step, self._layout(scales)))
            masks = condition_columns(columns.scale, columns.raw, columns.grad, columns.has_grad, columns.layout.lo,
                                      columns.layout.hi, columns.layout.hard, self.warn_fraction, grad_must_be_finite)
            alerts = self.tracker.update_columns(columns, masks)
            summaries = summary_columns(columns, masks, self.summarised) if self.summarised else None
            # A gradient scaler skips a step whose gradients overflowed: the record says so, so
            # that a view re-judges the non-finite gradient as the engine did (no alert).
            skipped = not grad_must_be_finite and not columns.grads_finite()
            if self.is_global_zero:
                self._record(step, columns, alerts, summaries, skipped)
        self.last_columns = columns
        if self.is_global_zero:
            if alerts:
                send_alerts(alerts, step, self.sinks, self.settings.alert_callback, self._notifier)
            every = self.settings.plot_every_n_checks
            if every and new_check and self.checks % every == 0:
                self.publish_plot(step, write_png=False)
        if alerts and self.settings.on_saturation == "stop":
            # Every rank computed the same readings, so every rank stops at the same step.
            self.should_stop = True
            log.info("scalewatch: stopping training at step %d (on_saturation='stop')", step)
        return StepResult(alerts, read=True, stop=self.should_stop)

    def _read_with_attention(self, step: int, scales: List[WatchedScale]) -> CheckColumns:
        """The scales' columns and the attention statistics' sums over the ranks in one collective,
        then the statistics' rows (host values by then) after the scales' rows."""
        assert self.attention is not None and self._reader is not None
        mine = self.attention.rank_sums()
        columns, summed = self._reader.read_columns_with(scales, step, self._layout(scales), mine.payload)
        self._attention_now = self._take_attention(step, mine.reduced(summed))
        if not self._attention_now:
            return columns
        handles = self._attention_now
        assert self.attention.values is not None
        stats = read_columns([self.attention.values], step, self._layout(handles))
        return CheckColumns.joined(self._layout(scales + handles), [columns, stats])

    def _layout(self, scales: List[WatchedScale]) -> ScaleLayout:
        key = () if scales is self.scales else tuple(map(id, scales))
        layout = self._layouts.get(key)
        if layout is None:
            layout = self._layouts[key] = ScaleLayout(scales)
        return layout

    @property
    def scale_rows(self) -> int:
        """How many rows of :attr:`last_columns` are the watched scales' (the attention statistics follow)."""
        if self.last_columns is None:
            return 0
        return len(self.last_columns) - sum(h.numel for h in self._attention_now)

    @property
    def last_readings(self) -> List[Reading]:
        """The last check's readings (built on demand from its columns)."""
        return [] if self.last_columns is None else self.last_columns.readings()

    def progress_values(self, most: int = 2) -> Dict[str, float]:
        """The last check's first ``most`` scales for a progress bar: ``scale``, or ``scale[NAME]`` for several."""
        rows = self.scale_rows  # not the attention statistics
        if self.last_columns is None or not rows:
            return {}
        readings = self.last_columns.readings(range(min(most, rows)))  # the ones shown, not every reading
        return {("scale" if rows == 1 else f"scale[{r.name.rsplit('.', 1)[-1]}]"): round(r.scale, 4)
                for r in readings}

    def _record(self, step: int, columns: CheckColumns, alerts: List[Alert],
                summaries: Optional[SummaryColumns] = None, skipped_step: bool = False) -> None:
        if self.sinks:
            metrics = check_metrics(columns, summaries)
            for sink in self.sinks:
                sink.log_check(metrics, step)
        if self.history is not None:
            fired: Dict[str, List[str]] = {}
            for a in alerts:
                fired.setdefault(a.name, []).append(a.kind)
            extra: Dict[str, Any] = {"warn_fraction": self.warn_fraction, "patience": self.patience}
            if skipped_step:
                extra[SKIPPED_STEP] = True
            # (an attention statistic's rows add "attention": STATISTIC themselves: record_fields)
            self.history.append_readings(columns, extra, fired)

    def _take_attention(self, step: int, reduced: Optional[Dict[Any, torch.Tensor]] = None) -> List[AttentionStat]:
        """This check's attention statistics (``reduced``: their sums over the ranks, reduced with the
        scales); when new ones appear, the loggers learn their names."""
        assert self.attention is not None
        # a first step() at a check step: its forwards ran before anything was armed
        handles, added = self.attention.collect(forwards_watched=self._started_at != step, reduced=reduced)
        if added:
            self.summarised = self._summarised()
            if self.is_global_zero:
                for sink in self.sinks:
                    sink.start(self.names, self.summarised)
        return handles

    def _track_clamp_fraction(self, on: bool) -> None:
        self._tracking = on
        if self.attention is not None:  # the attention calls of the same forwards
            self.attention.arm(on)
        # Straight into each module's __dict__ (where BoundedScale keeps the flag): nn.Module's
        # __setattr__ checks its parameter, buffer and module tables first, ~2 us a module, and
        # this runs on the step before every check for every watched module.
        for module in self._flagged_modules:
            module.__dict__["track_clamp_fraction"] = on

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise RuntimeError(f"ScaleWatcher.{what}() was called after close(); its record is complete "
                               f"({self.checks} check(s) in {self.history_path or 'the loggers'}). Create a new "
                               "ScaleWatcher (with load_state_dict to continue the record) to watch more steps")

    # ---- the end ------------------------------------------------------------------------

    def publish_plot(self, step: Optional[int] = None, write_png: bool = True, to_loggers: bool = True) -> None:
        """Draw the record: ``scale_history.png`` in ``log_dir`` and an image to the loggers."""
        if not self.is_global_zero or self.history is None:
            return
        from scalewatch.dashboards import plot as plotting  # matplotlib only when drawing

        self.history.wait()  # every handed-over check is in the file before it is read
        on_disk = self.history.on_disk
        if on_disk and not os.path.exists(self.history.path):
            return
        source = self.history.path if on_disk else self.history.records()
        # Loaded once: the PNG, TensorBoard and the W&B charts all draw these series.
        series, left_out = plotting.load_series(source, self.settings.max_plot_panels)
        fig = plotting.plot_series(series, left_out)
        step = max(self.last_step, 0) if step is None else step
        try:
            if write_png and on_disk and self.plot_path is not None:
                fig.savefig(self.plot_path, dpi=110)
                log.info("scalewatch: wrote %s", self.plot_path)
            if to_loggers:
                for sink in self.sinks:
                    try:
                        sink.log_figure(fig, series, step, final=write_png)
                    except Exception as err:  # a picture must never end training
                        log.warning("scalewatch could not send the plot to %s: %s", type(sink).__name__, err)
        finally:
            plotting.close(fig)

    def close(self, error: Optional[BaseException] = None, step: Optional[int] = None) -> None:
        """Finish the record: write the plot, flush the loggers, wait (bounded) for notifications.

        Args:
            step: the step the final plot is logged at; default: the last step given
                to :meth:`step` (a trainer passes its step count at the end).
            error: the exception training ended with, if any: the PNG is still
                written, nothing is sent to the loggers, and a failure to draw is
                logged instead of masking ``error``.

        Safe to call twice.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self.settings.plot and self._started:
                if error is None:
                    self.publish_plot(self._last_seen if step is None else step, write_png=True)
                else:
                    try:
                        self.publish_plot(write_png=True, to_loggers=False)
                    except Exception as err:  # never mask the training error
                        log.warning("scalewatch could not draw the plot after the exception: %s", err)
            if self._started and self.checks:
                from scalewatch.callbacks.advice_log import log_run_advice

                log_run_advice(self)  # what to change, once, on rank zero (monitor/advice.py)
            for sink in self.sinks:
                try:
                    sink.flush()
                except Exception as err:
                    log.warning("scalewatch could not flush %s: %s", type(sink).__name__, err)
        finally:
            self._track_clamp_fraction(False)  # the modules' own default outside of watched training
            if self.attention is not None:  # its kept calls and workspace go
                self.attention.close()
            if self.history is not None:
                self.history.close()
            if self._notifier is not None:
                self._notifier.close()

    def __enter__(self) -> "ScaleWatcher":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close(error=exc)

    # ---- checkpoints --------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """The watcher's position (not its history, which is on disk): last step read,
        checks, alert state and the history's path."""
        return {"last_step": self.last_step, "checks": self.checks, "history_path": self.history_path,
                "tracker": self.tracker.state_dict()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue the record of ``state_dict``: readings after its last step are cut from
        the history (and, in a new ``log_dir``, the earlier readings are copied in).

        Raises:
            ValueError: for something that is not a ScaleWatcher state dict.
        """
        if not isinstance(state_dict, Mapping) or "last_step" not in state_dict:
            raise ValueError(f"`state_dict` must be what ScaleWatcher.state_dict() returned, got {state_dict!r:.200}")
        self._check_open("load_state_dict")
        self.last_step = int(state_dict.get("last_step", -1))
        self.checks = int(state_dict.get("checks", 0))
        self.tracker.load_state_dict(state_dict.get("tracker", {}))
        self._last_seen = self.last_step  # a resumed run goes on after the last step read
        self._resume = {"last_step": self.last_step, "history_path": state_dict.get("history_path")}
        if self._started and self.is_global_zero and self.history is not None:
            self.history.resume(self._resume.get("history_path"), self.last_step)
            self._resume = None

    def __repr__(self) -> str:
        return (f"ScaleWatcher({len(self.scales)} scale(s), every_n_steps={self.every_n_steps}, "
                f"log_dir={self.log_dir!r}, checks={self.checks})")


def _check_step(step: object) -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"`step` must be an integer >= 0 (the optimizer step), got {step!r}")
    return int(step)
