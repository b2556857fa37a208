"""Cost of one ScaleMonitor check step as the number of watched scales K grows (1, 10, 100, 1000).

A LightningModule holds K AttentionBiasGenerators, all in the loss, so every one
has a gradient. It trains in a real ``fit()`` with ``ScaleMonitor(every_n_steps=2)``:
odd steps are check steps, even steps are not. A subclass of ScaleMonitor times
its ``on_before_optimizer_step`` hook (the whole check: the engine's ``step`` with
``read_scales``, the saturation rules and the record, then the progress-bar value)
and, separately, ``read_scales`` (as the engine, ``ScaleWatcher``, calls it) and
the engine's record path (``ScaleWatcher._record``: loggers and history). The
first steps are warm-up; the table gives the median over the timed check steps.
At N=2 every non-check step is the step before a check, so its time holds the
switch that turns the generators' clamp-fraction statistic on for the check
step's forward passes (one attribute set per scale: it grows with K); at N=50
that switch comes once in 50 steps.

Host transfers: on one check step and one non-check step per K the hook runs
under a counter of device-to-host reads (``.cpu()``, ``.item()``, ``.tolist()``,
``float(t)``, ... see :class:`benchmarks.common.HostReadCounter`); on a GPU the
CUDA synchronisations themselves are counted instead
(``torch.cuda.set_sync_debug_mode("warn")``). Those steps are not timed.

Loggers: ``--loggers csv`` (default) attaches a CSVLogger; ``tb`` a
TensorBoardLogger, ``none`` no logger (history file only). With K scales a check
hands 5-6 K values to every logger, so a logger's own per-value cost shows up
here; see the README for what TensorBoard costs at K=1000.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import scalewatch.callbacks.watcher as watcher_module
from benchmarks.common import HostReadCounter, observe_record, quiet, report, trainer_kwargs
from scalewatch.callbacks import ScaleMonitor
from scalewatch.monitor import AttentionBiasGenerator

KS = (1, 10, 100, 1000)
#: the issue's target for K=1000, milliseconds per check step
TARGET_K1000_MS = 5.0  # issue #17, with the TensorBoard logger (25 before it)


class ManyScales(pl.LightningModule):
    """K bias generators fed the same router weights; the loss uses every one of them."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.router = nn.Linear(8, 8)
        self.gens = nn.ModuleList(AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0)
                                  for _ in range(k))

    def training_step(self, batch, batch_idx):
        (x,) = batch
        weights = torch.tanh(self.router(x)).unsqueeze(-2).expand(-1, 8, -1)  # [B, Q, K] in [-1, 1]
        loss = torch.stack([gen(weights).float().mean() for gen in self.gens]).mean().neg()
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@contextmanager
def count_host_syncs(device: torch.device) -> Iterator[Dict[str, Any]]:
    """Counts what the block reads from the device: CUDA syncs on a GPU, host reads on a CPU."""
    out: Dict[str, Any] = {}
    if device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield out
            finally:
                torch.cuda.set_sync_debug_mode("default")
        out["count"] = sum("synchroniz" in str(w.message) for w in caught)
        out["how"] = "CUDA synchronisations (set_sync_debug_mode('warn'))"
    else:
        with HostReadCounter() as counter:
            yield out
        out["count"] = counter.count
        out["calls"] = dict(counter.calls)
        out["how"] = "device-to-host reads (.cpu/.item/.tolist/float(t)...)"


class ProfiledScaleMonitor(ScaleMonitor):
    """Times its hook and its engine's record path; counts host transfers on the steps it is told to."""

    def __init__(self, count_steps: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.count_steps = set(count_steps)
        self.check_s: List[float] = []
        self.skip_s: List[float] = []
        self.record_s: List[float] = []
        self.transfers: Dict[str, Dict[str, Any]] = {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.watcher is not None:
            observe_record(self.watcher, self._observe_record)

    def _observe_record(self, step: int, readings: Any, alerts: Any, seconds: float) -> None:
        if step not in self.count_steps:
            self.record_s.append(seconds)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step
        is_check = self.watcher is not None and self.watcher.schedule(step)
        if step in self.count_steps:
            with count_host_syncs(pl_module.device) as counted:
                super().on_before_optimizer_step(trainer, pl_module, optimizer)
            self.transfers["check" if is_check else "non_check"] = counted
            return
        t0 = time.perf_counter()
        super().on_before_optimizer_step(trainer, pl_module, optimizer)
        (self.check_s if is_check else self.skip_s).append(time.perf_counter() - t0)


@contextmanager
def timed_read_scales(into: List[float], skip: Callable[[int], bool]) -> Iterator[None]:
    """Times every read the engine makes: ``read_columns`` (the columnar check path) or, in an engine
    from before it, ``read_scales`` (the name ``callbacks/watcher.py`` imported and calls)."""
    name = "read_columns" if hasattr(watcher_module, "read_columns") else "read_scales"
    original = getattr(watcher_module, name)

    def timed(scales, step, *more):
        t0 = time.perf_counter()
        readings = original(scales, step, *more)
        if not skip(step):
            into.append(time.perf_counter() - t0)
        return readings

    setattr(watcher_module, name, timed)
    try:
        yield
    finally:
        setattr(watcher_module, name, original)


def run_k(k: int, checks: int, loggers: str, root: str, accelerator: str) -> Dict[str, Any]:
    warmup = 4  # steps 0-3: two checks (1, 3) and two non-checks (0, 2), not timed
    count_steps = (warmup, warmup + 1)  # step 4 is a non-check, step 5 a check: counted, not timed
    steps = warmup + 2 + 2 * checks
    torch.manual_seed(0)
    model = ManyScales(k)
    monitor = ProfiledScaleMonitor(count_steps, every_n_steps=2, plot=False)
    logger: Any = {"csv": lambda: CSVLogger(root, name=f"k{k}"), "tb": lambda: TensorBoardLogger(root, name=f"k{k}"),
                   "none": lambda: False}[loggers]()
    data = DataLoader(TensorDataset(torch.randn(steps * 4, 8, generator=torch.Generator().manual_seed(0))),
                      batch_size=4)
    trainer = pl.Trainer(**dict(trainer_kwargs(root, steps, accelerator), log_every_n_steps=2),
                         callbacks=[monitor], logger=logger)
    read_s: List[float] = []
    t0 = time.perf_counter()
    with timed_read_scales(read_s, skip=lambda step: step < warmup or step in count_steps):
        trainer.fit(model, data)
    fit_wall = time.perf_counter() - t0
    if len(monitor.scales) != k:
        raise RuntimeError(f"ScaleMonitor found {len(monitor.scales)} scales, expected {k}")
    check_s, skip_s = monitor.check_s[2:], monitor.skip_s[2:]  # drop the warm-up steps
    return {
        "k": k, "checks_timed": len(check_s),
        "check_ms": statistics.median(check_s) * 1e3, "check_ms_max": max(check_s) * 1e3,
        "read_scales_ms": statistics.median(read_s) * 1e3,
        "record_ms": statistics.median(monitor.record_s[2:]) * 1e3,
        "non_check_us": statistics.median(skip_s) * 1e6,
        "transfers_check": monitor.transfers.get("check", {}).get("count"),
        "transfers_non_check": monitor.transfers.get("non_check", {}).get("count"),
        "transfer_detail": monitor.transfers, "fit_wall_s": fit_wall,
    }


def run(ks: Sequence[int] = KS, checks: int = 15, loggers: str = "csv", accelerator: str = "auto",
        log: Callable[[str], None] = print) -> Dict[str, Any]:
    quiet()
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="scalewatch-bench-") as root:
        run_k(1, 2, loggers, root, accelerator)  # untimed warm-up: imports, first-use costs
        for k in ks:
            rows.append(run_k(k, checks, loggers, root, accelerator))
            log(f"  K={k}: check step {rows[-1]['check_ms']:.2f} ms [{time.perf_counter() - started:.0f} s]")
    result: Dict[str, Any] = {"benchmark": "scaling", "method": __doc__.strip(),
                              "config": {"ks": list(ks), "checks_timed": checks, "loggers": loggers,
                                         "accelerator": accelerator},
                              "rows": rows, "wall_s": time.perf_counter() - started}
    big = next((r for r in rows if r["k"] == 1000), None)
    if big is not None:
        result["target"] = {"what": f"K=1000 check step with loggers={loggers}, ms (median)", "limit": TARGET_K1000_MS,
                            "value": big["check_ms"], "met": big["check_ms"] <= TARGET_K1000_MS}
    transfers = {r["transfers_check"] for r in rows}
    result["one_transfer_per_check"] = transfers == {1} and {r["transfers_non_check"] for r in rows} == {0}
    return result


def format_table(result: Dict[str, Any]) -> str:
    lines = ["| K scales | check step (ms) | of which read_scales (ms) | of which record: loggers + history (ms) "
             "| non-check step (µs) | host transfers per check / non-check |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['k']} | {r['check_ms']:.2f} | {r['read_scales_ms']:.2f} | {r['record_ms']:.2f} "
                     f"| {r['non_check_us']:.1f} | {r['transfers_check']} / {r['transfers_non_check']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ks", type=int, nargs="+", default=list(KS))
    p.add_argument("--checks", type=int, default=15, help="timed check steps per K")
    p.add_argument("--loggers", choices=("csv", "tb", "none"), default="csv")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args.ks, args.checks, args.loggers, args.accelerator)
    return report(result, f"One check step vs number of watched scales, loggers={args.loggers}", format_table(result), args.json)


if __name__ == "__main__":
    sys.exit(main())
