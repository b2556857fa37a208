"""ScaleMonitor under Lightning's FSDPStrategy / ModelParallelStrategy / DeepSpeedStrategy (they need CUDA).

    python tests/lightning_sharded_script.py OUT_DIR fsdp|model_parallel|deepspeed [cuda|cpu]

Every visible GPU is a process; tests/sharded_script.py's model (made shardable) in a LightningModule.
Under ModelParallelStrategy the module shards itself in ``configure_model`` (FSDP2's ``fully_shard``
over the strategy's data-parallel mesh), as that strategy asks.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sharded_script as S  # noqa: E402

import lightning.pytorch as L  # noqa: E402
from scalewatch.callbacks import ScaleMonitor  # noqa: E402
from scalewatch.monitor.sharded import make_shardable  # noqa: E402


class Module(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = S.build()
        make_shardable(self.net, params=["logit_scale"])

    def training_step(self, batch, batch_idx):
        return self.net(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=S.LR)

    def train_dataloader(self):
        x = S.data().reshape(-1, 8)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=S.BATCH)


class ParallelModule(Module):
    """For ModelParallelStrategy: the module applies its own parallelism (FSDP2 over the data-parallel mesh)."""

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        fully_shard(self.net, mesh=self.device_mesh["data_parallel"])


def main(out_dir: str, strategy: str, accelerator: str = "cuda") -> None:
    module = Module()
    devices = torch.cuda.device_count() if accelerator == "cuda" else 2
    if strategy == "model_parallel":
        from lightning.pytorch.strategies import ModelParallelStrategy

        chosen = ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1)
        module = ParallelModule()
    elif strategy == "deepspeed":
        from lightning.pytorch.strategies import DeepSpeedStrategy

        chosen = DeepSpeedStrategy(stage=3, config={"zero_optimization": {"stage": 3},
                                                    "zero_allow_untested_optimizer": True,
                                                    "train_micro_batch_size_per_gpu": S.BATCH})
    else:
        from lightning.pytorch.strategies import FSDPStrategy

        chosen = FSDPStrategy(use_orig_params=True)
    trainer = L.Trainer(accelerator=accelerator, devices=devices, strategy=chosen, max_steps=8,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=out_dir,
                        callbacks=[ScaleMonitor(every_n_steps=2, params={"net.logit_scale": S.PARAMS["logit_scale"]},
                                                plot=False)])
    trainer.fit(module)


if __name__ == "__main__":
    main(*sys.argv[1:4])
