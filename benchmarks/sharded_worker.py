"""One rank of ``bench_sharded``: the plain loop's encoder under FSDP2, watcher blocks interleaved.

Started by :mod:`benchmarks.bench_sharded` (from the repository root)::

    python -m torch.distributed.run --nproc_per_node 2 -m benchmarks.sharded_worker OUT_DIR ROUNDS BATCH [control]

Every rank runs the same schedule ``W`` (warm-up) + ``ROUNDS`` x ``B W`` + ``B`` of 50-step
blocks, so the ranks switch the watcher on and off together (a rank calling ``watcher.step`` alone
would wait in the check's collective). Each rank writes ``OUT_DIR/rank<N>.json``: its block times
(CPU and wall, :class:`~benchmarks.common.StepClock`), the seconds inside ``watcher.step`` in the
timed watcher blocks, and the time of each check step's ``watcher.step``. ``control``: an A/A run,
the same schedule with ``watcher.step`` never called (what the method makes of no difference).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List

import torch
import torch.distributed as dist
import torch.nn.functional as F

from benchmarks.common import PERIOD, Encoder, StepClock, WatcherBlocks, cycled_data, quiet
from scalewatch.callbacks import ScaleWatcher
from scalewatch.monitor.sharded import make_shardable

VARIANT = "watcher_n50"


def build() -> Encoder:
    """The plain loop's encoder, seeded, its 0-dim scales made 1-element (FSDP2 refuses 0-dim parameters)."""
    torch.manual_seed(0)
    model = Encoder()
    make_shardable(model)
    return model


def run_loop(rounds: int, batch_size: int, root: str, rank: int, control: bool = False) -> Dict[str, Any]:
    """The FSDP2 loop on this rank: per-block times and the watcher's own time."""
    from torch.distributed.fsdp import fully_shard

    plan = WatcherBlocks(rounds, VARIANT)
    model = build()
    for layer in model.layers:
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    watcher = ScaleWatcher(model, log_dir=root, every_n_steps=PERIOD, plot=False)
    clock = StepClock(warmup=PERIOD)
    device = torch.device("cpu")
    for step, (x, y) in enumerate(cycled_data(plan.steps, batch_size)):
        clock.tick(device)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if plan.calls(step):
            plan.step(watcher, step, call=not control)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    watcher.close()
    plan.check(watcher, called=not control)
    return {"rank": rank, "schedule": plan.schedule, "blocks": plan.blocks(clock),
            "hook_s_per_step": plan.hook_s_per_step(), "checks": watcher.checks, "check_step_s": plan.check_s,
            "names": [s.name for s in watcher.scales], "history": watcher.history is not None}


def main(argv: List[str]) -> int:
    out, rounds, batch_size, control = argv[0], int(argv[1]), int(argv[2]), argv[3:] == ["control"]
    quiet()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    result = run_loop(rounds, batch_size, os.path.join(out, "run"), rank, control)
    with open(os.path.join(out, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
