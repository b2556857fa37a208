"""Attention statistics under DDP: each rank its part of a global batch, the record the global batch's.

Launched by tests/test_attention_watch.py::test_ddp_records_the_global_batch:

    python -m torch.distributed.run --nproc_per_node 2 tests/attention_ddp_script.py LOG_DIR OUT_DIR

Rank 0 takes the first 5 samples of each step's global batch of 7, rank 1 the last 2 (unequal
parts: the means must be weighted by rows). The model (``build``) has a padding-masked attention
and a causal grouped-query one; it runs without and with a watched bias scale (``with_scale``):
alone, the attention sums are reduced in a collective of their own; with a scale they ride in the
scales' collective. Either way a check is one ``all_reduce``, counted around each ``watcher.step``,
once the ranks have agreed on their modules (at the first check: an ``all_gather_object`` and a
second ``all_reduce``). A third run (``uneven``) has a module that runs on rank 1 only, from step 1:
the ranks agree on it at that check, and its record is rank 1's samples'.
No optimizer step: the weights stay those every rank and the single-process reference start from.
The records go to ``LOG_DIR/{plain,scale}``; each rank writes its last readings and the collectives
of each step to ``OUT_DIR/rank<N>.json``.
"""
import json
import os
import sys
from typing import Any, Dict, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from scalewatch.callbacks import ScaleWatcher
from scalewatch.monitor import AttentionBiasGenerator

STEPS, GLOBAL_BATCH, SPLIT = 3, 7, 5


class Padded(nn.Module):
    """4 heads, keys masked by a per-sample padding mask (boolean ``attn_mask``)."""

    def __init__(self) -> None:
        super().__init__()
        self.qk = nn.Linear(8, 2 * 4 * 4)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k = self.qk(x).view(b, n, 2, 4, 4).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, k, attn_mask=keep[:, None, None, :])


class Causal(nn.Module):
    """Grouped-query attention: 4 query heads, 2 key heads, causal."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k = nn.Linear(8, 4 * 2), nn.Linear(8, 2 * 2)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q = self.q(x).view(b, n, 4, 2).transpose(1, 2)
        k = self.k(x).view(b, n, 2, 2).transpose(1, 2)
        return F.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True)


class Extra(nn.Module):
    """2 heads, no mask: the module that runs on one rank only in the ``uneven`` run."""

    def __init__(self) -> None:
        super().__init__()
        self.qk = nn.Linear(8, 2 * 2 * 4)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k = self.qk(x).view(b, n, 2, 2, 4).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, k)


class Model(nn.Module):
    def __init__(self, with_scale: bool, with_extra: bool = False) -> None:
        super().__init__()
        self.padded, self.causal = Padded(), Causal()
        self.extra = Extra() if with_extra else None
        self.bias = AttentionBiasGenerator(bias_scale=2.0) if with_scale else None

    def forward(self, x: Tensor, keep: Tensor, extra: bool = False) -> Tensor:
        out = self.padded(x, keep).sum() + self.causal(x).sum()
        if extra and self.extra is not None:
            out = out + self.extra(x).sum()
        if self.bias is not None:
            out = out + self.bias(torch.tanh(x @ x.transpose(-1, -2))).sum()
        return out


def build(with_scale: bool = False, with_extra: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return Model(with_scale, with_extra)


#: the runs: (name, a watched scale?, extra module on rank 1 only from step 1?)
RUNS = (("plain", False, False), ("scale", True, False), ("uneven", True, True))


def batch(step: int) -> Tuple[Tensor, Tensor]:
    """The global batch of ``step``: tokens ``[7, 6, 8]`` and the keys each sample keeps."""
    g = torch.Generator().manual_seed(step)
    x = torch.randn(GLOBAL_BATCH, 6, 8, generator=g) * 3
    lengths = torch.randint(1, 7, (GLOBAL_BATCH,), generator=g)
    return x, torch.arange(6) < lengths[:, None]


def run(log_dir: str, rank: int, with_scale: bool, uneven: bool) -> Dict[str, Any]:
    model = build(with_scale, uneven)
    ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=uneven)
    watcher = ScaleWatcher(model, log_dir=log_dir, every_n_steps=1, attention=True, plot=False)
    watcher.start()
    real, counted = dist.all_reduce, []

    def all_reduce(*args: Any, **kwargs: Any) -> Any:
        counted[-1] += 1
        return real(*args, **kwargs)

    for step in range(STEPS):
        x, keep = batch(step)
        part = slice(0, SPLIT) if rank == 0 else slice(SPLIT, GLOBAL_BATCH)
        ddp(x[part], keep[part], uneven and rank == 1 and step >= 1).backward()
        counted.append(0)
        dist.all_reduce = all_reduce  # the watcher's collectives (DDP's own go through its C++ reducer)
        try:
            watcher.step(step)
        finally:
            dist.all_reduce = real
    watcher.close()
    return {"last": {r.name: r.scale for r in watcher.last_readings}, "collectives": counted}


def main(log_dir: str, out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    result = {name: run(os.path.join(log_dir, name), rank, with_scale, uneven) for name, with_scale, uneven in RUNS}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
