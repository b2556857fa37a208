"""Overhead of ScaleMonitorHook(interval=50) on an mmengine Runner, against the same training without it.

Variants (same model, data, seed and Runner - IterBasedTrainLoop, AdamW through
an OptimWrapper, LoggerHook(interval=50), LocalVisBackend + TensorboardVisBackend;
only the hook differs):

    baseline       no ScaleMonitorHook among the runner's hooks
    monitor_n50    ScaleMonitorHook(interval=50)

Method. The model is the overhead benchmark's encoder (an AttentionBiasGenerator
in each of its 2 layers) behind an mmengine ``BaseModel``. Time is taken per train
iteration by a hook from one ``before_train_iter`` to the next (data, forward,
backward, the optimizer, every hook, LoggerHook's writes) and averaged per block of
50 iterations, so each block holds exactly one check and one LoggerHook line.

One ``runner.train()`` alternates blocks ``B M B M ... B`` (after an untimed warm-up
block with the hook in, in which it starts: wraps the optim wrapper's step, builds
its sink, writes the TensorBoard layout). At block boundaries the hook is taken out
of / put back into the runner's hook list and its wrapper around the optim
wrapper's ``step`` with it, so both its per-iteration dispatch and its per-step
wrapper are charged to its blocks only. The switch is made by the data loader's
collate function, which mmengine calls outside any hook dispatch; its own time is
subtracted. A monitor block's ratio is its time over the mean of the two baseline
blocks on either side; the table gives min / median / max over rounds. CPU time
(this process, all threads) is the headline on a CPU, wall time on a GPU, as in
``bench_overhead.py``. ``in-hook`` is the direct account: the time inside the
engine's ``step`` and the hook's ``after_train_iter``, per iteration of its blocks,
over the baseline iteration.
"""
from __future__ import annotations

import logging
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, default_collate

from benchmarks import front_door
from benchmarks.bench_overhead import MODEL_DESCRIPTION
from benchmarks.common import PERIOD, Encoder, StepTimer, cycled_data, no_monitoring_work, quiet
from benchmarks.front_door import MONITOR

LABEL = "ScaleMonitorHook(interval=50), mmengine Runner"


def _mmengine() -> Any:
    import mmengine  # the benchmark runs only where the [mmengine] extra is installed

    return mmengine


def _encoder_model() -> Any:
    # Made here so that importing this module needs no mmengine.
    from mmengine.model import BaseModel

    class EncoderNet(BaseModel):
        """The overhead benchmark's encoder with the ``forward(x, y, mode)`` mmengine's ``train_step`` calls."""

        def __init__(self) -> None:
            super().__init__()
            self.net = Encoder()

        def forward(self, x: torch.Tensor, y: torch.Tensor, mode: str = "tensor") -> Any:
            out = self.net(x)
            return {"loss": F.mse_loss(out, y)} if mode == "loss" else out

    return EncoderNet()


def _hooks(timer: StepTimer, on_gpu: bool) -> List[Any]:
    """The iteration timer (ticks first) and the hook under test, timed inside."""
    from mmengine.hooks import Hook

    from scalewatch.callbacks.mmengine import ScaleMonitorHook

    class IterTimer(Hook):
        """Feeds the house StepTimer: one tick at each train iteration's start."""

        priority = "HIGHEST"

        def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
            if on_gpu:
                torch.cuda.synchronize()
            timer.cpu.append(time.process_time())
            timer.starts.append(time.perf_counter())

    class TimedScaleMonitorHook(ScaleMonitorHook):
        """ScaleMonitorHook that also adds up the time inside the engine's step and its after_train_iter."""

        hook_s = 0.0

        def before_train(self, runner: Any) -> None:
            super().before_train(runner)
            engine_step = self.watcher.step

            def timed_step(*args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return engine_step(*args, **kwargs)
                finally:
                    self.hook_s += time.perf_counter() - t0

            self.watcher.step = timed_step  # what the hook's wrapper around the optim wrapper's step calls

        def after_train_iter(self, runner: Any, *args: Any, **kwargs: Any) -> None:
            t0 = time.perf_counter()
            super().after_train_iter(runner, *args, **kwargs)
            self.hook_s += time.perf_counter() - t0

    return [IterTimer(), TimedScaleMonitorHook(interval=PERIOD)]


class Switchboard:
    """The data loader's collate function: puts the hook in or takes it out before each block's first iteration.

    mmengine fetches an iteration's batch after the previous iteration's hooks ran
    and before this one's ``before_train_iter``, outside any hook dispatch, so
    editing the hook list here never disturbs an iteration. The iteration about to
    begin is the number of iterations the timer has seen begin.
    """

    def __init__(self, plan: List[str], timer: StepTimer) -> None:
        self.plan = plan
        self.timer = timer
        self.runner: Any = None
        self.hook: Any = None
        self._block = 0  # the warm-up block starts with the hook in
        self._step: Optional[Callable[..., Any]] = None  # the hook's wrapper of optim_wrapper.step, while out

    def __call__(self, batch: List[Any]) -> Any:
        upcoming = len(self.timer.starts)
        block = front_door.block_starting(upcoming, self._block, len(self.plan))
        if block is not None:
            self._block = block
            if block == 1:  # the timed blocks begin: the hook's start in the warm-up is not counted
                self.hook.hook_s = 0.0
            w0, c0 = time.perf_counter(), time.process_time()
            self._switch(on=self.plan[block] == MONITOR)
            # Inside the previous iteration's interval: the switch is charged to nobody.
            self.timer.exclude(upcoming - 1, time.perf_counter() - w0, time.process_time() - c0)
        return default_collate(batch)

    def _switch(self, on: bool) -> None:
        wrapper = self.runner.optim_wrapper
        if on and self._step is not None:
            self.runner.register_hook(self.hook)  # back in its place by priority
            wrapper.step = self._step
            self._step = None
        elif not on and self._step is None:
            self.runner.hooks.remove(self.hook)
            # The hook reads through an instance attribute that shadows OptimWrapper.step.
            self._step = vars(wrapper).pop("step")
            no_monitoring_work(self.runner.model)


def run_in_train(rounds: int, batch_size: int, root: str) -> Dict[str, Any]:
    from mmengine.runner import Runner

    plan = front_door.schedule(rounds)
    steps = len(plan) * PERIOD + 1  # +1: the last iteration ends at the next one's start
    timer = StepTimer()
    board = Switchboard(plan, timer)
    data = cycled_data(steps, batch_size)
    loader = DataLoader(data.dataset, batch_size=batch_size, sampler=data.sampler, collate_fn=board)
    timer_hook, monitor = _hooks(timer, torch.cuda.is_available())
    torch.manual_seed(0)
    runner = Runner(model=_encoder_model(), work_dir=root, experiment_name=f"bench-mmengine-{time.time_ns()}",
                    train_dataloader=loader, train_cfg=dict(by_epoch=False, max_iters=steps),
                    optim_wrapper=dict(optimizer=dict(type="AdamW", lr=1e-3)),
                    default_hooks=dict(logger=dict(type="LoggerHook", interval=PERIOD), checkpoint=None),
                    custom_hooks=[timer_hook, monitor], log_processor=dict(by_epoch=False), log_level="WARNING",
                    visualizer=dict(type="Visualizer",
                                    vis_backends=[dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")]),
                    default_scope=None)
    board.runner, board.hook = runner, monitor
    t0 = time.perf_counter()
    runner.train()
    train_wall = time.perf_counter() - t0
    return front_door.finished_run(plan, timer, monitor, rounds, steps, train_wall, unit="iteration")


def run(rounds: int = 24, batch_size: int = 8, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Measure; returns the result with ``rows`` (as ``bench_overhead``'s) and the ``target``."""
    quiet()
    logging.getLogger("scalewatch").setLevel(logging.WARNING)
    started = time.perf_counter()
    log(f"  {rounds} rounds of baseline / ScaleMonitorHook blocks in one mmengine runner.train() ...")
    with tempfile.TemporaryDirectory(prefix="scalewatch-bench-mmengine-") as root:
        one = run_in_train(rounds, batch_size, root)
    out = front_door.result(
        one, benchmark="mmengine", label=LABEL, method=__doc__.split("Method.", 1)[1].strip(),
        comparison="mmengine Runner: one train(), switched per 50-iteration block",
        what="ScaleMonitorHook(interval=50) / baseline on an mmengine Runner",
        config={"rounds": rounds, "batch_size": batch_size, "model": MODEL_DESCRIPTION,
                "loggers": "LoggerHook(interval=50), LocalVisBackend + TensorboardVisBackend",
                "mmengine": _mmengine().__version__})
    out["wall_s"] = time.perf_counter() - started
    return out


def format_table(result: Dict[str, Any]) -> str:
    """The result as a Markdown table, laid out as ``bench_overhead``'s."""
    return front_door.format_table(result)


def main(argv: Optional[List[str]] = None) -> int:
    return front_door.main(argv, __doc__.split("\n\n")[0], run, "mmengine front door: overhead per train iteration")


if __name__ == "__main__":
    sys.exit(main())
