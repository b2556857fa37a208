"""The README's HF Accelerate loop, in 2 CPU processes: ScaleWatcher under ``accelerator.accumulate``.

Launched by tests/test_sharded.py:

    accelerate launch --cpu --num_processes 2 tests/accelerate_script.py OUT_DIR

tests/sharded_script.py's model and data, each optimizer step's batch of a rank split in two
accumulation micro-batches: ``step()`` goes where ``accelerator.sync_gradients`` is true (the
last micro-batch, gradients complete and all-reduced), before ``optimizer.step()``. Each rank
writes ``OUT_DIR/accelerate/rank<N>.json`` as the other engines do.
"""
from __future__ import annotations

import json
import os
import sys

import torch
from accelerate import Accelerator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sharded_script as S  # noqa: E402

from scalewatch.callbacks import ScaleWatcher  # noqa: E402

MICRO = 2


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=MICRO)
    rank = accelerator.process_index
    net = S.build()
    optimizer = torch.optim.SGD(net.parameters(), lr=S.LR)
    model, optimizer = accelerator.prepare(net, optimizer)
    batches = S.data()
    counter = S.CollectiveCount()
    before = counter.count
    where = os.path.join(out_dir, "accelerate")
    os.makedirs(where, exist_ok=True)
    # the unwrapped model (accelerator.unwrap_model(model)); the prepared one gives the same names
    watcher = ScaleWatcher(accelerator.unwrap_model(model), log_dir=os.path.join(where, "run"),
                           every_n_steps=S.EVERY_N, params=S.PARAMS, on_saturation="stop", plot=False,
                           grad_scaler=accelerator.scaler)  # None without mixed precision
    handshake = counter.count - before
    per_step, fired, off_check = [], [], {"aten": 0, "host": 0}
    step = 0
    with watcher:
        for step in range(S.STEPS):
            for micro in range(MICRO):
                with accelerator.accumulate(model):
                    x = batches[step, rank].reshape(MICRO, -1, 8)[micro]
                    accelerator.backward(model(x))
                    if accelerator.sync_gradients:  # the last micro-batch: one step() per optimizer step
                        at = counter.count
                        if watcher.will_read(step):
                            fired += watcher.step(step)
                        else:
                            counts = S.ops_of(lambda: watcher.step(step))
                            off_check = {k: off_check[k] + counts[k] for k in off_check}
                        per_step.append(counter.count - at)
                    optimizer.step()
                    optimizer.zero_grad()
            if watcher.should_stop:
                break
    with open(os.path.join(where, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(dict(rank=rank, engine="accelerate", stopped_at=step, checks=watcher.checks, per_step=per_step,
                       handshake=handshake, off_check=off_check, alerts=[(a.kind, a.name, a.step) for a in fired],
                       is_global_zero=watcher.is_global_zero, history=watcher.history is not None,
                       names=[s.name for s in watcher.scales], start=0,
                       prepared_names=[s.name for s in ScaleWatcher(model, params=S.PARAMS, plot=False).scales],
                       last=[dict(name=r.name, raw=r.raw, grad=r.grad, scale=r.scale)
                             for r in watcher.last_readings]), f)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
