"""Run by the DDP tests as a subprocess: 2-process DDP on CPU (gloo).

    python ddp_monitor_script.py ROOT [warn|stop] [pytorch_lightning|lightning.pytorch]
"""
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from models import modules_for  # noqa: E402
from scalewatch.callbacks import ScaleMonitor  # noqa: E402

if __name__ == "__main__":
    root = sys.argv[1]
    stop = len(sys.argv) > 2 and sys.argv[2] == "stop"
    package = sys.argv[3] if len(sys.argv) > 3 else "pytorch_lightning"
    pl = importlib.import_module(package)
    CSVLogger = importlib.import_module(f"{package}.loggers").CSVLogger
    DriftModel, _ = modules_for(package)
    monitor = ScaleMonitor(every_n_steps=2, on_saturation="stop" if stop else "warn",
                           alert_callback=lambda a: print(f"ALERT {a.kind} {a.name} {a.step}", flush=True))
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=40, default_root_dir=root,
                         logger=CSVLogger(root, name="csv"), callbacks=[monitor], enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=2)
    trainer.fit(DriftModel(lr=0.5))
    print(f"RANK {trainer.global_rank} DONE global_step={trainer.global_step} package={type(trainer).__module__}",
          flush=True)
