"""Overhead of ScaleMonitorCallback(every_n_steps=50) on an HF Transformers Trainer, against the same training without it.

Variants (same model, data, seed and Trainer - ``report_to=["tensorboard"]``,
``logging_steps=50``, AdamW, HF's default ``max_grad_norm=1.0``; only the callback
differs):

    baseline       no scalewatch callback in the Trainer's list
    monitor_n50    ScaleMonitorCallback(every_n_steps=50)

Method. The model is the overhead benchmark's encoder (an AttentionBiasGenerator
in each of its 2 layers) behind an HF-style ``forward(x, labels) -> {"loss": ...}``.
Time is taken per optimizer step by a TrainerCallback from one ``on_step_begin`` to
the next (data, forward, backward, clipping, every callback, the optimizer, HF's
logging) and averaged per block of 50 steps, so each block holds exactly one check
and one HF log write.

One ``train()`` alternates blocks ``B M B M ... B`` (after an untimed warm-up block
with the callback in, in which it starts: finds its place, builds its sinks, writes
the TensorBoard layout). The callback is taken out of / put back into the Trainer's
callback list at block boundaries by the data collator, which HF calls outside any
callback dispatch, so HF's dispatch of its hooks is charged to its blocks only;
the switch's own time is subtracted. A monitor block's ratio is its time over the
mean of the two baseline blocks on either side; the table gives min / median / max
over rounds. CPU time (this process, all threads) is the headline on a CPU, wall
time on a GPU, as in ``bench_overhead.py``.
"""
from __future__ import annotations

import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import front_door
from benchmarks.bench_overhead import MODEL_DESCRIPTION
from benchmarks.common import PERIOD, Encoder, StepTimer, no_monitoring_work, quiet
from benchmarks.front_door import MONITOR

LABEL = "ScaleMonitorCallback(every_n_steps=50), HF Trainer"


def _transformers() -> Any:
    import transformers  # the benchmark runs only where the [transformers] extra is installed

    transformers.logging.set_verbosity_error()
    return transformers


class HFEncoder(nn.Module):
    """The overhead benchmark's encoder with the ``forward(**batch) -> {"loss": ...}`` an HF Trainer calls."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Encoder()

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"loss": F.mse_loss(self.net(x), labels)}


class CycledPoints(torch.utils.data.Dataset):
    """``length`` items drawn in order from a fixed random set (one epoch, no boundary inside the timing)."""

    def __init__(self, length: int, samples: int = 4096, seq: int = 32, features: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(samples, seq, features, generator=g), torch.randn(samples, generator=g)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        i %= len(self.x)
        return {"x": self.x[i], "labels": self.y[i]}


class Switchboard:
    """The data collator: puts the callback in or takes it out before each block's first step, then collates.

    HF fetches a step's batch (and accelerate one batch ahead) after the previous
    step ended and before this step's ``on_step_begin``, outside any callback
    dispatch, so editing the callback list here never disturbs an iteration. The
    step about to begin is the number of steps the timer has seen begin.
    """

    def __init__(self, plan: List[str], timer: StepTimer) -> None:
        self.plan = plan
        self.timer = timer
        self.trainer: Any = None
        self.monitor: Any = None
        self._block = 0  # the warm-up block starts with the callback in
        self._index: Optional[int] = None  # the callback's place while it is out
        self._collate = _transformers().default_data_collator

    def __call__(self, features: List[Dict[str, Any]]) -> Dict[str, Any]:
        upcoming = len(self.timer.starts)
        block = front_door.block_starting(upcoming, self._block, len(self.plan))
        if block is not None:
            self._block = block
            if block == 1:  # the timed blocks begin: the callback's start in the warm-up is not counted
                self.monitor.hook_s = 0.0
            w0, c0 = time.perf_counter(), time.process_time()
            self._switch(on=self.plan[block] == MONITOR)
            # Inside the previous step's interval: the switch is charged to nobody.
            self.timer.exclude(upcoming - 1, time.perf_counter() - w0, time.process_time() - c0)
        return self._collate(features)

    def _switch(self, on: bool) -> None:
        callbacks = self.trainer.callback_handler.callbacks
        if on and self._index is not None:
            callbacks.insert(self._index, self.monitor)
            self._index = None
        elif not on and self._index is None:
            self._index = callbacks.index(self.monitor)
            callbacks.pop(self._index)
            no_monitoring_work(self.trainer.model)


def _callbacks(timer: StepTimer, on_gpu: bool) -> List[Any]:
    """The step timer and the callback under test, timed inside (made here: importing this needs no transformers)."""
    from scalewatch.callbacks.hf import ScaleMonitorCallback

    class StepTimerCallback(_transformers().TrainerCallback):
        """Feeds the house StepTimer: one tick at each optimizer step's begin."""

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if on_gpu:
                torch.cuda.synchronize()
            timer.cpu.append(time.process_time())
            timer.starts.append(time.perf_counter())

    class TimedScaleMonitorCallback(ScaleMonitorCallback):
        """ScaleMonitorCallback that also adds up the time spent inside its two per-step hooks."""

        hook_s = 0.0

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            t0 = time.perf_counter()
            super().on_step_begin(*args, **kwargs)
            self.hook_s += time.perf_counter() - t0

        def on_pre_optimizer_step(self, *args: Any, **kwargs: Any) -> None:
            t0 = time.perf_counter()
            super().on_pre_optimizer_step(*args, **kwargs)
            self.hook_s += time.perf_counter() - t0

    return [TimedScaleMonitorCallback(every_n_steps=PERIOD), StepTimerCallback()]


def run_in_train(rounds: int, batch_size: int, root: str) -> Dict[str, Any]:
    tf = _transformers()
    plan = front_door.schedule(rounds)
    steps = len(plan) * PERIOD + 1  # +1: the last step ends at the next step's begin

    timer = StepTimer()
    board = Switchboard(plan, timer)
    torch.manual_seed(0)
    on_gpu = torch.cuda.is_available()
    args = tf.TrainingArguments(output_dir=root, use_cpu=not on_gpu, report_to=["tensorboard"], max_steps=steps,
                                logging_steps=PERIOD, save_strategy="no", disable_tqdm=True,
                                dataloader_num_workers=0, per_device_train_batch_size=batch_size,
                                learning_rate=1e-3, optim="adamw_torch", lr_scheduler_type="constant",
                                train_sampling_strategy="sequential", seed=0)
    monitor, tick = _callbacks(timer, on_gpu)
    trainer = tf.Trainer(model=HFEncoder(), args=args, train_dataset=CycledPoints(steps * batch_size),
                         data_collator=board, callbacks=[monitor, tick])
    trainer.remove_callback(tf.trainer_callback.PrinterCallback)  # keeps the benchmark's output to its table
    board.trainer, board.monitor = trainer, monitor
    t0 = time.perf_counter()
    trainer.train()
    train_wall = time.perf_counter() - t0
    return front_door.finished_run(plan, timer, monitor, rounds, steps, train_wall, unit="step")


def run(rounds: int = 24, batch_size: int = 8, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Measure; returns the result with ``rows`` (as ``bench_overhead``'s) and the ``target``."""
    quiet()
    started = time.perf_counter()
    log(f"  {rounds} rounds of baseline / ScaleMonitorCallback blocks in one HF train() ...")
    with tempfile.TemporaryDirectory(prefix="scalewatch-bench-hf-") as root:
        one = run_in_train(rounds, batch_size, root)
    out = front_door.result(
        one, benchmark="hf", label=LABEL, method=__doc__.split("Method.", 1)[1].strip(),
        comparison="HF Trainer: one train(), switched per 50-step block",
        what="ScaleMonitorCallback(every_n_steps=50) / baseline on an HF Trainer",
        config={"rounds": rounds, "batch_size": batch_size, "model": MODEL_DESCRIPTION,
                "loggers": "report_to=['tensorboard']", "transformers": _transformers().__version__})
    out["wall_s"] = time.perf_counter() - started
    return out


def format_table(result: Dict[str, Any]) -> str:
    """The result as a Markdown table, laid out as ``bench_overhead``'s."""
    return front_door.format_table(result)


def main(argv: Optional[List[str]] = None) -> int:
    return front_door.main(argv, __doc__.split("\n\n")[0], run,
                           "HF Transformers front door: overhead per optimizer step")


if __name__ == "__main__":
    sys.exit(main())
