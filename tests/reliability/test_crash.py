"""Crashes: a SIGKILLed run leaves a history whose every line parses and holds every reading
taken before the kill; a torn last line is skipped by readers and cut by the next writer; an
exception inside training writes the plot before it propagates."""
from __future__ import annotations

import json
import os
import signal

import pytest
from pytorch_lightning.callbacks import Callback

from scalewatch.callbacks import PLOT_FILENAME, ScaleMonitor
from scalewatch.monitor import HISTORY_FILENAME, HistoryWriter, ReadProblems, iter_history

from . import support
from .support import GEN, RaisingModel, alerts_in, assert_png, make_trainer, read_jsonl


def _records(raw: bytes):
    text = raw.decode("utf-8")
    assert text.endswith("\n"), "the killed run left a torn line behind"
    return [json.loads(line) for line in text.splitlines()]


def test_the_run_was_really_killed(killed_run):
    assert killed_run.returncode == -signal.SIGKILL, killed_run.stderr[-3000:]
    assert support.KILL_STEP_RANGE[0] <= killed_run.kill_step <= support.KILL_STEP_RANGE[1]
    # no clean-up ran: nothing wrote the end-of-fit plot
    assert not (killed_run.log_dir / PLOT_FILENAME).exists()


def test_every_line_parses_and_every_reading_is_there(killed_run):
    records = _records(killed_run.history_bytes)
    n = support.KILL_EVERY_N
    expected_steps = [s for s in range(killed_run.kill_step + 1) if (s + 1) % n == 0]
    assert [r["step"] for r in records] == expected_steps
    for r in records:
        assert {"step", "name", "scale", "raw", "grad", "min", "max", "alerts"} <= set(r)
        assert r["name"] == GEN and (r["min"], r["max"]) == (0.5, 5.0)


def test_killed_history_matches_an_uninterrupted_run(killed_run, tmp_path):
    """The same seeded run, not killed, stopped after the kill step: the killed process had
    flushed exactly these records, value for value."""
    trainer, _ = support.kill_run_trainer(tmp_path, max_steps=killed_run.kill_step + 1, ckpt=False)
    trainer.fit(support.kill_run_model())
    reference = read_jsonl(os.path.join(trainer.log_dir, HISTORY_FILENAME))
    assert _records(killed_run.history_bytes) == reference
    assert alerts_in(reference) == [(3, "near_upper"), (7, "pinned")]


def test_readers_skip_a_torn_last_line(killed_copy):
    path = killed_copy / HISTORY_FILENAME
    complete = _records(path.read_bytes())
    with open(path, "ab") as f:
        f.write(b'{"step": 999, "name": "head.attention_bias_generator", "scale": 4.9')   # killed mid-write
    problems = ReadProblems()
    assert list(iter_history(str(path), problems)) == complete
    assert problems.torn_last_line and problems.bad_count == 0
    assert "incomplete" in problems.describe()


def test_a_writer_cuts_the_torn_line_before_appending(killed_copy):
    path = killed_copy / HISTORY_FILENAME
    complete = _records(path.read_bytes())
    with open(path, "ab") as f:
        f.write(b'{"step": 999, "na')
    writer = HistoryWriter(str(path))
    writer.append([{"step": 1001, "name": GEN, "scale": 5.0, "raw": 5.5, "grad": 0.0, "min": 0.5, "max": 5.0}])
    writer.close()
    after = read_jsonl(path)                       # strict: every line complete and valid
    assert after[:-1] == complete and after[-1]["step"] == 1001


class PlotWitness(Callback):
    """Runs after ScaleMonitor's on_exception: sees whether the PNG is already there."""

    def __init__(self):
        self.seen = None

    def on_exception(self, trainer, pl_module, exception):
        self.seen = (os.path.exists(os.path.join(trainer.log_dir, PLOT_FILENAME)), repr(exception))


def test_an_exception_writes_the_plot_before_it_propagates(tmp_path):
    witness = PlotWitness()
    trainer = make_trainer(tmp_path, max_steps=20, callbacks=[ScaleMonitor(every_n_steps=2), witness])
    with pytest.raises(RuntimeError, match="^boom at step 5$"):
        trainer.fit(RaisingModel(raise_step=5, lr=0.05))
    assert witness.seen == (True, "RuntimeError('boom at step 5')")
    assert trainer.global_step == 5
    assert_png(os.path.join(trainer.log_dir, PLOT_FILENAME))
    assert [r["step"] for r in read_jsonl(os.path.join(trainer.log_dir, HISTORY_FILENAME))] == [1, 3]
