"""Fixtures of the reliability suite (see support.py for the models and readers)."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_MODE", "offline")

from . import support  # noqa: E402  (puts tests/ on sys.path for `models`)


@dataclass
class KilledRun:
    root: Path
    log_dir: Path            # where the history was written (TensorBoard's version_0)
    kill_step: int
    history_bytes: bytes     # the history file as the killed process left it
    last_ckpt: Path
    returncode: int
    stderr: str


@pytest.fixture(scope="session")
def killed_run(tmp_path_factory) -> KilledRun:
    """A training subprocess SIGKILLed at a seeded random step, checkpointing every k steps.

    Its directory is shared: the crash tests read the snapshot ``history_bytes``; the
    resume tests resume from ``last_ckpt`` (and may change the directory).
    """
    root = tmp_path_factory.mktemp("killed_run")
    kill_step = random.Random(support.SEED).randint(*support.KILL_STEP_RANGE)
    proc = support.run_support(["kill-run", str(root), "--kill-step", str(kill_step)])
    log_dir = root / "tb" / "version_0"
    history = log_dir / support.HISTORY_FILENAME
    assert history.exists(), proc.stderr[-3000:]
    return KilledRun(root=root, log_dir=log_dir, kill_step=kill_step, history_bytes=history.read_bytes(),
                     last_ckpt=root / "ckpt" / "last.ckpt", returncode=proc.returncode, stderr=proc.stderr)


@pytest.fixture
def killed_copy(killed_run, tmp_path) -> Path:
    """A private copy of the killed run's history (as the kill left it) in a fresh run dir."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / support.HISTORY_FILENAME).write_bytes(killed_run.history_bytes)
    return run_dir

