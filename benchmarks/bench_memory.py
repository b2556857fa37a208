"""Memory of a long run with ScaleMonitor(every_n_steps=1): it must stay flat.

Every reading goes to ``scalewatch_history.jsonl`` as it is taken; nothing in the
monitor grows with the number of steps. This takes 100k check steps and samples the
process's resident memory (RSS, psutil) every 5k.

How the steps are driven, and why. A real ``fit()`` attaches the monitor: a
LightningModule with one AttentionBiasGenerator, a Trainer with a CSVLogger, the
monitor's ``setup`` / ``on_fit_start`` / ``on_train_start`` all run, one real
training step is taken (so the scale has a gradient). The end of that fit closes
the monitor's engine (``ScaleWatcher``), so the monitor is started again on the
same trainer as a second ``fit()`` would start it (``setup``, ``on_fit_start``,
``on_train_start``: a new engine that continues the record). Then the loop calls the
monitor's ``on_before_optimizer_step(trainer, module, optimizer)`` directly, 100k
times, on that trainer, advancing ``trainer.global_step`` by one each time (the
loop's optimizer-step counter, which is what Lightning advances) and nudging the
raw scale so every reading differs. Each call is a full check step: the read
(one host transfer), the saturation rules, the loggers (``log_metrics`` on the
CSVLogger, which flushes every 100 steps) and the history line, i.e. every path
where the monitor could keep something per step. A real 100k-step ``fit()`` would
add Lightning's own ~1 ms per step on these CPUs (minutes) without exercising
any more of the monitor; what it holds is the same either way. One thing is off:
the progress-bar value (``progress_bar=False``), because ``LightningModule.log``
needs the running loop's result collection; that value overwrites one key per
step and holds nothing per step either.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import observe_record, quiet, report, rss_mb, trainer_kwargs
from scalewatch.callbacks import ScaleMonitor
from scalewatch.monitor import AttentionBiasGenerator

STEPS = 100_000
SAMPLE_EVERY = 5_000
WARMUP_STEPS = 10_000
#: "flat": RSS may grow at most this much after the warm-up (a per-step leak of 50 bytes would exceed it)
FLAT_LIMIT_MB = 5.0
#: steps of the control run that keeps its history in memory (shows the method sees a leak)
CONTROL_STEPS = 20_000


class OneScale(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.router = nn.Linear(8, 8)
        self.attention_bias_generator = AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        weights = torch.tanh(self.router(x)).unsqueeze(-2).expand(-1, 8, -1)
        return -self.attention_bias_generator(weights).float().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _advance(trainer: pl.Trainer) -> None:
    """One optimizer step on the loop's counter: what ``trainer.global_step`` reads."""
    trainer.fit_loop.epoch_loop.automatic_optimization.optim_progress.optimizer.step.total.completed += 1


class InMemoryHistoryMonitor(ScaleMonitor):
    """Control: a monitor whose engine also keeps every record in a list, as an in-memory history would."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kept: List[Dict[str, Any]] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.watcher is not None:
            observe_record(self.watcher, lambda step, readings, alerts, seconds:
                           self.kept.extend(r.to_record() for r in readings))


def _second_fit(monitor: ScaleMonitor, trainer: pl.Trainer, model: pl.LightningModule) -> None:
    """Start the monitor again on ``trainer`` as another ``fit()`` of it would: a new engine that goes on
    from the closed one's record (the end of the first fit closed it)."""
    monitor.setup(trainer, model, "fit")
    monitor.on_fit_start(trainer, model)
    monitor.on_train_start(trainer, model)


def _drive(monitor: ScaleMonitor, steps: int, sample_every: int, root: str, accelerator: str,
           log: Callable[[str], None], started: float) -> Dict[str, Any]:
    torch.manual_seed(0)
    model = OneScale()
    trainer = pl.Trainer(**trainer_kwargs(root, 1, accelerator), callbacks=[monitor],
                         logger=CSVLogger(root, name="memory"))
    trainer.fit(model, DataLoader(TensorDataset(torch.randn(8, 8)), batch_size=4))
    assert model.attention_bias_generator.bias_scale.grad is not None
    _second_fit(monitor, trainer, model)
    optimizer = trainer.optimizers[0]
    raw = model.attention_bias_generator.bias_scale
    samples = []
    first = trainer.global_step
    t0 = time.perf_counter()
    for i in range(steps):
        _advance(trainer)
        with torch.no_grad():
            raw.add_(1e-5 if (i // 1000) % 2 == 0 else -1e-5)
        monitor.on_before_optimizer_step(trainer, model, optimizer)
        if (i + 1) % sample_every == 0:
            gc.collect()
            samples.append({"step": i + 1, "rss_mb": rss_mb()})
            if (i + 1) % (sample_every * 4) == 0:
                log(f"  memory ({type(monitor).__name__}): {i + 1} steps, RSS {samples[-1]['rss_mb']:.1f} MB "
                    f"[{time.perf_counter() - started:.0f} s]")
    loop_s = time.perf_counter() - t0
    monitor.on_fit_end(trainer, model)
    with open(monitor.history_path, "rb") as f:
        lines = sum(1 for _ in f)
    return {"samples": samples, "checks_driven": trainer.global_step - first, "history_lines": lines,
            "history_mb": os.path.getsize(monitor.history_path) / 2**20, "check_us": loop_s / steps * 1e6}


def _growth(samples: List[Dict[str, float]], warmup: int) -> Dict[str, float]:
    after = [s["rss_mb"] for s in samples if s["step"] >= warmup]
    steps = samples[-1]["step"] - next(s["step"] for s in samples if s["step"] >= warmup)
    growth = after[-1] - after[0]
    return {"growth_mb": growth, "span_mb": max(after) - min(after),
            "bytes_per_step": growth * 2**20 / max(1, steps)}


def run(steps: int = STEPS, sample_every: int = SAMPLE_EVERY, warmup: int = WARMUP_STEPS,
        control_steps: int = CONTROL_STEPS, accelerator: str = "auto",
        log: Callable[[str], None] = print) -> Dict[str, Any]:
    quiet()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="scalewatch-bench-") as root:
        real = _drive(ScaleMonitor(every_n_steps=1, progress_bar=False, plot=False), steps, sample_every,
                      os.path.join(root, "real"), accelerator, log, started)
        control = None
        if control_steps:
            control = _drive(InMemoryHistoryMonitor(every_n_steps=1, progress_bar=False, plot=False), control_steps,
                             max(1, control_steps // 10), os.path.join(root, "control"), accelerator, log, started)
    grown = _growth(real["samples"], warmup)
    result = {
        "benchmark": "memory", "method": __doc__.strip(),
        "config": {"steps": steps, "every_n_steps": 1, "scales": 1, "sample_every": sample_every,
                   "warmup_steps": warmup, "loggers": "CSVLogger", "control_steps": control_steps},
        "samples": real["samples"], "rss_start_mb": real["samples"][0]["rss_mb"],
        "rss_end_mb": real["samples"][-1]["rss_mb"], "growth_after_warmup_mb": grown["growth_mb"],
        "span_after_warmup_mb": grown["span_mb"], "bytes_per_step_after_warmup": grown["bytes_per_step"],
        "checks": real["checks_driven"], "history_lines": real["history_lines"], "history_mb": real["history_mb"],
        "check_us": real["check_us"], "wall_s": time.perf_counter() - started,
        "target": {"what": f"RSS growth after {warmup} steps, MB", "limit": FLAT_LIMIT_MB, "value": grown["growth_mb"],
                   "met": abs(grown["growth_mb"]) <= FLAT_LIMIT_MB and grown["span_mb"] <= 2 * FLAT_LIMIT_MB},
    }
    if control is not None:
        c = _growth(control["samples"], control["samples"][0]["step"])
        result["control_in_memory_history"] = {"steps": control_steps, "samples": control["samples"],
                                               "bytes_per_step": c["bytes_per_step"],
                                               "mb_per_100k_steps": c["bytes_per_step"] * 100_000 / 2**20}
    return result


def format_table(result: Dict[str, Any]) -> str:
    c = result["config"]
    s = result["samples"]
    picks = [x for x in s if x["step"] in (c["sample_every"], c["warmup_steps"], c["steps"] // 2, c["steps"])]
    lines = ["| steps (N=1, every step a check) | " + " | ".join(f"{x['step']:,}" for x in picks) + " |",
             "|---|" + "---:|" * len(picks),
             "| RSS (MB) | " + " | ".join(f"{x['rss_mb']:.1f}" for x in picks) + " |"]
    lines.append("")
    lines.append(f"RSS growth after {c['warmup_steps']:,} steps: {result['growth_after_warmup_mb']:+.2f} MB "
                 f"({result['bytes_per_step_after_warmup']:.1f} bytes/step; max-min {result['span_after_warmup_mb']:.2f} MB); "
                 f"history: {result['history_lines']:,} lines, {result['history_mb']:.1f} MB on disk; "
                 f"{result['check_us']:.0f} µs per check")
    if "control_in_memory_history" in result:
        c = result["control_in_memory_history"]
        lines.append(f"Control, the same loop keeping every record in a list as well: {c['bytes_per_step']:.0f} bytes/step, "
                     f"i.e. {c['mb_per_100k_steps']:.0f} MB per 100k steps.")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--sample-every", type=int, default=SAMPLE_EVERY)
    p.add_argument("--warmup", type=int, default=WARMUP_STEPS)
    p.add_argument("--control-steps", type=int, default=CONTROL_STEPS, help="0: no control run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args.steps, args.sample_every, args.warmup, args.control_steps, args.accelerator)
    return report(result, f"Memory of a {args.steps:,}-step run, ScaleMonitor(every_n_steps=1)", format_table(result), args.json)


if __name__ == "__main__":
    sys.exit(main())
