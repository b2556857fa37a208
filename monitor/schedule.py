"""When to read: small schedule objects over optimizer steps (as in Cockpit)."""
from __future__ import annotations

import numbers


def check_every_n_steps(every_n_steps: object) -> int:
    if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, numbers.Integral) or every_n_steps < 1:
        raise ValueError(f"`every_n_steps` must be an integer >= 1, got {every_n_steps!r}")
    return int(every_n_steps)


class EveryNSteps:
    """True on optimizer steps N-1, 2N-1, ... (0-based ``global_step`` before the step).

    That is where Lightning's ``log_every_n_steps`` puts ``self.log`` values, so
    with the same N the readings sit on the steps of the loss curve. The check is
    pure integer arithmetic: no tensor work off check steps.
    """

    def __init__(self, every_n_steps: int) -> None:
        self.every_n_steps = check_every_n_steps(every_n_steps)

    def __call__(self, global_step: int) -> bool:
        return (global_step + 1) % self.every_n_steps == 0

    def __repr__(self) -> str:
        return f"EveryNSteps({self.every_n_steps})"
