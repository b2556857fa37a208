"""ScaleMonitor: records, warns about and plots bounded scales while a model trains."""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn

from scalewatch.callbacks.alert_sinks import send_alerts
from scalewatch.callbacks.history_sink import HistorySink
from scalewatch.callbacks.tensorboard_scalars import log_scalars
from scalewatch.dashboards import plot as plotting
from scalewatch.dashboards import tensorboard_layout, wandb_charts
from scalewatch.dashboards.filenames import PLOT_FILENAME
from scalewatch.monitor.history import HISTORY_FILENAME
from scalewatch.monitor.reading import Reading
from scalewatch.monitor.saturation import Alert, SaturationTracker, check_patience, check_warn_fraction
from scalewatch.monitor.scale_reader import read_scales
from scalewatch.monitor.schedule import EveryNSteps, check_every_n_steps
from scalewatch.monitor.watched_scale import (WatchedScale, check_param_bounds, find_bounded_scales,
                                              watch_parameters)

log = logging.getLogger("scalewatch")

ON_SATURATION = ("warn", "stop")
#: used when the trainer logs nothing (log_every_n_steps=0)
DEFAULT_EVERY_N_STEPS = 50
#: TensorBoard is flushed after a check at most this often, so its live view lags by no more
TENSORBOARD_FLUSH_SECS = 2.0


def metric_key(name: str, field: str) -> str:
    """The logger key of one field of one scale: ``scalewatch/NAME/FIELD``."""
    return f"scalewatch/{name}/{field}"


def _reading_metrics(r: Reading) -> Dict[str, float]:
    metrics = {metric_key(r.name, "scale"): r.scale, metric_key(r.name, "raw"): r.raw,
               metric_key(r.name, "min"): r.min, metric_key(r.name, "max"): r.max}
    if r.grad is not None:
        metrics[metric_key(r.name, "grad")] = r.grad
    if r.clamp_fraction is not None:
        metrics[metric_key(r.name, "clamp_fraction")] = r.clamp_fraction
    return metrics


class ScaleMonitor(Callback):
    r"""Record bounded scales every N optimizer steps, alert when they saturate, plot them.

    Finds every bounded scale of scalewatch (e.g. ``AttentionBiasGenerator``) in the
    LightningModule by itself, named by its module path, plus bare scalar
    parameters named in ``params``. On every ``every_n_steps``-th optimizer step it
    reads, per scale, the effective ``scale``, the ``raw`` parameter, its ``grad``
    as the optimizer sees it (after accumulation, unscaled under AMP, before
    clipping), the bounds, and for the bias generator the fraction of bias
    entries cut by the final clamp. Readings go to every attached logger as
    ``scalewatch/NAME/{scale,raw,grad,min,max,clamp_fraction}`` at the step
    ``self.log`` uses, and to ``scalewatch_history.jsonl`` in the run's log
    directory. Off check steps it does no tensor work and forces no host-device
    synchronisation; on a check step all values reach the host in one transfer.

    Args:
        every_n_steps: read every N optimizer steps; default: the trainer's
            ``log_every_n_steps``, so readings sit on the loss curve's steps.
        warn_fraction: ``near_upper`` fires when ``scale > warn_fraction * max``,
            ``near_lower`` when ``scale < min + (1 - warn_fraction) * (max - min)``.
        patience: consecutive checks a scale must be pinned (raw at/beyond a bound
            with a gradient that cannot bring it back) before ``pinned`` fires.
        params: bare scalar parameters to watch, ``{"logit_scale": (0.0, 4.6052)}``
            (parameter name as in ``named_parameters()`` -> (min, max)).
        on_saturation: ``"warn"`` only alerts; ``"stop"`` also ends training
            cleanly at the step an alert fires.
        alert_callback: called with each :class:`~scalewatch.monitor.Alert` (rank zero).
        progress_bar: show the current scale in the progress bar.
        plot: write ``scale_history.png`` in the log directory at the end of fit and
            on an exception, and send it to TensorBoard and W&B.
        plot_every_n_checks: also send the plot to the loggers every K checks.
        max_plot_panels: how many scales the plot draws (those closest to a bound
            or alerted); the rest are counted in its title.
        state_key_suffix: tells two monitors on one trainer apart in checkpoints.

    Raises:
        MisconfigurationException: on a bad argument (named, with its value), and at
            fit start for a ``params`` name the model does not have.

    Example::

        from scalewatch.callbacks import ScaleMonitor
        monitor = ScaleMonitor(every_n_steps=50, warn_fraction=0.9)
        trainer = pl.Trainer(callbacks=[monitor], logger=[tb_logger, wandb_logger, csv_logger])
    """

    def __init__(
        self,
        every_n_steps: Optional[int] = None,
        warn_fraction: float = 0.9,
        patience: int = 3,
        params: Optional[Dict[str, Tuple[float, float]]] = None,
        on_saturation: str = "warn",
        alert_callback: Optional[Callable[[Alert], None]] = None,
        progress_bar: bool = True,
        plot: bool = True,
        plot_every_n_checks: Optional[int] = None,
        max_plot_panels: int = 6,
        state_key_suffix: str = "",
    ) -> None:
        try:
            self.every_n_steps = None if every_n_steps is None else check_every_n_steps(every_n_steps)
            self.tracker = SaturationTracker(check_warn_fraction(warn_fraction), check_patience(patience))
            self.params = check_param_bounds(params if params is not None else {})
            if on_saturation not in ON_SATURATION:
                raise ValueError(f"`on_saturation` must be one of {ON_SATURATION}, got {on_saturation!r}")
            if alert_callback is not None and not callable(alert_callback):
                raise ValueError(f"`alert_callback` must be callable, got {alert_callback!r}")
            if plot_every_n_checks is not None:
                if isinstance(plot_every_n_checks, bool) or not isinstance(plot_every_n_checks, int) or plot_every_n_checks < 1:
                    raise ValueError(f"`plot_every_n_checks` must be an integer >= 1, got {plot_every_n_checks!r}")
            if isinstance(max_plot_panels, bool) or not isinstance(max_plot_panels, int) or max_plot_panels < 1:
                raise ValueError(f"`max_plot_panels` must be an integer >= 1, got {max_plot_panels!r}")
        except ValueError as err:
            raise MisconfigurationException(str(err)) from err
        self.warn_fraction = self.tracker.warn_fraction
        self.patience = self.tracker.patience
        self.on_saturation = on_saturation
        self.alert_callback = alert_callback
        self.progress_bar = progress_bar
        self.plot = plot
        self.plot_every_n_checks = plot_every_n_checks
        self.max_plot_panels = max_plot_panels
        self.state_key_suffix = state_key_suffix
        self._state_key = self._generate_state_key(params=sorted(self.params), suffix=state_key_suffix)

        self.scales: List[WatchedScale] = []
        self.last_step: int = -1
        self.checks: int = 0
        self.history: Optional[HistorySink] = None
        self.log_dir: Optional[str] = None
        self._schedule: Optional[EveryNSteps] = None
        self._resume: Optional[Dict[str, Any]] = None
        self._tracking = False
        self._last_flush = -math.inf

    @property
    def state_key(self) -> str:
        # Lightning formats this into a profiler name on every hook call: build it once.
        return self._state_key

    @property
    def history_path(self) -> Optional[str]:
        return None if self.log_dir is None else os.path.join(self.log_dir, HISTORY_FILENAME)

    # ---- set-up -------------------------------------------------------------------------

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        try:
            self.scales = find_bounded_scales(pl_module) + watch_parameters(pl_module, self.params)
        except ValueError as err:
            raise MisconfigurationException(str(err)) from err
        if not self.scales:
            rank_zero_warn("ScaleMonitor found no bounded scale (AttentionBiasGenerator, LearnableScale, ...) in "
                           f"{type(pl_module).__name__} and no `params` were given, so it records nothing; watch a "
                           "bare parameter with ScaleMonitor(params={'logit_scale': (0.0, 4.6052)})")
        n = self.every_n_steps or trainer.log_every_n_steps or DEFAULT_EVERY_N_STEPS
        self._schedule = EveryNSteps(n)
        self._track_clamp_fraction(False)

    def teardown(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage == "fit":
            self._track_clamp_fraction(False)  # the modules' own default outside of a monitored fit

    def _track_clamp_fraction(self, on: bool) -> None:
        self._tracking = on
        for s in self.scales:
            if s.module is not None:
                s.module.track_clamp_fraction = on

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        # trainer.log_dir is a collective under DDP: every rank asks.
        self.log_dir = trainer.log_dir or trainer.default_root_dir
        if not trainer.is_global_zero:
            return
        names = [s.name for s in self.scales]
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                tensorboard_layout.write_margin_layout(logger.experiment, names)
            elif isinstance(logger, WandbLogger):
                wandb_charts.define_scale_metrics(logger.experiment, names)

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        # Runs after a checkpoint's state was restored, whatever the strategy.
        self._track_clamp_fraction(self._schedule(trainer.global_step))  # for the first step's forward
        fresh = self._resume is None and trainer.global_step == 0
        if fresh:  # a monitor reused for a new run starts its position and alerts anew
            self.last_step, self.checks = -1, 0
            self.tracker.load_state_dict({})
        if not trainer.is_global_zero or self.history_path is None:
            self._resume = None
            return
        if fresh:
            self._set_aside_earlier_history()
        self.history = HistorySink(self.history_path)
        if self._resume is not None:
            self.history.resume(self._resume.get("history_path"), self._resume["last_step"])
            self._resume = None
        elif not fresh:  # another fit() of the same trainer goes on from its global_step
            self.history.resume(self.history_path, self.last_step)
        if self.scales:
            rank_zero_info(f"scalewatch: recording {len(self.scales)} scale(s) every {self._schedule.every_n_steps} "
                           f"optimizer steps to {self.history_path}")

    def _set_aside_earlier_history(self) -> None:
        # A fresh (not resumed) fit into a directory that already holds a history, e.g.
        # a reused default_root_dir: keep the old record under another name instead of
        # mixing two runs' steps in one file.
        path = self.history_path
        if path and os.path.isfile(path) and os.path.getsize(path) > 0:
            stem, ext = os.path.splitext(path)
            n = 1
            while os.path.exists(f"{stem}.previous-{n}{ext}"):
                n += 1
            os.replace(path, f"{stem}.previous-{n}{ext}")
            rank_zero_info(f"scalewatch: kept the earlier history of this directory as {stem}.previous-{n}{ext}")

    # ---- reading ------------------------------------------------------------------------

    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                                 optimizer: torch.optim.Optimizer) -> None:
        step = trainer.global_step
        if self._schedule is None or not self.scales:
            return
        # Plain integer checks: off check steps nothing touches a tensor. The clamp
        # fraction is only computed in the forward passes of the next check step.
        if self._schedule(step + 1) != self._tracking:
            self._track_clamp_fraction(not self._tracking)
        if not self._schedule(step) or step == self.last_step:
            return
        self.last_step = step
        self.checks += 1
        readings = read_scales(self.scales, step)
        # A gradient scaler's overflow steps have non-finite gradients by design (it skips them).
        scaler_active = getattr(trainer.precision_plugin, "scaler", None) is not None
        alerts = [a for r in readings for a in self.tracker.update(r, grad_must_be_finite=not scaler_active)]

        if self.progress_bar:
            self._show_in_progress_bar(trainer, readings)
        if trainer.is_global_zero:
            self._record(trainer, readings, alerts)
            if alerts:
                send_alerts(alerts, trainer, self.alert_callback)
            if self.plot_every_n_checks and self.checks % self.plot_every_n_checks == 0:
                self._publish_plot(trainer, write_png=False)
        if alerts and self.on_saturation == "stop":
            # Every rank computed the same readings, so every rank stops at the same step.
            trainer.should_stop = True
            rank_zero_info(f"scalewatch: stopping training at step {step} (on_saturation='stop')")

    def _show_in_progress_bar(self, trainer: "pl.Trainer", readings: List[Reading]) -> None:
        # Written into the dict the progress bar reads (it keeps values between steps):
        # `self.log(..., prog_bar=True)` would cost ~1 ms a check and, for a float, a
        # host-to-device copy on a GPU.
        shown = trainer.progress_bar_metrics
        for r in readings[:2]:
            key = "scale" if len(readings) == 1 else f"scale[{r.name.rsplit('.', 1)[-1]}]"
            shown[key] = round(r.scale, 4)

    def _record(self, trainer: "pl.Trainer", readings: List[Reading], alerts: List[Alert]) -> None:
        metrics: Dict[str, float] = {}
        for r in readings:
            metrics.update(_reading_metrics(r))
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                logger.log_metrics(metrics, step=trainer.global_step)
                continue
            log_scalars(logger, metrics, trainer.global_step)
            if time.monotonic() - self._last_flush >= TENSORBOARD_FLUSH_SECS:
                # SummaryWriter flushes every 120 s by default; flush after checks (at most
                # every few seconds: it waits on the writer thread) so the live view follows.
                logger.experiment.flush()
                self._last_flush = time.monotonic()
        if self.history is not None:
            fired: Dict[str, List[str]] = {}
            for a in alerts:
                fired.setdefault(a.name, []).append(a.kind)
            self.history.append([dict(r.to_record(), warn_fraction=self.warn_fraction, patience=self.patience,
                                      alerts=fired.get(r.name, [])) for r in readings])

    # ---- the end: plots -----------------------------------------------------------------

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.is_global_zero and self.plot:
            self._publish_plot(trainer, write_png=True)
        self._close()

    def on_exception(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", exception: BaseException) -> None:
        if trainer.is_global_zero and self.plot:
            try:
                self._publish_plot(trainer, write_png=True, to_loggers=False)
            except Exception as err:  # never mask the training error
                log.warning("scalewatch could not draw the plot after the exception: %s", err)
        self._close()

    def _publish_plot(self, trainer: "pl.Trainer", write_png: bool, to_loggers: bool = True) -> None:
        if self.history is None:
            return
        source = self.history.path if self.history.on_disk else self.history.records()
        if self.history.on_disk and not os.path.exists(self.history.path):
            return
        # Loaded once: the PNG, TensorBoard and the W&B charts all draw these series.
        series, left_out = plotting.load_series(source, self.max_plot_panels)
        fig = plotting.plot_series(series, left_out)
        try:
            if write_png and self.history.on_disk:
                png = os.path.join(self.log_dir, PLOT_FILENAME)
                fig.savefig(png, dpi=110)
                rank_zero_info(f"scalewatch: wrote {png}")
            if to_loggers:
                for logger in trainer.loggers:
                    if isinstance(logger, TensorBoardLogger):
                        logger.experiment.add_figure("scalewatch/plot", fig, global_step=trainer.global_step,
                                                     close=False)
                    elif isinstance(logger, WandbLogger):
                        wandb_charts.log_plot(logger, fig, series, trainer.global_step, final=write_png)
        finally:
            plotting.close(fig)

    def _close(self) -> None:
        if self.history is not None:
            self.history.close()

    # ---- checkpoints --------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        return {"last_step": self.last_step, "checks": self.checks, "history_path": self.history_path,
                "tracker": self.tracker.state_dict()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.last_step = int(state_dict.get("last_step", -1))
        self.checks = int(state_dict.get("checks", 0))
        self.tracker.load_state_dict(state_dict.get("tracker", {}))
        self._resume = {"last_step": self.last_step, "history_path": state_dict.get("history_path")}
