import os
import sys
from pathlib import Path

import pytest

# W&B never leaves this machine in tests.
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_CODE", "true")
os.environ.setdefault("WANDB_CONSOLE", "off")

sys.path.insert(0, str(Path(__file__).parent))  # tests/models.py and helpers


@pytest.fixture(autouse=True)
def _quiet_lightning_tips(monkeypatch):
    monkeypatch.setenv("PL_DISABLE_FORK", "1")
