"""Overhead of ScaleWatcher on a 2-process FSDP2 plain loop (gloo, CPU), and what its gather costs a check.

Variants (same model, data, seed, optimizer on both ranks; only the watching differs):

    baseline       the plain loop's encoder under ``fully_shard`` (each layer, then the root),
                   2 processes: forward, backward, AdamW
    watcher_n50    the same loop calling ``watcher.step(step)`` on every rank before
                   ``optimizer.step()``, with ``ScaleWatcher(model, log_dir=tmp, every_n_steps=50)``

Method. As ``bench_plain_loop``: one launch of 2 processes (``torch.distributed.run``,
``benchmarks/sharded_worker.py``) runs 50-step blocks ``W B W B ... W B`` after an untimed
warm-up block with the watcher on; both ranks follow the same schedule, so they switch together
(a check is one ``all_reduce`` that every rank must join). Each rank ticks its own
:class:`~benchmarks.common.StepClock`; a watcher block's ratio is its mean step time over the
mean of the two baseline blocks around it, min / median / max over rounds and a bootstrap 95%
interval of the median, CPU time (the rank's process, all threads: gloo's included) as the
headline, wall time beside it. Rank 0 writes the history; each rank has its row.

The check's cost. ``check step`` is the median time of ``watcher.step`` on check steps: on each
rank of the FSDP2 loop (its timed watcher blocks: every rank's values from its shard, one
``all_reduce`` of all watched values, gradients and clamp fractions, the rules, rank 0's
record), and in one process training the same model unsharded (``every_n_steps=10``, the
same batch). The difference is what the gather adds to a check.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from benchmarks.bench_overhead import MODEL_DESCRIPTION, TARGET_N50
from benchmarks.common import PERIOD, cycled_data, neighbour_ratios, quiet, ratio_row, ratio_table, report, with_in_hook
from benchmarks.sharded_worker import VARIANT, build
from scalewatch.callbacks import ScaleWatcher

HERE = os.path.dirname(os.path.abspath(__file__))
LABELS = {"baseline": "FSDP2 plain loop, 2 processes, no monitoring (baseline)",
          VARIANT: "ScaleWatcher(every_n_steps=50), FSDP2 plain loop, rank {rank}"}
COMPARISON = "FSDP2, 2 gloo processes: one launch, watcher.step called per 50-step block on both ranks"


def single_check_cost(checks: int = 20, every: int = 10, batch_size: int = 8) -> List[float]:
    """Seconds of ``watcher.step`` on each check step, one process, the same model unsharded."""
    model = build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times: List[float] = []
    steps = (checks + 1) * every
    with tempfile.TemporaryDirectory(prefix="scalewatch-bench-single-") as root:
        watcher = ScaleWatcher(model, log_dir=root, every_n_steps=every, plot=False)
        for step, (x, y) in enumerate(cycled_data(steps, batch_size)):
            F.mse_loss(model(x), y).backward()
            reads = watcher.will_read(step)
            t0 = time.perf_counter()
            watcher.step(step)
            if reads and step >= every:  # the first check makes the history file: a run's cost, not a check's
                times.append(time.perf_counter() - t0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        watcher.close()
    return times


def launch(rounds: int, batch_size: int, out: str, timeout: float, control: bool = False) -> List[Dict[str, Any]]:
    """Run the 2-process FSDP2 loop; each rank's result."""
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(port),
                           "-m", "benchmarks.sharded_worker", out, str(rounds), str(batch_size)]
                          + (["control"] if control else []),
                          cwd=os.path.dirname(HERE), env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"the FSDP2 launch failed ({done.returncode}):\n{done.stderr[-4000:]}")
    with open(os.path.join(out, "rank0.json"), encoding="utf-8") as f0, \
            open(os.path.join(out, "rank1.json"), encoding="utf-8") as f1:
        return [json.load(f0), json.load(f1)]


def run(rounds: int = 20, batch_size: int = 8, log: Any = print, timeout: float = 1800,
        control: bool = False) -> Dict[str, Any]:
    """Measure; returns the result with ``rows`` (as ``bench_plain_loop``'s), ``check_cost`` and the ``target``.

    ``control``: an A/A run, ``watcher.step`` never called in the watcher blocks (the noise's size).
    """
    quiet()
    started = time.perf_counter()
    log(f"  {rounds} rounds of baseline / ScaleWatcher blocks in one 2-process FSDP2 loop (gloo)"
        f"{' (A/A: watcher.step never called)' if control else ''} ...")
    with tempfile.TemporaryDirectory(prefix="scalewatch-bench-fsdp2-") as out:
        ranks = launch(rounds, batch_size, out, timeout, control)
    if control:  # no checks to time: the rows only
        return {"benchmark": "sharded", "primary_metric": "cpu", "control": True,
                "rows": _rows(ranks), "ranks": ranks, "wall_s": time.perf_counter() - started}
    log("  the check step in one process, same model unsharded ...")
    single = single_check_cost(batch_size=batch_size)
    rows = _rows(ranks)
    check_cost = {"single_process_ms": statistics.median(single) * 1e3, "single_process_n": len(single),
                  **{f"fsdp2_rank{r['rank']}_ms": statistics.median(r["check_step_s"]) * 1e3 for r in ranks},
                  "fsdp2_n": len(ranks[0]["check_step_s"])}
    check_cost["gather_ms"] = check_cost["fsdp2_rank0_ms"] - check_cost["single_process_ms"]
    med = rows[1]["cpu_ratio"]["median"]
    return {"benchmark": "sharded", "primary_metric": "cpu", "rows": rows, "check_cost": check_cost,
            "ranks": ranks, "single_check_s": single, "method": __doc__.split("Method.", 1)[1].strip(),
            "config": {"rounds": rounds, "block_steps": PERIOD, "batch_size": batch_size, "processes": 2,
                       "model": MODEL_DESCRIPTION + " (plain nn.Module, fully_shard per layer and root, gloo)",
                       "names": ranks[0]["names"]},
            "target": {"what": "ScaleWatcher(N=50) / baseline in a 2-process FSDP2 plain loop, rank 0, median "
                               "cpu-time ratio", "limit": TARGET_N50, "value": med, "met": med <= TARGET_N50},
            "wall_s": time.perf_counter() - started}


def _rows(ranks: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The baseline row, then each rank's watcher row with its direct account."""
    base = [b for b in ranks[0]["blocks"] if b["variant"] == "baseline"]
    rows = [ratio_row("baseline", LABELS["baseline"], COMPARISON, base, None, len(base))]
    for r in ranks:
        blocks = r["blocks"]
        base_wall_ms = statistics.median(b["wall"] for b in blocks if b["variant"] == "baseline") * 1e3
        mine = [b for b in blocks if b["variant"] == VARIANT]
        row = ratio_row(VARIANT, LABELS[VARIANT].format(rank=r["rank"]), COMPARISON, mine,
                        neighbour_ratios(blocks, [VARIANT]), len(mine))
        rows.append(with_in_hook(row, {"hook_s_per_step": r["hook_s_per_step"], "checks": r["checks"]}, base_wall_ms))
    return rows


def format_table(result: Dict[str, Any]) -> str:
    """The rows as ``bench_plain_loop``'s table, then the check step's time beside the single-process one."""
    if result.get("control"):
        return ratio_table(result, hook_column="in step()") + "\n\n(A/A control: watcher.step never called)"
    c = result["check_cost"]
    return (ratio_table(result, hook_column="in step()") + "\n\n"
            "| check step (`watcher.step` on a check) | median ms |\n|---|---:|\n"
            f"| one process, same model unsharded (n={c['single_process_n']}) | {c['single_process_ms']:.2f} |\n"
            f"| FSDP2, 2 processes, rank 0 (n={c['fsdp2_n']}) | {c['fsdp2_rank0_ms']:.2f} |\n"
            f"| FSDP2, 2 processes, rank 1 (n={c['fsdp2_n']}) | {c['fsdp2_rank1_ms']:.2f} |\n"
            f"| the gather's part (rank 0 less one process) | {c['gather_ms']:.2f} |")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=20, help="rounds (one baseline and one watcher block each)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the single-process part")
    p.add_argument("--control", action="store_true",
                   help="A/A: the same launch with watcher.step never called (what the noise makes of nothing)")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args.rounds, args.batch_size, control=args.control)
    return report(result, "FSDP2 plain loop, 2 processes: overhead per optimizer step", format_table(result),
                  args.json)


if __name__ == "__main__":
    sys.exit(main())
