"""LightningCLI entry point for the camera/LiDAR fusion example.

    python examples/train.py fit --config examples/configs/conservative.yaml
    python examples/train.py fit --config examples/configs/aggressive.yaml --model.bias_scale_lr 0.05
    python examples/train.py fit --config examples/configs/conservative.yaml \\
        --trainer.devices 2 --trainer.strategy ddp --trainer.accelerator cpu

Every argument of the model (``--model.*``), the data (``--data.*``), the
trainer (``--trainer.*``), its loggers and callbacks (ScaleMonitor among them)
can be set in a YAML config and overridden on the command line; ``--help``
lists them and ``--print_config`` shows the merged result. The data's
``num_positions`` and ``content_dim`` are linked to the model's; ``--num_threads``
sets torch's intra-op threads (default 1, see :data:`DEFAULT_NUM_THREADS`).
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

import torch
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

# The example's modules live next to this file; importable however it is started.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fusion_model import SensorFusionModel  # noqa: E402
from sensor_fusion_data import SensorFusionDataModule  # noqa: E402

#: A model this small is fastest on one thread: more intra-op threads only wait on
#: each other, and on a busy machine (or one DDP process per core) they slow
#: training down several times over.
DEFAULT_NUM_THREADS = 1


class FusionCLI(LightningCLI):
    """LightningCLI for :class:`SensorFusionModel` on :class:`SensorFusionDataModule`."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--num_threads", type=int, default=DEFAULT_NUM_THREADS,
                            help="torch intra-op threads per process; 0 keeps torch's default")
        parser.link_arguments("data.num_positions", "model.num_positions")
        parser.link_arguments("data.content_dim", "model.content_dim")

    def before_instantiate_classes(self) -> None:
        num_threads = self._get(self.config, "num_threads")
        if num_threads:
            torch.set_num_threads(num_threads)


def main(args: Optional[List[str]] = None, run: bool = True) -> FusionCLI:
    """Parse ``args`` (default: ``sys.argv[1:]``), build model, data and trainer, and run the subcommand."""
    return FusionCLI(SensorFusionModel, SensorFusionDataModule, args=args, run=run,
                     save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
