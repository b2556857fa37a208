"""HF ``Trainer`` under FSDP and DeepSpeed ZeRO-3, 2 gloo processes on the CPU, one ScaleMonitorCallback each.

Launched by tests/test_sharded.py:

    python -m torch.distributed.run --nproc_per_node 2 tests/hf_sharded_script.py OUT_DIR CASE [CASE ...]

CASEs, one after the other in the same two processes: ``hf-fsdp`` (``fsdp=True``: HF's default,
FSDP2 through accelerate), ``hf-fsdp1`` (``fsdp_config={"version": 1}``), ``hf-zero3``
(``deepspeed=`` a ZeRO-3 config), ``hf-fsdp-cpu`` (``fsdp=True`` left as it is: on a CPU accelerate
trains DDP). tests/sharded_script.py runs them in its launch too.
The model is tests/hf_models.py's ``DriftModel`` made shardable (FSDP and DeepSpeed refuse its
0-dim scale), 2 samples per rank and step; :func:`single` is the single-process run of the same
model and data (4 samples a step). Each rank of each case writes ``OUT_DIR/CASE/rank<N>.json``
(its stop step, checks, the names it watches, its alerts, the collectives scalewatch made at each
optimizer step, its last readings); rank 0 writes the history in ``OUT_DIR/CASE/run``.

DeepSpeed starts on the CPU without JIT-compiling its shared-memory all-reduce (minutes of C++):
the process group is started as gloo by ``deepspeed.init_distributed(dist_backend="gloo")`` with
``deepspeed.comm.torch.build_shm_op`` returning ``None`` (DeepSpeed's own fallback where the op
cannot be built), before any Trainer; accelerate then finds the group running and uses it.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

from hf_models import GEN, hf_trainer  # noqa: E402,F401 - GEN: the tests read it here
from scalewatch.callbacks.hf import ScaleMonitorCallback  # noqa: E402
from scalewatch.monitor.sharded import make_shardable  # noqa: E402

#: the Trainer settings every case shares (hf_models.hf_trainer's defaults otherwise): 2 ranks x 2 samples
STEPS, PER_RANK, LOGGING = 40, 2, 5
ZERO3 = {"train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
         "gradient_accumulation_steps": "auto", "zero_optimization": {"stage": 3},
         "zero_allow_untested_optimizer": True, "steps_per_print": 10 ** 9, "wall_clock_breakdown": False}


class NoCollectives:
    """One process makes none (and torch.distributed stays as it is)."""

    count = 0


class Counted(ScaleMonitorCallback):
    """The door as users add it, counting scalewatch's collectives at each optimizer step."""

    def __init__(self, collectives: Any, **kw: Any) -> None:
        super().__init__(**kw)
        self.collectives = collectives
        self.per_step: Dict[int, int] = {}
        self.alerts: List[Any] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        super().on_train_begin(args, state, control, **kwargs)
        watcher = self.watcher
        step = watcher.step

        def counted(at: int, **kw: Any) -> Any:  # what the callback's on_pre_optimizer_step calls
            before = self.collectives.count
            result = step(at, **kw)
            self.per_step[at] = self.collectives.count - before
            self.alerts += [(a.kind, a.name, a.step) for a in result]
            return result

        watcher.step = counted


def _local_numel(p: torch.Tensor) -> int:
    """How many of ``p``'s elements this rank holds: ZeRO-3's partition, FSDP2's local shard, FSDP1's view."""
    if hasattr(p, "ds_tensor"):
        return p.ds_tensor.numel()
    if hasattr(p, "to_local"):
        return p.to_local().numel()
    return p.numel()


def run(case: str, out: str, rank: int, collectives: Any = None) -> Dict[str, Any]:
    """Train one case (``single``: one process, 4 samples a step); what this rank did.

    ``collectives``: a ``sharded_script.CollectiveCount`` (made here when not given).
    """
    from accelerate.state import AcceleratorState

    if collectives is None and case == "single":
        collectives = NoCollectives()
    elif collectives is None:
        from sharded_script import CollectiveCount

        collectives = CollectiveCount()
    # accelerate keeps one state per process: each case starts its own (the group stays)
    AcceleratorState._reset_state(reset_partial_state=True)
    os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)
    callback = Counted(collectives, on_saturation="stop")
    kw: Dict[str, Any] = dict(max_steps=STEPS, logging_steps=LOGGING, per_device_train_batch_size=PER_RANK)
    if case == "hf-fsdp-cpu":  # as a user configures it: on a CPU accelerate leaves FSDP aside (DDP)
        kw["fsdp"] = True
    elif case in ("hf-fsdp", "hf-fsdp1"):
        kw["fsdp"] = True
        # FSDP1 on a CPU: no sync_module_states (it broadcasts through a GPU); every rank builds the same seeded model
        kw["fsdp_config"] = {"version": 2} if case == "hf-fsdp" else {"version": 1, "sync_module_states": "false"}
    elif case == "hf-zero3":
        kw["deepspeed"] = ZERO3
    elif case == "single":
        kw["per_device_train_batch_size"] = 2 * PER_RANK
    else:
        raise ValueError(case)
    trainer = hf_trainer(os.path.join(out, "run"), [callback], report_to=[], **kw)
    if case != "single":
        make_shardable(trainer.model)  # before train(): that is where FSDP / DeepSpeed wrap it
    if case in ("hf-fsdp", "hf-fsdp1"):
        # On a CPU accelerate (1.16) turns FSDP on for GPU-like process types only: the Trainer
        # would train DDP. Set the state as a GPU run's would be, to run HF's FSDP path on gloo.
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        state = trainer.accelerator.state
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
        trainer.is_fsdp_enabled = True
        if case == "hf-fsdp1":  # FSDP1's device_id is accelerate's device: on a CPU "cpu", not "cpu:0"
            state.device = torch.device("cpu")
    trainer.train()
    if case == "hf-zero3":
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    watcher = callback.watcher
    return dict(rank=rank, engine=case, stopped_at=trainer.state.global_step, checks=watcher.checks,
                names=[s.name for s in watcher.scales], alerts=callback.alerts,
                per_step=[callback.per_step.get(s, 0) for s in range(1, trainer.state.global_step + 1)],
                is_world_process_zero=trainer.is_world_process_zero(), history=watcher.history is not None,
                wrapped=type(trainer.model_wrapped).__name__,
                local=sum(_local_numel(p) for p in trainer.model.parameters()),
                last=[dict(name=r.name, raw=r.raw, grad=r.grad, scale=r.scale) for r in watcher.last_readings])


def main(out_dir: str, cases: List[str]) -> None:
    import torch.distributed as dist

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None  # gloo does without DeepSpeed's shm op
    deepspeed.init_distributed(dist_backend="gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    for case in cases:
        where = os.path.join(out_dir, case)
        os.makedirs(where, exist_ok=True)
        result = run(case, where, rank)
        with open(os.path.join(where, f"rank{rank}.json"), "w", encoding="utf-8") as f:
            json.dump(result, f)
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
