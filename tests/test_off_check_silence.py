"""Off check steps every front door is silent; a check is one gather and one transfer. On the CPU.

The performance stance (DESIGN.md; README "Performance"): off check steps the monitoring does
no tensor work and forces no host-device synchronisation; a check brings every watched value
to the host in one transfer. For every door in ``door_harness.DOORS`` (plain-loop
ScaleWatcher, Lightning under ``lightning.pytorch`` and ``pytorch_lightning``, the HF
Transformers Trainer, the mmengine Runner) the same seeded training of 7 optimizer steps
runs without the door and with it (every_n_steps=3), each under an ATen op log and a
host-read log cut at every optimizer step (``door_harness`` says what a step holds). Then:

* ``test_checks_are_where_the_engine_says``: the door reads at steps 2 and 5 (counting from
  0: plain loop, Lightning) or 3 and 6 (from 1: HF, mmengine), i.e. in the 3rd and 6th
  optimizer step either way;
* ``test_off_check_steps_are_silent``: every other step's ATen operations (name, argument
  and result shapes, dtypes, devices) and host reads (``.item()``, ``.tolist()``,
  ``.cpu()``, ...) are identical with and without the door, operation for operation, and no
  forward of such a step computed the clamp fraction;
* ``test_a_check_is_one_gather_and_one_transfer``: a check step holds the run without the
  door, in order, plus exactly: the clamp-fraction statistic inside the generator's forward
  (the engine turns it on at the step before a check, for that check's forwards only), one
  gather (``aten.stack`` / ``aten.cat``), the ``detach`` of its ``.numpy()`` view, and one
  host read that transfers (``.cpu()``); on a GPU also one ``aten._to_copy`` to the host.

Nothing of the framework's own work is filtered out: each trainer logs the same way in both
runs (same logger, same logging interval, the progress bar as configured), and its work is
deterministic (the first run of a fresh process records the same steps as the next), so any
difference is the door's. A new door joins by one entry in ``door_harness.DOORS``.

``tests/test_gpu_sync.py`` runs the same comparison on CUDA, synchronisations counted.
"""
from __future__ import annotations

from typing import List

import pytest

from door_harness import DOORS, KNOWN_CHECK_STEP_BUGS, Door, Verdicts, door_params

EVERY_N = 3
STEPS = 7


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory) -> Verdicts:
    return Verdicts(tmp_path_factory.mktemp, "cpu", EVERY_N, STEPS)


def _report(problems: List[str]) -> str:
    return "\n".join(problems)


@pytest.mark.parametrize("door", door_params())
def test_checks_are_where_the_engine_says(door: Door, verdicts: Verdicts) -> None:
    verdict = verdicts(door)
    assert not verdict.schedule, _report(verdict.schedule)


@pytest.mark.parametrize("door", door_params())
def test_off_check_steps_are_silent(door: Door, verdicts: Verdicts) -> None:
    verdict = verdicts(door)
    assert not verdict.schedule, _report(verdict.schedule)
    assert not verdict.off_check, _report(verdict.off_check)


@pytest.mark.parametrize("door", door_params(known_bugs=KNOWN_CHECK_STEP_BUGS))
def test_a_check_is_one_gather_and_one_transfer(door: Door, verdicts: Verdicts) -> None:
    verdict = verdicts(door)
    assert not verdict.schedule, _report(verdict.schedule)
    assert not verdict.check, _report(verdict.check)


def test_every_front_door_is_in_the_registry() -> None:
    assert {"plain-loop", "lightning.pytorch", "pytorch_lightning", "hf-transformers", "mmengine", "ignite"} <= set(DOORS)
