"""Two-process mmengine run on the CPU (gloo), launched by tests/test_mmengine_hook.py through torchrun.

    python -m torch.distributed.run --nproc_per_node 2 tests/mmengine_ddp_script.py WORK_DIR

mmengine 0.10.7's ``launcher="pytorch"`` assumes a GPU in two places, so this
script does what a CPU run needs instead: it starts the gloo process group itself
(mmengine's ``init_dist`` calls ``torch.cuda.set_device(LOCAL_RANK)`` unconditionally,
which fails with "Found no NVIDIA driver"; it skips ``init_dist`` when a group
exists) and gives ``model_wrapper_cfg`` with ``device_ids=None`` (mmengine passes
``device_ids=[LOCAL_RANK]``, which DistributedDataParallel rejects for a CPU module).
"""
import os
import sys

import torch.distributed as dist
from mmengine.config import Config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mmengine_models import make_runner  # noqa: E402
from scalewatch.callbacks.mmengine import ScaleMonitorHook  # noqa: E402


def main(work_dir: str) -> None:
    dist.init_process_group("gloo")
    runner = make_runner(work_dir, max_iters=40, lr=0.3, name="ddp", launcher="pytorch",
                         hook=dict(interval=5, on_saturation="stop", plot=False),
                         cfg=Config(dict(model_wrapper_cfg=dict(type="MMDistributedDataParallel", device_ids=None))))
    runner.train()
    hook = next(h for h in runner.hooks if isinstance(h, ScaleMonitorHook))
    print(f"DONE iter={runner.iter} checks={hook.watcher.checks}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
