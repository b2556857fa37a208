"""Run by the HF DDP test under torchrun: 2 processes on CPU (gloo), one ScaleMonitorCallback each.

    python -m torch.distributed.run --nproc_per_node 2 hf_ddp_script.py OUTPUT_DIR [warn|stop]
"""
import sys
from pathlib import Path

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
