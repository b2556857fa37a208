"""Alerts reach every sink once per crossing, and a second crossing is not swallowed:
Python logging, the user callable, the history, and W&B (offline), which throttles alerts
of one title for `wait_duration`."""
from __future__ import annotations

import logging

import pytest
import torch
from pytorch_lightning import LightningModule
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from torch import nn

from scalewatch.callbacks import ScaleMonitor
from scalewatch.monitor import HISTORY_FILENAME

from .support import alerts_in, loader, make_trainer, read_jsonl, read_wandb

# gain read at step s = 3.0 + 0.5 * sum(PUSHES[:s]): 3, 3.5, 4, 4.5, 5 | 4.5, 4, 3.5 | 4, 4.5, 5
PUSHES = [1, 1, 1, 1, -1, -1, -1, 1, 1, 1, -1]


class SawModel(LightningModule):
    """A bare ``gain`` parameter walked up and down by a fixed schedule (loss = -push * gain)."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(3.0))
        self.proj = nn.Linear(8, 8)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return -PUSHES[self.global_step] * self.gain + 0.0 * self.proj(x).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)

    def train_dataloader(self):
        return loader()


@pytest.fixture(scope="module")
def saw_run(tmp_path_factory):
    import wandb

    root = tmp_path_factory.mktemp("saw_run")
    fired = []
    messages = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = lambda rec: messages.append(rec.getMessage())  # type: ignore[method-assign]
    logging.getLogger("scalewatch").addHandler(handler)
    monitor = ScaleMonitor(every_n_steps=1, params={"gain": (0.0, 5.0)}, alert_callback=fired.append)
    trainer = make_trainer(root, max_steps=len(PUSHES), callbacks=[monitor],
                           logger=[CSVLogger(str(root), name="csv"),
                                   WandbLogger(save_dir=str(root), offline=True, project="scalewatch-reliability")])
    try:
        trainer.fit(SawModel())
    finally:
        logging.getLogger("scalewatch").removeHandler(handler)
        wandb.finish()
    return root, trainer, fired, messages


def test_history_has_one_alert_per_crossing(saw_run):
    root, trainer, _, _ = saw_run
    records = read_jsonl(f"{trainer.log_dir}/{HISTORY_FILENAME}")
    assert [r["raw"] for r in records] == [3, 3.5, 4, 4.5, 5, 4.5, 4, 3.5, 4, 4.5, 5]
    assert alerts_in(records) == [(4, "near_upper"), (10, "near_upper")]


def test_user_callable_and_python_logging_get_each_crossing(saw_run):
    _, _, fired, messages = saw_run
    assert [(a.kind, a.name, a.step) for a in fired] == [("near_upper", "gain", 4), ("near_upper", "gain", 10)]
    near = [m for m in messages if "near upper bound" in m]
    assert len(near) == 2 and "gain at step 4" in near[0] and "gain at step 10" in near[1], messages


def test_wandb_gets_each_crossing_unthrottled(saw_run):
    root, _, _, messages = saw_run
    assert not [m for m in messages if "W&B" in m], messages  # the sink sent every alert without an error
    _, alerts = read_wandb(root)  # waits for W&B's service to have written the whole run
    assert [a.title for a in alerts] == ["scalewatch near_upper: gain"] * 2
    assert "gain at step 4" in alerts[0].text and "gain at step 10" in alerts[1].text
    # W&B drops an alert whose title repeats within wait_duration (milliseconds in the record):
    # a second crossing seconds after the first must still get through.
    assert all(a.wait_duration < 1000 for a in alerts), [a.wait_duration for a in alerts]
