"""When to read: small schedule objects over optimizer steps (as in Cockpit)."""
from __future__ import annotations

import numbers


def check_every_n_steps(every_n_steps: object) -> int:
    if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, numbers.Integral) or every_n_steps < 1:
        raise ValueError(f"`every_n_steps` must be an integer >= 1, got {every_n_steps!r}")
    return int(every_n_steps)


def check_first_step(first_step: object) -> int:
    if first_step not in (0, 1) or isinstance(first_step, bool):
        raise ValueError(f"`first_step` must be 0 (steps counted from 0) or 1 (from 1), got {first_step!r}")
    return int(first_step)  # type: ignore[arg-type]


class EveryNSteps:
    """True on every N-th optimizer step: N-1, 2N-1, ... when steps are counted from 0.

    ``first_step=0`` (default): the 0-based ``global_step`` before the step, where
    Lightning's ``log_every_n_steps`` puts ``self.log`` values. ``first_step=1``:
    the step's number counted from 1 (N, 2N, ...), HF Transformers' ``global_step``
    after the step, where its ``logging_steps`` puts the loss. Either way, with the
    same N the readings sit on the steps of the loss curve. The check is pure
    integer arithmetic: no tensor work off check steps.
    """

    def __init__(self, every_n_steps: int, first_step: int = 0) -> None:
        self.every_n_steps = check_every_n_steps(every_n_steps)
        self.first_step = check_first_step(first_step)
        self._shift = 1 - self.first_step

    def __call__(self, global_step: int) -> bool:
        return (global_step + self._shift) % self.every_n_steps == 0

    def __repr__(self) -> str:
        first = f", first_step={self.first_step}" if self.first_step else ""
        return f"EveryNSteps({self.every_n_steps}{first})"
