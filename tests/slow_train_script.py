"""Trains slowly so a test can watch TensorBoard fill in live. Args: ROOT MAX_STEPS."""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytorch_lightning as pl  # noqa: E402
from pytorch_lightning.loggers import TensorBoardLogger  # noqa: E402

from models import DriftModel  # noqa: E402
from scalewatch.callbacks import ScaleMonitor  # noqa: E402


class Slow(pl.Callback):
    def on_train_batch_end(self, *args, **kwargs):
        time.sleep(0.05)


if __name__ == "__main__":
    root, steps = sys.argv[1], int(sys.argv[2])
    trainer = pl.Trainer(max_steps=steps, logger=TensorBoardLogger(root, name="tb"), log_every_n_steps=5,
                         callbacks=[ScaleMonitor(every_n_steps=5), Slow()], enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    print("TRAINING", flush=True)
    trainer.fit(DriftModel(lr=0.05))
