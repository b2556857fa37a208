"""Run by the HF DDP test under torchrun: 2 processes on CPU (gloo), one ScaleMonitorCallback each.

    python -m torch.distributed.run --nproc_per_node 2 hf_ddp_script.py OUTPUT_DIR [warn|stop]
"""
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))

from hf_models import hf_trainer  # noqa: E402
from scalewatch.callbacks.hf import ScaleMonitorCallback  # noqa: E402

if __name__ == "__main__":
    out, mode = sys.argv[1], sys.argv[2]
    callback = ScaleMonitorCallback(on_saturation=mode,
                                    alert_callback=lambda a: print(f"ALERT {a.kind} {a.step}", flush=True))
    trainer = hf_trainer(out, [callback], report_to=["tensorboard"], max_steps=40, per_device_train_batch_size=2)
    trainer.train()
    print(f"RANK {trainer.args.process_index} DONE global_step={trainer.state.global_step} "
          f"checks={callback.watcher.checks}", flush=True)
    # HF's Trainer (through accelerate) starts the process group and leaves it to the program to
    # end. Without this, a gloo worker thread can still hold the last collective's tensors when the
    # interpreter finalizes; dropping them then aborts the process ("terminate called without an
    # active exception", exit -6), at random, more often on a loaded machine. The program's duty,
    # as PyTorch documents for every distributed program, not the callback's.
    dist.destroy_process_group()
