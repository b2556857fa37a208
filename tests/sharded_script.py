"""One tiny model trained wrapped and sharded in 2 gloo processes, watched by ScaleWatcher.

Launched by tests/test_sharded.py:

    python -m torch.distributed.run --nproc_per_node 2 tests/sharded_script.py OUT_DIR ENGINE [ENGINE ...]

ENGINEs, one after the other in the same two processes: ``ddp`` (DDP around a model whose
``head`` is checkpoint-wrapped), ``compile`` (DDP around ``torch.compile(model)``), ``fsdp2``
(``fully_shard``), ``fsdp1`` (``use_orig_params=True``, the per-head generator wrapped on its
own), ``fsdp1-flat`` (``use_orig_params=False``), ``zero3`` (DeepSpeed ZeRO-3),
``fsdp2-resume`` (FSDP2 continuing a single-process run's record: ``OUT_DIR/single-ckpt.pt``),
``fsdp2-part`` (FSDP2's first checks, saved to ``OUT_DIR/fsdp2-ckpt.pt`` for a single process to continue),
``hf-fsdp``, ``hf-fsdp1``, ``hf-zero3``, ``hf-fsdp-cpu`` (HF's Trainer: tests/hf_sharded_script.py), then the faults: ``fault-diverge`` (rank 1 watches one more scale), ``fault-missing`` (rank 1
stops calling ``step()``; the last engine: the process group is left broken).

Each rank of each engine writes ``OUT_DIR/ENGINE/rank<N>.json``: where it stopped, its checks,
how many collectives scalewatch made at each step (counted by wrapping ``torch.distributed``'s
collectives: a call whose caller is scalewatch code), how many ATen operations and host
reads ``step()`` made off check steps, and its last readings; rank 0 writes the history in
``OUT_DIR/ENGINE/run``. :func:`train` with ``engine="single"`` is the unwrapped,
single-process run of the same model and data (each step's batch is both ranks' batches).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from scalewatch.callbacks import ScaleWatcher
from scalewatch.monitor import AttentionBiasGenerator
from scalewatch.monitor.sharded import make_shardable

STEPS = 16
EVERY_N = 2
BATCH = 4  # per rank
LR = 0.5
PARAMS = {"logit_scale": (0.0, math.log(100))}
GEN = "head.attention_bias_generator"


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention_bias_generator = AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0)

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        return self.attention_bias_generator(weights)


class Net(nn.Module):
    """A shared bias scale the loss pushes into its upper bound, a per-head one, and a bare 0-dim logit scale."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.head = Head()
        self.per_head = AttentionBiasGenerator(bias_scale=2.0, min_scale=0.5, max_scale=5.0, num_heads=3)
        self.logit_scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.proj(x))                                          # [B, 8] in (0, 1)
        bias = self.head(w.unsqueeze(-1).expand(-1, -1, 8))                      # [B, 8, 8]
        per_head = self.per_head(w[:, :3, None, None].expand(-1, 3, 4, 4) - 0.5)  # [B, 3, 4, 4]
        return (-bias.float().mean() - 0.2 * per_head.float().pow(2).mean()
                + (self.logit_scale * w.mean(-1) - 0.5).pow(2).mean() + 0.01 * self.proj.weight.pow(2).sum())


def build() -> Net:
    torch.manual_seed(0)
    return Net()


def data() -> torch.Tensor:
    """``[STEPS, ranks=2, BATCH, 8]``: rank r trains on ``data[step, r]``, the single run on both."""
    return torch.randn(STEPS, 2, BATCH, 8, generator=torch.Generator().manual_seed(7))


# ---- counting what scalewatch does ----------------------------------------------------------

COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "broadcast",
               "broadcast_object_list", "reduce_scatter_tensor", "reduce", "gather", "scatter", "barrier",
               "all_to_all", "all_to_all_single", "monitored_barrier", "send", "recv", "isend", "irecv")


class CollectiveCount:
    """Counts torch.distributed collectives called from scalewatch's code (not the engines'):
    ``count`` goes up by one for each, from the moment the first counter was made."""

    _total = 0
    _wrapped = False

    def __init__(self) -> None:
        import torch.distributed as dist

        if not CollectiveCount._wrapped:
            CollectiveCount._wrapped = True
            for name in COLLECTIVES:
                original = getattr(dist, name, None)
                if original is not None:
                    setattr(dist, name, self._wrap(original))

    @property
    def count(self) -> int:
        return CollectiveCount._total

    @staticmethod
    def _wrap(original: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            if sys._getframe(1).f_globals.get("__name__", "").startswith("scalewatch"):
                CollectiveCount._total += 1
            return original(*args, **kwargs)

        return counted


def ops_of(fn: Any) -> Dict[str, int]:
    """Run ``fn()`` counting ATen operations and host reads of tensors (``.item()``, ``.cpu()``, ...)."""
    from torch.overrides import TorchFunctionMode, resolve_name
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = {"aten": 0, "host": 0}

    class Aten(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counts["aten"] += 1
            return func(*args, **(kwargs or {}))

    class Host(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = resolve_name(func) or ""
            if name.startswith("torch.Tensor.") and name.rsplit(".", 1)[1] in (
                    "item", "tolist", "cpu", "numpy", "__float__", "__bool__", "__int__"):
                counts["host"] += 1
            return func(*args, **(kwargs or {}))

    with Aten(), Host():
        fn()
    return counts


# ---- the engines ---------------------------------------------------------------------------

def wrap(engine: str, net: Net) -> Any:
    """``(module to call, optimizer-like, backward(loss), step())`` for ``engine``."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    if engine in ("single", "ddp", "compile"):
        if engine == "ddp":
            from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

            net.head = checkpoint_wrapper(net.head)
            model: nn.Module = DDP(net)
        elif engine == "compile":
            model = DDP(torch.compile(net, backend="eager"))
        else:
            model = net
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        return model, optimizer, lambda loss: loss.backward(), optimizer.step, optimizer.zero_grad
    make_shardable(net, params=["logit_scale"])  # FSDP and DeepSpeed refuse 0-dim parameters
    if engine in ("fsdp2", "fsdp2-resume"):
        from torch.distributed.fsdp import fully_shard

        fully_shard(net.per_head)
        fully_shard(net)
        optimizer = torch.optim.SGD(net.parameters(), lr=LR)
        return net, optimizer, lambda loss: loss.backward(), optimizer.step, optimizer.zero_grad
    if engine in ("fsdp1", "fsdp1-flat"):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        model = FSDP(net, use_orig_params=engine == "fsdp1", device_id=torch.device("cpu"),
                     auto_wrap_policy=ModuleWrapPolicy({AttentionBiasGenerator}))
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        return model, optimizer, lambda loss: loss.backward(), optimizer.step, optimizer.zero_grad
    if engine == "zero3":
        import deepspeed

        optimizer = torch.optim.SGD(net.parameters(), lr=LR)
        config = {"train_micro_batch_size_per_gpu": BATCH, "gradient_accumulation_steps": 1,
                  "zero_optimization": {"stage": 3}, "zero_allow_untested_optimizer": True,
                  "steps_per_print": 10 ** 9, "wall_clock_breakdown": False}
        model, _, _, _ = deepspeed.initialize(model=net, optimizer=optimizer, config=config)
        return model, None, model.backward, model.step, lambda: None
    raise ValueError(engine)


def train(engine: str, log_dir: str, rank: int = 0, resume: Optional[Dict[str, Any]] = None,
          start: int = 0, stop_after: Optional[int] = None, checkpoint: Optional[str] = None) -> Dict[str, Any]:
    """Train ``engine`` and watch it; returns what this rank did (and saves the unwrapped model
    and the watcher's state to ``checkpoint``, single process only)."""
    net = build()
    if resume is not None:
        # either way: a single-process (0-dim) checkpoint into the sharded model, a sharded run's
        # (1-element) one into the single-process model; the shardable model loads both
        make_shardable(net, params=["logit_scale"])
        net.load_state_dict(resume["model"])
    model, _, backward, step_fn, zero_grad = wrap(engine, net)
    batches = data()
    collectives = CollectiveCount() if engine != "single" else None
    before_watcher = collectives.count if collectives else 0
    # watch the wrapper (DDP, compile, FSDP1, DeepSpeed's engine): the names are the model's own
    watcher = ScaleWatcher(model, log_dir=log_dir, every_n_steps=EVERY_N, params=PARAMS, on_saturation="stop",
                           plot=False)
    at_start = collectives.count - before_watcher if collectives else 0
    if resume is not None:
        watcher.load_state_dict(resume["watcher"])
    per_step: List[int] = []
    off_check: Dict[str, int] = {"aten": 0, "host": 0}
    fired: List[Any] = []
    step = start
    with watcher:
        for step in range(start, STEPS if stop_after is None else stop_after):
            x = batches[step].reshape(-1, 8) if engine == "single" else batches[step, rank]
            backward(model(x))
            before = collectives.count if collectives else 0
            if watcher.will_read(step):
                fired += watcher.step(step)
            else:
                counts = ops_of(lambda: watcher.step(step))
                off_check = {k: off_check[k] + counts[k] for k in off_check}
            per_step.append((collectives.count if collectives else 0) - before)
            step_fn()
            zero_grad()
            if watcher.should_stop:
                break
    if checkpoint is not None and engine == "single":
        torch.save({"model": net.state_dict(), "watcher": watcher.state_dict()}, checkpoint)
    elif checkpoint is not None:  # the full (unsharded) state, gathered for rank 0, as users save FSDP2
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            torch.save({"model": state, "watcher": watcher.state_dict()}, checkpoint)
    return dict(rank=rank, engine=engine, stopped_at=step, checks=watcher.checks, per_step=per_step,
                handshake=at_start, off_check=off_check, alerts=[(a.kind, a.name, a.step) for a in fired],
                is_global_zero=watcher.is_global_zero, history=watcher.history is not None,
                names=[s.name for s in watcher.scales], start=start,
                last=[dict(name=r.name, raw=r.raw, grad=r.grad, scale=r.scale) for r in watcher.last_readings])


def fault(kind: str, log_dir: str, rank: int) -> Dict[str, Any]:
    """``missing``: rank 1 stops calling step() after step 2; ``diverge``: rank 1 watches one more scale."""
    net = build()
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(net) if kind == "diverge" else net  # missing: no DDP traffic for the wait to pair with
    params = dict(PARAMS, **({"proj.bias": (None, 10.0)} if kind == "diverge" and rank == 1 else {}))
    started = time.monotonic()
    try:
        watcher = ScaleWatcher(model, log_dir=log_dir, every_n_steps=EVERY_N, params=params, plot=False)
        for step in range(6):
            model(data()[step, rank]).backward()
            if rank == 0 or step <= 2:
                watcher.step(step)
        if rank == 1:
            time.sleep(float(os.environ["SCALEWATCH_COLLECTIVE_TIMEOUT"]) + 3)  # alive, not calling step()
        error = None
    except Exception as err:  # what the test wants to see
        error = f"{type(err).__name__}: {err}"
    return dict(rank=rank, error=error, seconds=time.monotonic() - started)


def main(out_dir: str, engines: List[str]) -> None:
    import torch.distributed as dist

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "zero3" in engines or "hf-zero3" in engines:
        import deepspeed

        # DeepSpeed JIT-compiles a shared-memory all-reduce for CPUs (minutes of C++); gloo does without
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
        deepspeed.init_distributed(dist_backend="gloo")
    else:
        dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    for engine in engines:
        where = os.path.join(out_dir, engine)
        os.makedirs(where, exist_ok=True)
        resume = None
        start = 0
        if engine == "fsdp2-resume":
            resume = torch.load(os.path.join(out_dir, "single-ckpt.pt"), weights_only=False)
            start = resume["watcher"]["last_step"] + 1
        if engine == "fsdp2-part":  # the first checks under FSDP2, saved: a single process continues them
            result = train("fsdp2", os.path.join(where, "run"), rank, stop_after=6,
                           checkpoint=os.path.join(out_dir, "fsdp2-ckpt.pt"))
        elif engine.startswith("fault-"):
            result = fault(engine[len("fault-"):], os.path.join(where, "run"), rank)
        elif engine.startswith("hf-"):  # HF's Trainer (tests/hf_sharded_script.py) in the same processes
            import hf_sharded_script

            result = hf_sharded_script.run(engine, where, rank, collectives=CollectiveCount())
        else:
            result = train(engine, os.path.join(where, "run"), rank, resume=resume, start=start)
        with open(os.path.join(where, f"rank{rank}.json"), "w", encoding="utf-8") as f:
            json.dump(result, f)
        if engine == "fault-missing":
            os._exit(0)  # the process group is left in a failed collective: end here (the last engine)
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
