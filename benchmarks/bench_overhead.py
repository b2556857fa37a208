"""Overhead of watching a scale, per optimizer step, against training with no monitoring at all.

Variants (same model, data, seed, Trainer and loggers - TensorBoard + CSV, as a
Lightning user has them by default; only the monitoring differs):

    baseline       no monitoring
    monitor_n50    ScaleMonitor(every_n_steps=50)
    monitor_n1     ScaleMonitor(every_n_steps=1)
    random_print   the original: generator forward does ``if torch.rand(1).item() < 0.001: print(...)``
    self_log       ``self.log`` of every scale (training_step) and its gradient
                   (on_before_optimizer_step), every step
    wandb_logger   a WandbLogger (offline) added, nothing watched (reference for the next)
    wandb_watch    a WandbLogger (offline) added, with ``logger.watch(model, log="all", log_freq=50)``

Method. Time is taken per step by a :class:`StepTimer` (batch start to next batch
start: data, forward, backward, every hook, the optimizer, the logger writes) and
summed per block of 50 steps. 50 is the period every periodic cost here shares
(a ScaleMonitor N=50 check, Lightning's ``log_every_n_steps`` write, a wandb
histogram), so each block pays each of them exactly once.

Comparison 1 (monitor_n50, monitor_n1, random_print, self_log) runs in ONE fit:
blocks alternate ``B V1 B V2 B ... Vn B``, the variants in a fresh random order in
each of ``--rounds`` rounds, after one untimed warm-up block. A variant is switched
on for its block and off after it: a ScaleMonitor is added to / removed from
``trainer.callbacks`` (so Lightning's dispatch of its hooks is paid in its blocks
only; it was present at set-up, so its engine, history file and loggers are real)
and the generators' clamp-fraction statistic is set for that step's forward as
its engine's schedule has it (off in every other block); the generators' random
print and the model's ``self.log`` calls are flags. The switch
happens in the module's ``on_train_batch_start`` and its own time is subtracted.
Alternating every 0.5 s keeps each variant block next to two baseline blocks that
saw the same load from other processes.

Comparison 2 (wandb_logger, wandb_watch) cannot switch inside a fit (``wandb.watch``
can be called once per model), so it alternates whole short fits ``B L B W B ...``
for ``--fit-rounds`` rounds; a fit's step time is the median of its block means.

A variant's ratio is its block (or fit) time over the mean of the two baseline
blocks (fits) on either side; the table gives min / median / max over rounds.

Two clocks. CPU time (this process, all threads, plus its child processes such as
wandb's service) is what monitoring costs on a CPU, and it moves much less than
wall time when other jobs share the machine; wall time is what a user waits. On a
CPU the CPU ratio is the headline and the one the target is checked against; on a
GPU, where a host-device synchronisation costs waiting, the wall ratio is.

``in-hook`` is a direct account: the time spent inside ScaleMonitor's hook, per step
of its blocks, over the baseline step time (Lightning's dispatch of the hooks is
not in it, the A/B ratio has it).
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from benchmarks.common import (METRICS, PERIOD, BenchEncoder, RandomPrintBiasGenerator, StepTimer, cycled_data,
                               neighbour_ratios, no_monitoring_work, quiet, ratio_row, ratio_table, report,
                               trainer_kwargs, with_in_hook)
from scalewatch.callbacks import ScaleMonitor

IN_FIT = ("monitor_n50", "monitor_n1", "random_print", "self_log")
BY_FIT = ("wandb_logger", "wandb_watch")
VARIANTS = IN_FIT + BY_FIT
LABELS = {
    "baseline": "no monitoring (baseline)",
    "monitor_n50": "ScaleMonitor(every_n_steps=50)",
    "monitor_n1": "ScaleMonitor(every_n_steps=1)",
    "random_print": "original: forward `if torch.rand(1).item() < 0.001: print(...)`",
    "self_log": "`self.log` of scale and grad, every step",
    "wandb_logger": "WandbLogger (offline) added, no watch",
    "wandb_watch": "WandbLogger.watch(model, log='all', log_freq=50), offline",
}
#: the issue's target: monitor(N=50) / baseline, median over rounds
TARGET_N50 = 1.01

MODEL_DESCRIPTION = ("2-layer pre-norm transformer encoder (d_model 64, 4 heads, seq 32, ff 128, batch 8), an "
                     "AttentionBiasGenerator in each layer adding its bias to the attention logits, AdamW")


# ---- the model and its switches ----------------------------------------------------------------


class SwitchableEncoder(BenchEncoder):
    """BenchEncoder whose generators can do the random print and that can ``self.log`` its scales.

    Both are off unless switched on; the flag checks cost a few hundred
    nanoseconds per step (two attribute reads and a ``super()`` call per layer), in
    every block alike.
    """

    generator_cls = RandomPrintBiasGenerator

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log_scales = False
        self.switchboard: Optional["Switchboard"] = None
        for gen in self.generators():
            gen.enabled = False

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if self.log_scales:
            for i, gen in enumerate(self.generators()):
                self.log(f"scale/{i}", gen.scale.detach())
        return loss

    def on_before_optimizer_step(self, optimizer):
        if self.log_scales:
            for i, gen in enumerate(self.generators()):
                if gen.bias_scale.grad is not None:
                    self.log(f"scale_grad/{i}", gen.bias_scale.grad.detach())

    # After every callback's on_train_batch_start (Lightning calls the module's hook
    # next), so trainer.callbacks is not being iterated while the switchboard edits it.
    def on_train_batch_start(self, batch, batch_idx):
        if self.switchboard is not None:
            self.switchboard.at_step(self.trainer.global_step)

    def on_train_end(self):
        if self.switchboard is not None:
            self.switchboard.finish()


#: Callback hooks Lightning calls on every training step
PER_STEP_HOOKS = ("on_train_batch_start", "on_before_backward", "on_after_backward", "on_before_zero_grad",
                  "on_before_optimizer_step", "on_train_batch_end")


def _timed(name: str):
    def hook(self, *args, **kwargs):
        t0 = time.perf_counter()
        getattr(super(TimedScaleMonitor, self), name)(*args, **kwargs)
        self.hook_s += time.perf_counter() - t0
        self.hook_calls += 1

    hook.__name__ = name
    return hook


class TimedScaleMonitor(ScaleMonitor):
    """ScaleMonitor that also adds up the time spent inside its per-step hooks.

    Only the hooks ScaleMonitor defines are wrapped (the others stay Lightning's
    no-ops), so the wrapping adds one ``perf_counter`` pair per hook it has anyway.
    Since the engine refactor that is ``on_before_optimizer_step`` alone: the
    engine's ``step`` does the schedule, the read and the record inside it.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hook_s = 0.0
        self.hook_calls = 0


for _name in PER_STEP_HOOKS:
    # Its own hooks only: ScaleMonitor derives from both Lightning packages' Callback,
    # so comparing with one package's no-op would wrap the other's no-ops too.
    if any(_name in vars(cls) for cls in ScaleMonitor.__mro__ if cls.__module__.startswith("scalewatch.")):
        setattr(TimedScaleMonitor, _name, _timed(_name))


class Switchboard:
    """Turns one variant on per block of 50 steps, following ``schedule`` (one entry per block)."""

    def __init__(self, trainer: pl.Trainer, model: SwitchableEncoder, monitors: Dict[str, ScaleMonitor],
                 schedule: Sequence[str], timer: StepTimer) -> None:
        self.trainer, self.model, self.monitors = trainer, model, monitors
        self.schedule = list(schedule)
        self.timer = timer
        self.current: Optional[str] = None

    def variant_at(self, step: int) -> str:
        block = step // PERIOD
        return self.schedule[block] if block < len(self.schedule) else "baseline"

    def at_step(self, step: int) -> None:
        wanted = self.variant_at(step)
        if wanted == self.current:
            return
        w0, c0 = time.perf_counter(), time.process_time()
        if self.current is None:  # first step: the monitors were only needed for set-up
            for monitor in self.monitors.values():
                if monitor in self.trainer.callbacks:
                    self._switch_monitor(monitor, step, on=False)
        else:
            self._switch(self.current, step, on=False)
        self._switch(wanted, step, on=True)
        self.current = wanted
        self.timer.exclude(len(self.timer.starts) - 1, time.perf_counter() - w0, time.process_time() - c0)

    def _switch_monitor(self, monitor: ScaleMonitor, step: int, on: bool) -> None:
        # The monitor went through setup / on_fit_start / on_train_start at fit start, so its
        # engine (history file, loggers) is real and stays started; switching moves it in and
        # out of trainer.callbacks (Lightning's dispatch of its hooks is paid in its blocks
        # only) and puts the modules' per-forward work (the clamp fraction) where a fit with /
        # without it has it: for this step's forward, what the engine's schedule says.
        watcher = monitor.watcher
        if on:
            self.trainer.callbacks.append(monitor)
            watcher._track_clamp_fraction(watcher.schedule(step))
        else:
            self.trainer.callbacks.remove(monitor)
            watcher._track_clamp_fraction(False)
            no_monitoring_work(self.model)

    def _switch(self, variant: str, step: int, on: bool) -> None:
        if variant in self.monitors:
            self._switch_monitor(self.monitors[variant], step, on)
        elif variant == "random_print":
            for gen in self.model.generators():
                gen.enabled = on
        elif variant == "self_log":
            self.model.log_scales = on
        elif variant != "baseline":
            raise ValueError(f"cannot switch {variant!r} inside a fit")

    def finish(self) -> None:
        """Put every monitor back so that on_fit_end closes its history and draws its plot."""
        for monitor in self.monitors.values():
            if monitor not in self.trainer.callbacks:
                self.trainer.callbacks.append(monitor)


def _loggers(root: str, name: str, version: str) -> List[Any]:
    return [TensorBoardLogger(f"{root}/tb", name=name, version=version),
            CSVLogger(f"{root}/csv", name=name, version=version)]


#: kept for the front-door benchmarks that share this table (bench_hf, bench_mmengine)
_ratios = neighbour_ratios


# ---- comparison 1: switching inside one fit --------------------------------------------------


def run_in_fit(rounds: int, batch_size: int, variants: Sequence[str], accelerator: str, rng: random.Random,
               root: str) -> Dict[str, Any]:
    schedule = ["baseline"]  # warm-up block, not timed
    for _ in range(rounds):
        order = list(variants)
        rng.shuffle(order)
        for v in order:
            schedule += ["baseline", v]
    schedule.append("baseline")
    steps = len(schedule) * PERIOD + 1

    torch.manual_seed(0)
    model = SwitchableEncoder()
    monitors = {v: TimedScaleMonitor(every_n_steps=n, state_key_suffix=v)
                for v, n in (("monitor_n50", 50), ("monitor_n1", 1)) if v in variants}
    timer = StepTimer(warmup=PERIOD)
    trainer = pl.Trainer(**trainer_kwargs(root, steps, accelerator), callbacks=[timer, *monitors.values()],
                         logger=_loggers(root, "in_fit", "0"))
    model.switchboard = Switchboard(trainer, model, monitors, schedule, timer)
    t0 = time.perf_counter()
    trainer.fit(model, cycled_data(steps, batch_size))
    fit_wall = time.perf_counter() - t0
    if len(timer.starts) < steps:
        raise RuntimeError(f"only {len(timer.starts)} of {steps} steps were timed")

    per_block = timer.blocks(len(schedule) - 1)
    blocks = [{"variant": v, "cpu": c, "wall": w}
              for v, c, w in zip(schedule[1:], per_block["cpu"], per_block["wall"])]
    in_hook = {}
    for v, monitor in monitors.items():
        steps_on = PERIOD * schedule.count(v)
        expected = steps_on // monitor.watcher.every_n_steps
        if monitor.checks != expected:  # the switch must give the engine exactly the steps of its blocks
            raise RuntimeError(f"{v}: {monitor.checks} checks in {schedule.count(v)} blocks, expected {expected}")
        if any(r.clamp_fraction is None for r in monitor.watcher.last_readings):
            raise RuntimeError(f"{v}: the last check has no clamp fraction: the switch left its forward untracked")
        in_hook[v] = {"hook_s_per_step": monitor.hook_s / steps_on, "hook_calls": monitor.hook_calls,
                      "checks": monitor.checks}
    return {"schedule": schedule, "blocks": blocks, "ratios": neighbour_ratios(blocks, variants), "in_hook": in_hook,
            "fit_wall_s": fit_wall, "steps": steps}


# ---- comparison 2: alternating whole fits ------------------------------------------------------


def _fit_segment(variant: str, root: str, tag: str, blocks: int, batch_size: int, accelerator: str) -> Dict[str, Any]:
    steps = (blocks + 1) * PERIOD + 1  # one warm-up block, +1: the last step ends at the next batch's start
    torch.manual_seed(0)
    model = BenchEncoder()
    loggers = _loggers(root, variant, tag)
    wandb_logger = None
    if variant in ("wandb_logger", "wandb_watch"):
        from pytorch_lightning.loggers import WandbLogger

        wandb_logger = WandbLogger(save_dir=root, offline=True, project="scalewatch-bench", name=f"{variant}-{tag}")
        if variant == "wandb_watch":
            wandb_logger.watch(model, log="all", log_freq=PERIOD)
        loggers.append(wandb_logger)
    elif variant != "baseline":
        raise ValueError(f"unknown variant {variant!r}")
    timer = StepTimer(warmup=PERIOD)
    trainer = pl.Trainer(**trainer_kwargs(root, steps, accelerator), callbacks=[timer], logger=loggers)
    try:
        trainer.fit(model, cycled_data(steps, batch_size))
    finally:
        if wandb_logger is not None:
            import wandb

            wandb.finish()
    per_block = timer.blocks(blocks)
    return {"variant": variant, "tag": tag, "cpu": statistics.median(per_block["cpu"]),
            "wall": statistics.median(per_block["wall"]), "block_cpu": per_block["cpu"],
            "block_wall": per_block["wall"]}


def run_by_fit(rounds: int, blocks: int, batch_size: int, variants: Sequence[str], accelerator: str,
               rng: random.Random, root: str, log: Callable[[str], None]) -> Dict[str, Any]:
    for v in ("baseline", *variants):  # untimed: imports, wandb's service process
        _fit_segment(v, root, "warmup", 1, batch_size, accelerator)
    segments = [_fit_segment("baseline", root, "b", blocks, batch_size, accelerator)]
    for r in range(rounds):
        order = list(variants)
        rng.shuffle(order)
        for v in order:
            segments.append(_fit_segment(v, root, f"r{r}", blocks, batch_size, accelerator))
            segments.append(_fit_segment("baseline", root, f"r{r}-{v}", blocks, batch_size, accelerator))
        log(f"  by-fit round {r + 1}/{rounds} done")
    return {"segments": segments, "ratios": neighbour_ratios(segments, variants)}


# ---- both -----------------------------------------------------------------------------------


def run(rounds: int = 24, fit_rounds: int = 4, fit_blocks: int = 3, batch_size: int = 8,
        variants: Sequence[str] = VARIANTS, accelerator: str = "auto", seed: int = 0,
        log: Callable[[str], None] = print) -> Dict[str, Any]:
    quiet()
    rng = random.Random(seed)
    started = time.perf_counter()
    in_fit_variants = [v for v in variants if v in IN_FIT]
    by_fit_variants = [v for v in variants if v in BY_FIT]
    on_gpu = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    primary = "wall" if on_gpu else "cpu"
    rows: List[Dict[str, Any]] = []
    result: Dict[str, Any] = {"benchmark": "overhead", "primary_metric": primary}
    with tempfile.TemporaryDirectory(prefix="scalewatch-bench-") as root:
        if in_fit_variants:
            log(f"  comparison 1: {rounds} rounds of {in_fit_variants} in one fit ...")
            one = run_in_fit(rounds, batch_size, in_fit_variants, accelerator, rng, root)
            log(f"  comparison 1 done [{time.perf_counter() - started:.0f} s]")
            base = [b for b in one["blocks"] if b["variant"] == "baseline"]
            base_ms = {m: statistics.median(b[m] for b in base) * 1e3 for m in METRICS}
            rows.append(_row("baseline", "1: one fit, switched per 50-step block", base, None, len(base)))
            for v in in_fit_variants:
                mine = [b for b in one["blocks"] if b["variant"] == v]
                row = _row(v, "1: one fit, switched per 50-step block", mine, one["ratios"], len(mine))
                rows.append(with_in_hook(row, one["in_hook"][v], base_ms["wall"]) if v in one["in_hook"] else row)
            result["in_fit"] = one
        if by_fit_variants:
            log(f"  comparison 2: {fit_rounds} rounds of {by_fit_variants} as alternating fits ...")
            two = run_by_fit(fit_rounds, fit_blocks, batch_size, by_fit_variants, accelerator, rng, root, log)
            log(f"  comparison 2 done [{time.perf_counter() - started:.0f} s]")
            base = [s for s in two["segments"] if s["variant"] == "baseline"]
            rows.append(_row("baseline", "2: alternating fits", base, None, len(base)))
            for v in by_fit_variants:
                mine = [s for s in two["segments"] if s["variant"] == v]
                rows.append(_row(v, "2: alternating fits", mine, two["ratios"], len(mine)))
            result["by_fit"] = two
    result.update({
        "method": __doc__.split("Method.", 1)[1].strip(),
        "config": {"rounds": rounds, "fit_rounds": fit_rounds, "fit_blocks": fit_blocks, "block_steps": PERIOD,
                   "batch_size": batch_size, "model": MODEL_DESCRIPTION, "loggers": "TensorBoardLogger + CSVLogger",
                   "accelerator": accelerator},
        "rows": rows, "wall_s": time.perf_counter() - started,
    })
    n50 = next((r for r in rows if r["variant"] == "monitor_n50"), None)
    if n50 is not None:
        med = n50[f"{primary}_ratio"]["median"]
        result["target"] = {"what": f"monitor_n50 / baseline, median {primary}-time ratio", "limit": TARGET_N50,
                            "value": med, "met": med <= TARGET_N50}
    return result


def _row(variant: str, comparison: str, entries: List[Dict[str, Any]],
         ratios: Optional[Dict[str, Dict[str, List[float]]]], n: int) -> Dict[str, Any]:
    return ratio_row(variant, LABELS[variant], comparison, entries, ratios, n)


def format_table(result: Dict[str, Any]) -> str:
    """The result as a Markdown table (bench_hf, bench_mmengine and bench_plain_loop lay theirs out alike)."""
    return ratio_table(result)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=24, help="rounds of comparison 1 (one block per variant each)")
    p.add_argument("--fit-rounds", type=int, default=4, help="rounds of comparison 2 (one fit per variant each)")
    p.add_argument("--fit-blocks", type=int, default=3, help="timed 50-step blocks per fit in comparison 2")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: steadier on a shared box)")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args.rounds, args.fit_rounds, args.fit_blocks, args.batch_size, tuple(args.variants), args.accelerator)
    return report(result, "Overhead per optimizer step", format_table(result), args.json)


if __name__ == "__main__":
    sys.exit(main())
