"""Resume after a kill: one continuous record, no step twice, no alert twice for one crossing,
whether the resumed run logs into the same directory or a new one."""
from __future__ import annotations

import os
import signal
from collections import Counter

import pytest
import torch

from scalewatch.callbacks import PLOT_FILENAME, ScaleMonitor
from scalewatch.monitor import HISTORY_FILENAME

from . import support
from .support import alerts_in, assert_png, make_trainer, read_jsonl

N = support.KILL_EVERY_N
ALL_STEPS = [s for s in range(support.RESUME_MAX_STEPS) if (s + 1) % N == 0]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The same seeded run, never killed, to the same end."""
    root = tmp_path_factory.mktemp("uninterrupted")
    trainer, _ = support.kill_run_trainer(root, max_steps=support.RESUME_MAX_STEPS, ckpt=False)
    trainer.fit(support.kill_run_model())
    return read_jsonl(os.path.join(trainer.log_dir, HISTORY_FILENAME))


def _ckpt_step(path) -> int:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["global_step"]


def _resume(ckpt, root, tb_version):
    alerts = []
    monitor = ScaleMonitor(every_n_steps=N, alert_callback=alerts.append)
    trainer, _ = support.kill_run_trainer(root, max_steps=support.RESUME_MAX_STEPS, monitor=monitor,
                                          tb_version=tb_version, ckpt=False)
    trainer.fit(support.kill_run_model(), ckpt_path=str(ckpt))
    assert trainer.global_step == support.RESUME_MAX_STEPS
    return trainer, alerts


def _check_continuous(records, uninterrupted):
    steps = [r["step"] for r in records]
    assert steps == ALL_STEPS, steps                          # continuous, in order
    assert not [s for s, c in Counter(steps).items() if c > 1]  # no duplicate steps
    # the same record an uninterrupted run writes (the scale is pinned by then, so data order
    # after the resume does not change it)
    assert [(r["step"], r["name"], r["alerts"]) for r in records] == \
           [(r["step"], r["name"], r["alerts"]) for r in uninterrupted]
    assert [r["raw"] for r in records] == pytest.approx([r["raw"] for r in uninterrupted])
    # each alert once: the crossings happened before the checkpoint and never cleared
    assert alerts_in(records) == [(3, "near_upper"), (7, "pinned")]


def test_checkpoint_is_before_the_kill(killed_run):
    step = _ckpt_step(killed_run.last_ckpt)
    assert step == killed_run.kill_step // support.KILL_CKPT_EVERY * support.KILL_CKPT_EVERY
    assert step < killed_run.kill_step                         # readings after it were taken, then lost


def test_resume_in_the_same_directory(own_killed_run, uninterrupted):
    run = own_killed_run  # resumed into, so not the session's shared killed run
    assert run.returncode == -signal.SIGKILL, run.stderr[-3000:]
    history = run.log_dir / HISTORY_FILENAME
    with open(history, "ab") as f:                              # as if killed in the middle of a write
        f.write(b'{"step": 23, "name": "head.attention_bias_gen')
    trainer, alerts = _resume(run.last_ckpt, run.root, tb_version=0)
    assert trainer.log_dir == str(run.log_dir)
    assert [a.kind for a in alerts] == []                       # nothing fired again
    _check_continuous(read_jsonl(history), uninterrupted)
    assert_png(run.log_dir / PLOT_FILENAME)


def test_resume_into_a_new_directory(killed_run, uninterrupted, tmp_path):
    trainer, alerts = _resume(killed_run.last_ckpt, tmp_path, tb_version=None)
    new_dir = tmp_path / "tb" / "version_0"
    assert trainer.log_dir == str(new_dir)
    assert [a.kind for a in alerts] == []
    records = read_jsonl(new_dir / HISTORY_FILENAME)
    _check_continuous(records, uninterrupted)
    # it starts with the earlier readings, value for value, up to the checkpoint
    ckpt_step = _ckpt_step(killed_run.last_ckpt)
    earlier = [r for r in uninterrupted if r["step"] < ckpt_step]
    assert records[:len(earlier)] == earlier
    assert_png(new_dir / PLOT_FILENAME)


def test_a_fresh_run_does_not_append_to_an_old_history(tmp_path):
    """logger=False puts every run's history into default_root_dir: a second, fresh run there
    must not glue its steps onto the first run's (steps would repeat); the first is kept aside."""
    for lr in (0.05, 2.0):
        trainer = make_trainer(tmp_path, max_steps=6, logger=False, callbacks=[ScaleMonitor(every_n_steps=2)])
        trainer.fit(support.DriftModel(lr=lr))
    second = read_jsonl(tmp_path / HISTORY_FILENAME)
    assert [r["step"] for r in second] == [1, 3, 5]
    assert alerts_in(second) == [(3, "near_upper")]
    first = read_jsonl(tmp_path / "scalewatch_history.previous-1.jsonl")
    assert [r["step"] for r in first] == [1, 3, 5] and alerts_in(first) == []


def test_a_second_fit_of_the_same_trainer_continues_the_record(tmp_path):
    """fit() again on the same trainer (max_steps raised) continues from global_step 6: the
    directory's record is the one continuous 1, 3, ..., 9, not split at the second fit."""
    monitor = ScaleMonitor(every_n_steps=2)
    trainer = make_trainer(tmp_path, max_steps=6, logger=False, callbacks=[monitor])
    model = support.DriftModel(lr=0.05)
    trainer.fit(model)
    trainer.fit_loop.epoch_loop.max_steps = 10
    trainer.fit(model)
    assert trainer.global_step == 10
    steps = [r["step"] for r in read_jsonl(tmp_path / HISTORY_FILENAME)]
    assert steps == [1, 3, 5, 7, 9], (steps, sorted(p.name for p in tmp_path.glob("*.jsonl")))
