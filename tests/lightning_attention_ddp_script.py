"""Lightning's DDP with ``ScaleMonitor(attention=True)``: what the ranks record is the global batch's.

Run by tests/test_attention_watch.py::test_lightning_ddp_records_the_global_batch:

    python tests/lightning_attention_ddp_script.py ROOT DEVICES

``DEVICES=2``: ``Trainer(strategy="ddp", devices=2)`` on CPU (gloo), 3 samples a rank a step from a
12-sample dataset (a DistributedSampler without shuffling: rank 0 the even samples, rank 1 the
odd); ``DEVICES=1``: one process, 6 samples a step: the same global batches. The loss is a
per-sample mean, so DDP's averaged gradient is the one process's and both train alike. The model
(tests/attention_ddp_script.py, with a watched bias scale) has a padding-masked and a causal
grouped-query attention. Each rank writes ``ROOT/rank<N>.json``: its last readings, the
``all_reduce`` calls counted around each of the monitor's hooks, and rank 0 its history's path.
"""
import json
import os
import sys
from pathlib import Path
from typing import Any, List

sys.path.insert(0, str(Path(__file__).parent))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset  # noqa: E402

from attention_ddp_script import build  # noqa: E402
from scalewatch.callbacks import ScaleMonitor  # noqa: E402

SAMPLES, STEPS = 12, 2


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, 6, 8, generator=g) * 3
    lengths = torch.randint(1, 7, (SAMPLES,), generator=g)
    return TensorDataset(x, torch.arange(6) < lengths[:, None])


class Module(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = build(with_scale=True)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, keep = batch
        return self.model(x, keep) / x.shape[0]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self) -> DataLoader:
        # Lightning's own distributed sampler shuffles; this one keeps each step's global batch the
        # one process's
        data, world = dataset(), self.trainer.world_size
        sampler = DistributedSampler(data, shuffle=False) if world > 1 else None
        return DataLoader(data, batch_size=SAMPLES // STEPS // world, sampler=sampler)


class CountingMonitor(ScaleMonitor):
    """Counts the ``all_reduce`` calls the monitor makes in each hook (Lightning's own go elsewhere)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.collectives: List[int] = []

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        real, count = dist.all_reduce, [0]

        def all_reduce(*args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            return real(*args, **kwargs)

        dist.all_reduce = all_reduce
        try:
            super().on_before_optimizer_step(trainer, pl_module, optimizer)
        finally:
            dist.all_reduce = real
        self.collectives.append(count[0])


def main(root: str, devices: int) -> None:
    monitor = CountingMonitor(every_n_steps=1, attention=True, plot=False)
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                         max_steps=STEPS, default_root_dir=root, logger=False, callbacks=[monitor],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         use_distributed_sampler=False)
    trainer.fit(Module())
    result = {"last": {r.name: r.scale for r in monitor.watcher.last_readings},
              "collectives": monitor.collectives, "history": str(monitor.history_path)}
    with open(os.path.join(root, f"rank{trainer.global_rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
