"""A plain PyTorch DDP loop (gloo, CPU) watched by ScaleWatcher with its own rank detection.

Launched by tests/test_paths_distributed.py:

    python -m torch.distributed.run --nproc_per_node 2 tests/plain_ddp_script.py LOG_DIR OUT_DIR NOTIFY_URL

No ``is_global_zero`` is given: the watcher finds rank 0 through ``torch.distributed``.
Every rank trains on its own data (DDP all-reduces the gradients), watches the same
log directory, sends to the same notification URL, and stops when ``should_stop``
turns on (``on_saturation="stop"``). Each rank writes what it did to ``OUT_DIR/rank<N>.json``
(the processes share one stdout, where lines can interleave).
"""
import json
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from scalewatch.callbacks import ScaleWatcher
from scalewatch.monitor import AttentionBiasGenerator

MAX_STEPS = 60


class Drift(nn.Module):
    """tests/models.py's DriftModel as a plain module: the loss pushes the scale into its upper bound."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Module()
        self.head.attention_bias_generator = AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0)
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.proj(x)).unsqueeze(-1).expand(-1, -1, 8)
        return -self.head.attention_bias_generator(weights).float().mean() + 0.01 * self.proj.weight.pow(2).sum()


def main(log_dir: str, out_dir: str, notify: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # the same initial weights on every rank (DDP broadcasts them anyway)
    model = Drift()
    ddp = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.3)
    data = torch.randn(MAX_STEPS, 4, 8, generator=torch.Generator().manual_seed(100 + rank))  # each rank its own
    fired, called = [], []
    watcher = ScaleWatcher(model, log_dir=log_dir, every_n_steps=2, on_saturation="stop", notify=notify,
                           alert_callback=lambda a: called.append((a.kind, a.step)))
    step = 0
    with watcher:
        for step in range(MAX_STEPS):
            ddp(data[step]).backward()  # DDP all-reduces: every rank reads the same gradient
            fired += watcher.step(step)
            optimizer.step()
            optimizer.zero_grad()
            if watcher.should_stop:
                break
    last = [dict(name=r.name, raw=r.raw, grad=r.grad) for r in watcher.last_readings]
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(dict(rank=rank, stopped_at=step, checks=watcher.checks, alerts=[(a.kind, a.step) for a in fired],
                       callback=called, is_global_zero=watcher.is_global_zero,
                       history=watcher.history is not None, last=last), f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
