"""What the front-door benchmarks share: one monitor against the baseline, switched per block in one run.

A front-door benchmark (``bench_mmengine.py``; ``bench_hf.py`` has the same shape)
trains once, alternating blocks ``B M B M ... B`` of :data:`PERIOD` steps after a
warm-up block with the monitor in, and takes its ratios, rows and target the way
``bench_overhead.py`` does. This module holds the parts that do not depend on the
trainer: the schedule, when a switch is due, the result and the command line.
"""
from __future__ import annotations

import argparse
import statistics
from typing import Any, Callable, Dict, List, Optional

import torch

from benchmarks.bench_overhead import TARGET_N50, _ratios, _row
from benchmarks.bench_overhead import format_table as _overhead_table
from benchmarks.common import PERIOD, report

MONITOR = "monitor_n50"


def schedule(rounds: int) -> List[str]:
    """The warm-up block (monitor in, not timed: it starts there), then ``B M B M ... B``."""
    return [MONITOR] + ["baseline", MONITOR] * rounds + ["baseline"]


def block_starting(upcoming: int, current: int, blocks: int) -> Optional[int]:
    """The block that step ``upcoming`` (0-based) begins, if it begins one other than ``current``."""
    block = upcoming // PERIOD
    if upcoming % PERIOD == 0 and block != current and block < blocks:
        return block
    return None


def blocks_and_ratios(plan: List[str], per_block: Dict[str, List[float]]) -> Dict[str, Any]:
    """The timed blocks (the warm-up left out) with their variant, and the monitor blocks' ratios."""
    blocks = [{"variant": v, "cpu": c, "wall": w}
              for v, c, w in zip(plan[1:], per_block["cpu"][1:], per_block["wall"][1:])]
    return {"blocks": blocks, "ratios": _ratios(blocks, [MONITOR])}


def finished_run(plan: List[str], timer: Any, monitor: Any, rounds: int, steps: int, train_wall: float,
                 unit: str) -> Dict[str, Any]:
    """One interleaved run's blocks, ratios and in-hook account, after checking it ran as planned:
    every step timed, and the monitor checked once in each of its blocks and nowhere else.

    Raises:
        RuntimeError: when the run did not follow ``plan``.
    """
    if len(timer.starts) < steps:
        raise RuntimeError(f"only {len(timer.starts)} of {steps} {unit}s were timed")
    if monitor.watcher.checks != plan.count(MONITOR):
        raise RuntimeError(f"{monitor.watcher.checks} checks in {plan.count(MONITOR)} monitor blocks")
    in_hook = {"hook_s_per_step": monitor.hook_s / (PERIOD * rounds), "checks": monitor.watcher.checks}
    return dict(blocks_and_ratios(plan, timer.blocks(len(plan))), schedule=plan, in_hook=in_hook,
                train_wall_s=train_wall, steps=steps)


def result(one: Dict[str, Any], *, benchmark: str, label: str, comparison: str, what: str, method: str,
           config: Dict[str, Any]) -> Dict[str, Any]:
    """Rows (as ``bench_overhead``'s), the in-hook account and the target from one run's blocks.

    ``one`` holds ``blocks``, ``ratios`` and ``in_hook`` (``hook_s_per_step``): the time
    inside the monitor per step of its blocks.
    """
    primary = "wall" if torch.cuda.is_available() else "cpu"
    base = [b for b in one["blocks"] if b["variant"] == "baseline"]
    mine = [b for b in one["blocks"] if b["variant"] == MONITOR]
    base_wall_ms = statistics.median(b["wall"] for b in base) * 1e3
    in_hook = dict(one["in_hook"], ratio=1 + one["in_hook"]["hook_s_per_step"] * 1e3 / base_wall_ms)
    rows = [_row("baseline", comparison, base, None, len(base)),
            dict(_row(MONITOR, comparison, mine, one["ratios"], len(mine)), label=label, in_hook=in_hook)]
    med = rows[1][f"{primary}_ratio"]["median"]
    return {"benchmark": benchmark, "primary_metric": primary, "rows": rows, "in_train": one, "method": method,
            "config": dict(config, block_steps=PERIOD),
            "target": {"what": f"{what}, median {primary}-time ratio", "limit": TARGET_N50, "value": med,
                       "met": med <= TARGET_N50}}


def format_table(result: Dict[str, Any]) -> str:
    """The result as a Markdown table, laid out as ``bench_overhead``'s."""
    return _overhead_table(result)


def main(argv: Optional[List[str]], description: str, run: Callable[..., Dict[str, Any]], title: str) -> int:
    """The command line of a front-door benchmark: ``--rounds``, ``--batch-size``, ``--threads``, ``--json``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--rounds", type=int, default=24, help="rounds (one baseline and one monitor block each)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: steadier on a shared box)")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = run(args.rounds, args.batch_size)
    t = res["target"]
    table = format_table(res) + f"\n\nTarget: {t['what']} = {t['value']:.4f} (limit {t['limit']:g}): " \
        + ("met" if t["met"] else "MISSED")
    return report(res, title, table, args.json)
