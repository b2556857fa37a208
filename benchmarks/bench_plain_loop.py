"""Overhead of ScaleWatcher in a plain PyTorch loop (no Lightning), against the same loop without it.

Variants (same model, data, seed, optimizer and SummaryWriter; only the watching differs):

    baseline       the loop alone: forward, backward, AdamW, and the loss to a
                   ``SummaryWriter`` every 50 steps (what a plain loop logs anyway)
    watcher_n50    the same loop calling ``watcher.step(step)`` before ``optimizer.step()``, with
                   ``ScaleWatcher(model, log_dir=tmp, every_n_steps=50, tensorboard=writer)``

Method. The model is the overhead benchmark's encoder as a plain ``nn.Module``
(2 layers, an AttentionBiasGenerator in each). One loop runs blocks of 50 steps
``W B W B W ... W B`` after an untimed warm-up block with the watcher on (its first
check makes the history file and the TensorBoard layout: one-time costs of a run,
not of a step). The watcher is switched the honest way: ``watcher.step`` is called
in its blocks and not in the others. 50 is the watcher's period, so each of its
blocks holds exactly one check, and the step before it (the only one that turns
the generators' clamp-fraction statistic on, for the check step's forward) is in
the same block; the baseline blocks do no monitoring work of any kind.

Time is taken per step by a :class:`~benchmarks.common.StepClock` ticked at the
top of each iteration (after the batch is fetched): data, forward, backward, the
watcher, the optimizer and the loop's own logging all sit between two ticks. A
watcher block's ratio is its mean step time over the mean of the two baseline
blocks on either side; the table gives min / median / max over rounds and a
bootstrap 95% interval of the median. CPU time (this process, all threads) is the
headline on a CPU, wall time on a GPU, as in ``bench_overhead.py``.

``in step()`` is the direct account: the time spent inside ``watcher.step`` per
step of its blocks, over the baseline step time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter

from benchmarks.bench_overhead import MODEL_DESCRIPTION, TARGET_N50
from benchmarks.common import (PERIOD, Encoder, StepClock, WatcherBlocks, cycled_data, neighbour_ratios, quiet, ratio_row,
                               ratio_table, report, with_in_hook)
from scalewatch.callbacks import ScaleWatcher

VARIANT = "watcher_n50"
LABELS = {"baseline": "plain loop, no monitoring (baseline)",
          VARIANT: "ScaleWatcher(every_n_steps=50, tensorboard=SummaryWriter), plain loop"}
COMPARISON = "plain loop: one loop, watcher.step called per 50-step block"


def device_for(accelerator: str) -> torch.device:
    """The device Lightning's ``accelerator`` would pick: ``auto`` is the GPU when there is one."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def run_loop(rounds: int, batch_size: int, device: torch.device, root: str) -> Dict[str, Any]:
    """One training loop of ``W`` (warm-up) + ``rounds`` x ``B W`` + ``B`` blocks; per-block times."""
    plan = WatcherBlocks(rounds, VARIANT)
    torch.manual_seed(0)
    model = Encoder().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    writer = SummaryWriter(os.path.join(root, "tb"))
    watcher = ScaleWatcher(model, log_dir=root, every_n_steps=PERIOD, tensorboard=writer)
    clock = StepClock(warmup=PERIOD)
    started = time.perf_counter()
    for step, (x, y) in enumerate(cycled_data(plan.steps, batch_size)):
        clock.tick(device)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if plan.calls(step):
            plan.step(watcher, step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % PERIOD == 0:
            writer.add_scalar("loss", loss.item(), step)
    loop_wall = time.perf_counter() - started
    watcher.close()
    writer.close()

    plan.check(watcher)
    if any(r.clamp_fraction is None for r in watcher.last_readings):  # the check step's forward was tracked
        raise RuntimeError("the last check has no clamp fraction: the watcher's switch left its forward untracked")
    blocks = plan.blocks(clock)
    in_hook = {"hook_s_per_step": plan.hook_s_per_step(), "checks": watcher.checks}
    return {"schedule": plan.schedule, "blocks": blocks, "ratios": neighbour_ratios(blocks, [VARIANT]),
            "in_hook": in_hook, "loop_wall_s": loop_wall, "steps": plan.steps}


def run(rounds: int = 40, batch_size: int = 8, accelerator: str = "auto",
        log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Measure; returns the result with ``rows`` (as ``bench_overhead``'s) and the ``target``."""
    quiet()
    started = time.perf_counter()
    device = device_for(accelerator)
    primary = "wall" if device.type == "cuda" else "cpu"
    log(f"  {rounds} rounds of baseline / ScaleWatcher blocks in one plain loop on {device.type} ...")
    with tempfile.TemporaryDirectory(prefix="scalewatch-bench-loop-") as root:
        one = run_loop(rounds, batch_size, device, root)
    base = [b for b in one["blocks"] if b["variant"] == "baseline"]
    mine = [b for b in one["blocks"] if b["variant"] == VARIANT]
    base_wall_ms = statistics.median(b["wall"] for b in base) * 1e3
    watched = ratio_row(VARIANT, LABELS[VARIANT], COMPARISON, mine, one["ratios"], len(mine))
    rows = [ratio_row("baseline", LABELS["baseline"], COMPARISON, base, None, len(base)),
            with_in_hook(watched, one["in_hook"], base_wall_ms)]
    med = watched[f"{primary}_ratio"]["median"]
    return {"benchmark": "plain_loop", "primary_metric": primary, "rows": rows, "in_loop": one,
            "method": __doc__.split("Method.", 1)[1].strip(),
            "config": {"rounds": rounds, "block_steps": PERIOD, "batch_size": batch_size,
                       "model": MODEL_DESCRIPTION + " (plain nn.Module)",
                       "loggers": "SummaryWriter (the loop's loss and the watcher's scalars)",
                       "device": device.type},
            "target": {"what": f"ScaleWatcher(N=50) / baseline in a plain loop, median {primary}-time ratio",
                       "limit": TARGET_N50, "value": med, "met": med <= TARGET_N50},
            "wall_s": time.perf_counter() - started}


def format_table(result: Dict[str, Any]) -> str:
    """The result as a Markdown table, laid out as ``bench_overhead``'s."""
    return ratio_table(result, hook_column="in step()")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=40, help="rounds (one baseline and one watcher block each)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steadier on a shared box)")
    p.add_argument("--accelerator", default="auto", help="auto (the GPU when there is one) | cpu | gpu")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args.rounds, args.batch_size, args.accelerator)
    return report(result, "Plain PyTorch loop: overhead per optimizer step", format_table(result), args.json)


if __name__ == "__main__":
    sys.exit(main())
