"""Train the camera/LiDAR fusion example with mmengine's Runner, watched by ScaleMonitorHook.

    python examples/mmengine/train.py examples/mmengine/configs/conservative.py
    python examples/mmengine/train.py examples/mmengine/configs/aggressive.py --work-dir work_dirs/aggressive
    python examples/mmengine/train.py examples/mmengine/configs/fast-scale-lr.py      # near_upper, then pinned
    python examples/mmengine/train.py examples/mmengine/configs/conservative.py \\
        --cfg-options train_cfg.max_iters=640 custom_hooks.0.warn_fraction=0.8
    python examples/mmengine/train.py examples/mmengine/configs/conservative.py --resume  # latest checkpoint

Each run writes to ``WORK_DIR/<timestamp>/``: the ``.log`` file (its LoggerHook
lines carry ``scalewatch/NAME/scale`` ...), ``scalewatch_history.jsonl``,
``scale_history.png`` and ``vis_data/`` (``scalars.json``, TensorBoard events).
``WORK_DIR`` defaults to ``work_dirs/<config name>``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, List, Optional

import torch
from mmengine.config import Config, DictAction
from mmengine.runner import Runner

HERE = os.path.dirname(os.path.abspath(__file__))
# fusion_modules (the configs' custom_imports) lives here, the network and data it uses one level up.
for path in (os.path.dirname(HERE), HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

#: A model this small is fastest on one thread (see examples/train.py).
DEFAULT_NUM_THREADS = 1


def main(argv: Optional[List[str]] = None) -> Any:
    """Build the Runner from a config (plus ``--cfg-options``) and train; returns the Runner."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="a config file, e.g. examples/mmengine/configs/conservative.py")
    p.add_argument("--work-dir", help="where the run's folder goes (default: work_dirs/<config name>)")
    p.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in the work dir")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                   help="override config values: key=value, e.g. train_cfg.max_iters=640")
    p.add_argument("--num-threads", type=int, default=DEFAULT_NUM_THREADS,
                   help="torch intra-op threads; 0 keeps torch's default")
    args = p.parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    name = os.path.splitext(os.path.basename(args.config))[0]
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or os.path.join("work_dirs", name)
    cfg.resume = args.resume or cfg.get("resume", False)
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


if __name__ == "__main__":
    main()
