"""The smallest run: a bias generator whose scale climbs to its bound, watched by ScaleMonitor."""
import os

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from scalewatch.callbacks import ScaleMonitor
from scalewatch.monitor import AttentionBiasGenerator


class TinyAttention(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.router = nn.Linear(16, 16)
        self.attention_bias_generator = AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        weights = torch.tanh(self.router(x)).unsqueeze(-2).expand(-1, 16, -1)  # [B, Q, K] in [-1, 1]
        bias = self.attention_bias_generator(weights)
        # reward a sharp bias: drives the scale up into its bound
        loss = -(bias.float() * weights.sign()).mean()
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)


if __name__ == "__main__":
    root = os.environ.get("SCALEWATCH_DEMO_DIR", "demo_runs/quickstart")
    data = DataLoader(TensorDataset(torch.randn(256, 16, generator=torch.Generator().manual_seed(0))), batch_size=16)
    trainer = pl.Trainer(max_steps=200, log_every_n_steps=10, default_root_dir=root,
                         logger=[TensorBoardLogger(root, name="tb"), CSVLogger(root, name="csv")],
                         callbacks=[ScaleMonitor(every_n_steps=10)], enable_model_summary=False)
    trainer.fit(TinyAttention(), data)
    print(f"\nhistory: {os.path.join(trainer.log_dir, 'scalewatch_history.jsonl')}")
    print(f"plot:    {os.path.join(trainer.log_dir, 'scale_history.png')}")
    print(f"open:    tensorboard --logdir {root}")
