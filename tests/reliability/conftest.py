"""Fixtures of the reliability suite (see support.py for the models and readers)."""
from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator

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


def _killed_run(root: Path) -> KilledRun:
    kill_step = random.Random(support.SEED).randint(*support.KILL_STEP_RANGE)
    proc = support.run_support(["kill-run", str(root), "--kill-step", str(kill_step)])
    log_dir = root / "tb" / "version_0"
    history = log_dir / support.HISTORY_FILENAME
    assert history.exists(), proc.stderr[-3000:]
    return KilledRun(root=root, log_dir=log_dir, kill_step=kill_step, history_bytes=history.read_bytes(),
                     last_ckpt=root / "ckpt" / "last.ckpt", returncode=proc.returncode, stderr=proc.stderr)


@pytest.fixture(scope="session")
def killed_run(tmp_path_factory) -> Iterator[KilledRun]:
    """A training subprocess SIGKILLed at a seeded random step, checkpointing every k steps.

    Its directory is shared by the whole session, so no test may write into it: tests
    read it (the snapshot ``history_bytes``, ``last_ckpt``) and work on a copy of what
    they change (``killed_copy``), or on a killed run of their own (``own_killed_run``).
    """
    run = _killed_run(tmp_path_factory.mktemp("killed_run"))
    before = _digest(run.root)
    yield run
    after = _digest(run.root)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"a test wrote into the shared killed run {run.root}: {changed}"


def _digest(root: Path) -> Dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def own_killed_run(tmp_path) -> KilledRun:
    """The same killed run (same seed, same kill step), in this test's own directory: for
    tests that resume into it. A copy of ``killed_run`` would not do: its checkpoint names
    the shared directory's history, so a resume would read that one."""
    return _killed_run(tmp_path / "killed_run")


@pytest.fixture
def killed_copy(killed_run, tmp_path) -> Path:
    """A private copy of the killed run's history (as the kill left it) in a fresh run dir."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / support.HISTORY_FILENAME).write_bytes(killed_run.history_bytes)
    return run_dir

