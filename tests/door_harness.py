"""Every front door trained the same way twice, with and without scalewatch, under an op log cut at optimizer steps.

What the performance stance promises (DESIGN.md, "Performance stance"; README, "Performance")
is a difference between two runs: the same seeded training with a door and without it.
This module records that difference for every door the same way, so one test
(``test_off_check_silence.py`` on the CPU, ``test_gpu_sync.py`` on a GPU) holds all of
them to it and a new door joins by one entry in :data:`DOORS`.

A recording of one run holds, per optimizer step (the log is cut by a global
``torch.optim`` step post-hook, so step ``k`` is everything after optimizer step
``k-1`` up to and including optimizer step ``k``: the forward and backward of step ``k``,
the door's read before the step, the step itself, and what the trainer did after step
``k-1`` — its logging, ``zero_grad``, the next batch; step 0 also holds the set-up inside
the recorded call, the door's included; what follows the last step, the ``tail`` — the end
of training, the door's ``close`` — is kept but not compared):

* ``aten``: every ATen operation (``TorchDispatchMode``) as name, argument shapes,
  dtypes and devices (and non-float scalars), result shapes, and whether it ran inside
  the forward of a bounded scale (``AttentionBiasGenerator``); this is all tensor work,
  whichever Python code asked for it;
* ``host``: every call that reads a tensor's data on the host (``TorchFunctionMode``):
  ``.item()``, ``.tolist()``, ``.cpu()``, ``.numpy()``, ``float(t)``, ``bool(t)``, ...
  On the CPU ``.cpu()`` and ``.tolist()`` run no ATen operation, so the ATen log alone
  would not see them; on a GPU each of them (but ``.numpy()``, which refuses device
  tensors) is a device-to-host transfer and synchronisation;
* ``syncs`` (CUDA only): the synchronisations ``torch.cuda.set_sync_debug_mode("warn")``
  reports;

and, after the last step, the door's readings as its history file has them.
:func:`compare` then compares a run with the door against one without it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import json
import uuid
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.overrides import TorchFunctionMode, resolve_name
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from scalewatch.monitor import AttentionBiasGenerator
from scalewatch.monitor.attention_stats import is_computing as in_attention_statistics
from scalewatch.monitor.bounded_scale import BoundedScale

# ---- what a step may hold -------------------------------------------------------------

#: the engine's one gather of every watched value (monitor/scale_reader.py ``_to_host``):
#: ``torch.stack`` when all watched values are single values, ``_flatten_dense_tensors``'
#: ``cat`` otherwise
GATHER_OPS = ("aten.stack.default", "aten.cat.default")
#: how ``_flatten_dense_tensors`` flattens each multi-element part before its ``cat``: a view, no work
GATHER_VIEW_OP = "aten.view.default"
#: a device-to-host copy at the ATen level (``.cpu()``, ``.to("cpu")`` of a device tensor)
TRANSFER_OP = "aten._to_copy.default"
#: Python calls that read a tensor's data on the host. All but ``numpy`` move a device
#: tensor's data to the host (a transfer and a synchronisation on a GPU); ``numpy`` only
#: views memory that is on the host already (it raises on a device tensor).
HOST_READS = frozenset("torch.Tensor." + m for m in (
    "item", "tolist", "cpu", "numpy", "to", "__float__", "__int__", "__bool__", "__index__", "__complex__",
    "__array__", "__format__", "__repr__", "__str__", "__contains__"))
HOST_VIEW = "torch.Tensor.numpy"
#: what ``.numpy()`` runs at the ATen level: a ``detach`` of the host tensor (no copy)
HOST_VIEW_OP = "aten.detach.default"
SYNC_WARNING = "synchroniz"  # "called a synchronizing CUDA operation"


def is_transfer(call: str) -> bool:
    """A host read that moves data off the device (on a GPU): every one but ``numpy``."""
    return call != HOST_VIEW


# ---- one recording --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Op:
    """One ATen operation: ``name``, ``args`` (a signature, no tensor values), ``out``,
    ``in_scale``: run inside the forward of a bounded scale, and ``in_attention``: run by
    scalewatch's attention statistics (``attention=``)."""

    name: str
    args: str
    out: str
    in_scale: bool
    in_attention: bool = False

    def __str__(self) -> str:
        return (f"{self.name}({self.args}) -> {self.out}{'  [in scale forward]' if self.in_scale else ''}"
                f"{'  [attention statistics]' if self.in_attention else ''}")


@dataclasses.dataclass
class Step:
    """What one optimizer step held (see the module docstring for where a step begins)."""

    aten: List[Op] = dataclasses.field(default_factory=list)
    host: List[str] = dataclasses.field(default_factory=list)
    syncs: int = 0
    #: forwards of a bounded scale in this step with its clamp-fraction statistic on
    tracked_forwards: int = 0


@dataclasses.dataclass
class Recording:
    door: str
    with_door: bool
    device: str
    steps: List[Step]
    #: after the last optimizer step: the end of training (the door's close and final plot)
    tail: Step
    #: the steps of the door's readings, as its history file holds them (``[]`` without door)
    readings: List[int]


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"{str(x.dtype).replace('torch.', '')}{list(x.shape)}@{x.device.type}"
    if isinstance(x, float):
        # a Python float may be a value read off the data (a loss, a norm): its type is
        # part of the signature, its value is not
        return "float"
    if x is None or isinstance(x, (bool, int, str, torch.dtype, torch.device, torch.layout, torch.memory_format)):
        return repr(x)
    return type(x).__name__


class _AtenLog(TorchDispatchMode):
    def __init__(self, recorder: "_Recorder") -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rec = self.recorder
        signature = ", ".join([_describe(a) for a in tree_leaves(list(args))] +
                              [f"{k}={_describe(v)}" for k, v in kwargs.items()])
        rec.current.aten.append(Op(str(func), signature, ", ".join(_describe(o) for o in tree_leaves(out)),
                                   rec.in_scale > 0, in_attention_statistics()))
        return out


class _HostReadLog(TorchFunctionMode):
    def __init__(self, recorder: "_Recorder") -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = resolve_name(func)
        if name in HOST_READS and (name != "torch.Tensor.to" or _to_host(args, kwargs or {})):
            self.recorder.current.host.append(name)
        return func(*args, **(kwargs or {}))


def _to_host(args: Sequence[Any], kwargs: Dict[str, Any]) -> bool:
    """``Tensor.to(...)`` that targets the CPU."""
    for a in list(args[1:]) + list(kwargs.values()):
        if isinstance(a, (str, torch.device)) and torch.device(a).type == "cpu":
            return True
    return False


class _Recorder:
    def __init__(self, device: str) -> None:
        self.device = device
        self.steps: List[Step] = []
        self.current = Step()
        self.in_scale = 0
        self._warnings: List[warnings.WarningMessage] = []
        self._seen_warnings = 0

    def _count_syncs(self) -> None:
        new = self._warnings[self._seen_warnings:]
        self._seen_warnings = len(self._warnings)
        self.current.syncs += sum(SYNC_WARNING in str(w.message) for w in new)

    def cut(self, *_: Any) -> None:
        """The global optimizer step post-hook: the step ends here."""
        self._count_syncs()
        self.steps.append(self.current)
        self.current = Step()

    def scale_forward_begins(self, module: nn.Module, _inputs: Any) -> None:
        if isinstance(module, BoundedScale):
            self.in_scale += 1
            if getattr(module, "track_clamp_fraction", False):
                self.current.tracked_forwards += 1

    def scale_forward_ends(self, module: nn.Module, _inputs: Any, _output: Any) -> None:
        if isinstance(module, BoundedScale):
            self.in_scale -= 1

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            hooks = [register_optimizer_step_post_hook(self.cut),
                     nn.modules.module.register_module_forward_pre_hook(self.scale_forward_begins),
                     nn.modules.module.register_module_forward_hook(self.scale_forward_ends)]
            for hook in hooks:
                stack.callback(hook.remove)
            if self.device == "cuda":
                torch.cuda.synchronize()
                self._warnings = stack.enter_context(warnings.catch_warnings(record=True))
                warnings.simplefilter("always")
                previous = torch.cuda.get_sync_debug_mode()
                torch.cuda.set_sync_debug_mode("warn")
                stack.callback(torch.cuda.set_sync_debug_mode, previous)
            stack.enter_context(_HostReadLog(self))
            stack.enter_context(_AtenLog(self))
            yield
        self._count_syncs()


@dataclasses.dataclass
class DoorRun:
    """What a door runner is asked to do: train ``steps`` optimizer steps on ``device``,
    with the door (reading every ``every_n`` steps) or without it, inside :meth:`record`."""

    door: str
    with_door: bool
    every_n: int
    steps: int
    device: str
    root: Path
    _recorder: Optional[_Recorder] = None

    @contextlib.contextmanager
    def record(self) -> Iterator[None]:
        """Wrap the training call (``fit``, ``train``, the loop and the watcher's close) in this."""
        assert self._recorder is None, "record() once per run"
        self._recorder = _Recorder(self.device)
        with self._recorder.active():
            yield

    @property
    def recorded(self) -> List[Step]:
        """The steps recorded so far (those the optimizer completed)."""
        return [] if self._recorder is None else self._recorder.steps


#: a door runner: trains as :class:`DoorRun` asks, returns the door's ScaleWatcher (``None`` without door)
Runner = Callable[[DoorRun], Any]


@dataclasses.dataclass(frozen=True)
class Door:
    name: str
    #: how the door numbers the steps it records: 0 (0-based ``global_step``, readings at
    #: N-1, 2N-1, ...: plain loop, Lightning) or 1 (counted from 1, readings at N, 2N, ...: HF, mmengine)
    first_step: int
    run: Runner
    #: modules the door needs: the door is skipped when one is missing
    needs: Tuple[str, ...] = ()
    #: the door runs with ``attention=``: its check steps also hold the attention statistics
    attention: bool = False

    def available(self) -> bool:
        return all(importlib.util.find_spec(m.split(".")[0]) is not None for m in self.needs)

    def expected_readings(self, every_n: int, steps: int) -> List[int]:
        """The steps the engine reads at (``EveryNSteps``), in the door's numbering."""
        first = self.first_step
        return [s for s in range(first, steps + first) if (s + 1 - first) % every_n == 0]


def record(door: Door, with_door: bool, every_n: int, steps: int, device: str, root: Path) -> Recording:
    run = DoorRun(door.name, with_door, every_n, steps, device, Path(root))
    run.root.mkdir(parents=True, exist_ok=True)
    watcher = door.run(run)
    assert run._recorder is not None, f"the {door.name} runner never called record()"
    rec = run._recorder
    readings: List[int] = []
    if with_door:
        assert watcher is not None and watcher.history_path is not None, f"{door.name}: no watcher with a history"
        readings = _history_steps(watcher.history_path)
    return Recording(door.name, with_door, device, rec.steps, rec.current, readings)


def _history_steps(path: str) -> List[int]:
    """The steps of a history file's readings (one JSON object per line, with a top-level ``step``)."""
    with open(path, encoding="utf-8") as f:
        return sorted({int(json.loads(line)["step"]) for line in f if line.strip()})


def record_pair(door: Door, every_n: int, steps: int, device: str, root: Path,
                warm_up: Optional[bool] = None) -> Tuple[Recording, Recording]:
    """The run without the door, then the run with it.

    Without the door first: anything a framework does only once per process would land in
    that run and show as work *missing* with the door, a failure, never as door work hidden.
    On the CPU no framework here does any inside the recorded region (even the very first run
    of a fresh process records the same steps as the next one). On CUDA (``warm_up``, the
    default there) an unrecorded run goes first anyway, to keep lazy CUDA initialisation
    (context, handles, the allocator's first blocks) out of both recordings.
    """
    if warm_up if warm_up is not None else device != "cpu":
        record(door, False, every_n, steps, device, Path(root) / "warm-up")
    without = record(door, False, every_n, steps, device, Path(root) / "without")
    with_ = record(door, True, every_n, steps, device, Path(root) / "with")
    return without, with_


# ---- the comparison -------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def clamp_fraction_ops(device: str = "cpu") -> Counter:
    """The ATen operations a bias generator's forward adds with its clamp-fraction statistic
    on (``track_clamp_fraction``), derived by running one forward both ways.

    The engine turns the statistic on for the forward passes of check steps only
    (``ScaleWatcher._track_clamp_fraction``), so a check step's forward may hold these,
    once per generator forward, and no other step's may.
    """
    gen = AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0).to(device)
    weights = torch.rand(2, 4, 4, device=device, requires_grad=True)
    names = []
    for on in (False, True):
        gen.track_clamp_fraction = on
        rec = _Recorder("cpu")  # no sync counting here
        with _AtenLog(rec):
            gen(weights)
        names.append(Counter(op.name for op in rec.current.aten))
    off, on = names
    assert not off - on, f"the statistic removes operations from the forward: {off - on}"
    return on - off


def _is_subsequence(short: Sequence[Any], long: Sequence[Any]) -> bool:
    it = iter(long)
    return all(any(x == y for y in it) for x in short)


def _ops(ops: Sequence[Op]) -> str:
    return "\n      ".join(map(str, ops)) or "(none)"


@dataclasses.dataclass
class Verdict:
    """Where a run with the door departs from the run without it beyond what a check may add."""

    #: the door's readings are not where the engine's schedule puts them, or the log is not cut into its steps
    schedule: List[str]
    #: steps that are not check steps and differ in tensor work, host reads or synchronisations
    off_check: List[str]
    #: check steps that add more (or other) than the clamp fraction, one gather and one transfer
    check: List[str]


def compare(door: Door, without: Recording, with_: Recording, every_n: int, steps: int) -> Verdict:
    """Everything in which ``with_`` departs from ``without`` beyond what a check may add.

    Off check steps: the ATen log, the host reads and the synchronisations of a step with
    the door are those of the same step without it, operation for operation.
    On check steps, the run with the door holds the run without it, in order, plus exactly:

    * inside the forwards of the bias generators, the clamp-fraction statistic
      (:func:`clamp_fraction_ops`, once per tracked forward): the engine turns it on for
      the forwards of check steps only;
    * for a door run with ``attention=`` (:attr:`Door.attention`), the attention statistics
      (the ops run inside scalewatch's ``attention_stats.computing()``), some on every check
      step; the interception is armed for those forwards only;
    * outside them, one gather (one of :data:`GATHER_OPS`), where the scales live off the
      host one device-to-host copy (:data:`TRANSFER_OP`, to the CPU), and the ``detach``
      by which ``.numpy()`` views that host copy; nothing else;
    * one host read that transfers (``.cpu()`` of the gather, or whatever the engine
      uses), besides ``.numpy()`` views of what is on the host already;
    * on CUDA, one synchronisation.

    And a check step is where the engine says: the door's readings are at
    :meth:`Door.expected_readings` (N-1, 2N-1, ... counted from 0; N, 2N, ... from 1), and
    the extra work happens in the optimizer steps of exactly those readings.
    """
    verdict = Verdict([], [], [])
    name = door.name
    expected = door.expected_readings(every_n, steps)
    if with_.readings != expected:
        verdict.schedule.append(f"{name}: the door read at steps {with_.readings}, the engine's schedule says "
                                f"{expected}")
    for rec in (without, with_):
        if len(rec.steps) != steps:
            verdict.schedule.append(f"{name} ({'with' if rec.with_door else 'without'} door): the log was cut "
                                    f"into {len(rec.steps)} optimizer steps, the run took {steps}")
    if verdict.schedule:
        return verdict
    checks = {s - door.first_step for s in with_.readings}  # 0-based optimizer step of each reading
    for k, (a, b) in enumerate(zip(without.steps, with_.steps)):
        at = f"{name} optimizer step {k} (0-based; the door's step {k + door.first_step})"
        if k in checks:
            verdict.check.extend(_check_step_problems(at, a, b, with_.device, door.attention))
        else:
            verdict.off_check.extend(_off_check_problems(at, a, b))
    return verdict


class Verdicts:
    """Each door's :class:`Verdict`, recorded once (for a module-scoped fixture shared by its tests).

    ``make_dir(name)`` gives a fresh directory, e.g. pytest's ``tmp_path_factory.mktemp``.
    """

    def __init__(self, make_dir: Callable[[str], Path], device: str, every_n: int, steps: int) -> None:
        self.make_dir, self.device, self.every_n, self.steps = make_dir, device, every_n, steps
        self.done: Dict[str, Tuple[Recording, Recording, Verdict]] = {}

    def __call__(self, door: Door) -> Verdict:
        if door.name not in self.done:
            without, with_ = record_pair(door, self.every_n, self.steps, self.device, self.make_dir(door.name))
            self.done[door.name] = (without, with_, compare(door, without, with_, self.every_n, self.steps))
        return self.done[door.name][2]


def _off_check_problems(at: str, a: Step, b: Step) -> List[str]:
    problems = []
    if b.tracked_forwards:
        problems.append(f"{at}: {b.tracked_forwards} forward(s) computed the clamp fraction off a check step")
    if a.aten != b.aten:
        extra, missing = _difference(a.aten, b.aten)
        problems.append(f"{at} is no check step, but its tensor work differs with the door:\n"
                        f"    extra with the door:\n      {_ops(extra)}\n"
                        f"    missing with the door:\n      {_ops(missing)}")
    if a.host != b.host:
        more, fewer = Counter(b.host) - Counter(a.host), Counter(a.host) - Counter(b.host)
        problems.append(f"{at} is no check step, but its host reads differ: with the door {dict(more) or 'none'} "
                        f"more, {dict(fewer) or 'none'} fewer (in order: without {a.host}, with {b.host})")
    if a.syncs != b.syncs:
        problems.append(f"{at} is no check step, but it synchronises {b.syncs} time(s) with the door, "
                        f"{a.syncs} without")
    return problems


def _check_step_problems(at: str, a: Step, b: Step, device: str, attention: bool = False) -> List[str]:
    problems = []
    if not _is_subsequence(a.aten, b.aten):
        _, missing = _difference(a.aten, b.aten)
        return [f"{at}: a check step may only add to the training's tensor work; with the door it lacks or "
                f"reorders:\n      {_ops(missing)}"]
    extra, _ = _difference(a.aten, b.aten)
    if b.tracked_forwards == 0:
        problems.append(f"{at}: no forward of this check step computed the clamp fraction")
    inside = Counter(op.name for op in extra if op.in_scale)
    statistic = Counter({op: n * b.tracked_forwards for op, n in clamp_fraction_ops(device).items()})
    if inside != statistic:
        problems.append(f"{at}: inside the generator forwards the door added {dict(inside)}; the clamp-fraction "
                        f"statistic of {b.tracked_forwards} forward(s) is {dict(statistic)}")
    extra_host = list((Counter(b.host) - Counter(a.host)).elements())
    statistics = [op for op in extra if op.in_attention]
    if attention and not statistics:
        problems.append(f"{at}: the door runs with attention=, but this check step computed no attention statistic")
    elif statistics and not attention:
        problems.append(f"{at}: attention statistics were computed without attention=:\n      {_ops(statistics)}")
    outside = [op for op in extra if not op.in_scale and not op.in_attention]
    gathers = [op for op in outside if op.name in GATHER_OPS]
    flattened = [op for op in outside if op.name == GATHER_VIEW_OP and op.args.endswith(", -1")]
    transfers = [op for op in outside if op.name == TRANSFER_OP and op.out.endswith("@cpu")
                 and not op.args.split(",")[0].endswith("@cpu")]
    views = [op for op in outside if op.name == HOST_VIEW_OP and op.args.endswith("@cpu")]
    views = views[:extra_host.count(HOST_VIEW)]  # one per extra .numpy()
    allowed = {id(op) for op in gathers + flattened + transfers + views}
    rest = [op for op in outside if id(op) not in allowed]
    off_host = device != "cpu"
    if len(gathers) != 1 or len(transfers) != int(off_host) or rest:
        problems.append(f"{at}: a check may add one gather{', one device-to-host copy' if off_host else ''} and "
                        f"the .numpy() view of it, nothing else; it added:\n      {_ops(outside)}")
    if not _is_subsequence(a.host, b.host):
        problems.append(f"{at}: with the door, host reads of the training are missing or reordered: "
                        f"without {a.host}, with {b.host}")
    elif sum(map(is_transfer, extra_host)) != 1:
        problems.append(f"{at}: a check may read the host once (one transfer); it added the host reads "
                        f"{extra_host}")
    if device == "cuda" and b.syncs - a.syncs != 1:
        problems.append(f"{at}: a check may synchronise once; with the door it synchronised {b.syncs} time(s), "
                        f"{a.syncs} without")
    return problems


def _difference(a: Sequence[Op], b: Sequence[Op]) -> Tuple[List[Op], List[Op]]:
    """(in ``b`` not ``a``, in ``a`` not ``b``) as multisets, in ``b``'s / ``a``'s order."""
    more, fewer = Counter(b) - Counter(a), Counter(a) - Counter(b)
    extra, missing = [], []
    for op in b:
        if more[op] > 0:
            more[op] -= 1
            extra.append(op)
    for op in a:
        if fewer[op] > 0:
            fewer[op] -= 1
            missing.append(op)
    return extra, missing


# ---- the doors ------------------------------------------------------------------------
#
# Each runner builds the same seeded model and trainer with and without the door and wraps
# the training call in ``run.record()``. The doors run with their defaults but ``plot=False``:
# the plot is drawn at the end of training, after the last optimizer step (the recording's
# ``tail``, which is not compared), and drawing it would only cost time here.

class PlainDrift(nn.Module):
    """The tests' DriftModel as a bare ``nn.Module``: SGD pushes the bias scale up."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Module()
        self.head.attention_bias_generator = AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0)
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.proj(x)).unsqueeze(-1).expand(-1, -1, 8)  # [B, Q, K] in (0, 1)
        bias = self.head.attention_bias_generator(weights)
        return -bias.float().mean() + 0.01 * self.proj.weight.pow(2).sum()


class PlainAttentionDrift(nn.Module):
    """Multi-head attention whose bias (a bias generator's) goes into ``F.scaled_dot_product_attention``
    as its float ``attn_mask``, as in the fusion example."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = 2
        self.qkv = nn.Linear(8, 24)
        self.router = nn.Linear(8, 4)  # one weight per key of the 4 tokens
        self.attention_bias_generator = AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(0)  # the plain loop's [4, 8] batch as one sequence of 4 tokens
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, 4).permute(2, 0, 3, 1, 4)  # each [B, H, N, 4]
        bias = self.attention_bias_generator(torch.tanh(self.router(x)))  # [B, N, N]
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(1))
        return -bias.float().mean() + out.pow(2).mean()


def run_plain(run: DoorRun, attention: bool = False) -> Any:
    from scalewatch.callbacks import ScaleWatcher

    torch.manual_seed(0)
    model = (PlainAttentionDrift() if attention else PlainDrift()).to(run.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.randn(run.steps, 4, 8, generator=torch.Generator().manual_seed(0)).to(run.device)
    watcher = (ScaleWatcher(model, log_dir=run.root, every_n_steps=run.every_n, plot=False, attention=attention)
               if run.with_door else None)
    with run.record():
        for step in range(run.steps):
            loss = model(data[step])
            loss.backward()
            if watcher is not None:
                watcher.step(step)  # after backward, before the optimizer step
            opt.step()
            opt.zero_grad()
        if watcher is not None:
            watcher.close()
    return watcher


@functools.lru_cache(maxsize=None)
def _progress_bar_drift(package: str) -> type:
    """tests/models.py's DriftModel (``self.log("loss")`` every step) that also shows its loss in
    the progress bar, as most LightningModules do."""
    from models import modules_for

    class ProgressBarDrift(modules_for(package)[0]):  # type: ignore[misc, valid-type]
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            self.log("train_loss", loss, prog_bar=True)
            return loss

    return ProgressBarDrift


def run_lightning(package: str) -> Runner:
    def run(run: DoorRun) -> Any:
        from scalewatch.callbacks import ScaleMonitor

        pl = importlib.import_module(package)
        loggers = importlib.import_module(f"{package}.loggers")
        torch.manual_seed(0)
        model = _progress_bar_drift(package)()
        monitor = ScaleMonitor(every_n_steps=run.every_n, plot=False) if run.with_door else None
        # The same trainer either way: a TensorBoard logger logging every N steps (the door's
        # default N), the progress bar on (the door shows the scale there on checks).
        trainer = pl.Trainer(accelerator="cuda" if run.device == "cuda" else "cpu", devices=1,
                             max_steps=run.steps, default_root_dir=str(run.root),
                             logger=loggers.TensorBoardLogger(str(run.root)), log_every_n_steps=run.every_n,
                             enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=True,
                             callbacks=[monitor] if monitor is not None else [])
        with run.record():
            trainer.fit(model)
        return monitor.watcher if monitor is not None else None

    return run


def run_hf(run: DoorRun) -> Any:
    from hf_models import hf_trainer
    from scalewatch.callbacks.hf import ScaleMonitorCallback

    callback = ScaleMonitorCallback(every_n_steps=run.every_n, plot=False) if run.with_door else None
    # The same Trainer either way (seeded inside): TensorBoard, the loss logged every N steps.
    trainer = hf_trainer(run.root, [callback] if callback is not None else [], report_to=("tensorboard",),
                         max_steps=run.steps, logging_steps=run.every_n, use_cpu=run.device == "cpu")
    with run.record():
        trainer.train()
    return callback.watcher if callback is not None else None


def run_mmengine(run: DoorRun) -> Any:
    from unittest import mock

    from mmengine_models import DriftNet, make_runner
    from scalewatch.callbacks.mmengine import ScaleMonitorHook

    torch.manual_seed(0)
    # mmengine puts the model on the GPU by itself when there is one: put it where asked.
    with mock.patch("mmengine.runner.runner.get_device", lambda: run.device):
        runner = make_runner(str(run.root), hook=dict(interval=run.every_n, plot=False) if run.with_door else None,
                             max_iters=run.steps, log_interval=run.every_n, model=DriftNet(),
                             name=f"silence-{uuid.uuid4().hex[:12]}", randomness=dict(seed=0))
        with run.record():
            runner.train()
    hooks = [h for h in runner.hooks if isinstance(h, ScaleMonitorHook)]
    return hooks[0].watcher if hooks else None


def run_ignite(run: DoorRun) -> Any:
    from ignite.engine import create_supervised_trainer

    from scalewatch.callbacks import ScaleMonitorHandler

    torch.manual_seed(0)
    model = PlainDrift().to(run.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.randn(run.steps, 4, 8, generator=torch.Generator().manual_seed(0))
    # PlainDrift's forward is its loss: Ignite's loss_fn hands it on
    trainer = create_supervised_trainer(model, opt, lambda loss, _: loss, device=run.device)
    handler = (ScaleMonitorHandler(model, opt, log_dir=str(run.root), every_n_steps=run.every_n, plot=False)
               if run.with_door else None)
    if handler is not None:
        handler.attach(trainer)
    with run.record():
        trainer.run([(x, torch.zeros(())) for x in data], max_epochs=1)
    return handler.watcher if handler is not None else None


#: every front door: name -> how it numbers steps and how to train through it.
#: A new door (Ignite, Accelerate, a sharded path, ``attention=``) joins with one line here.
DOORS: Dict[str, Door] = {door.name: door for door in (
    Door("plain-loop", 0, run_plain),
    Door("plain-loop+attention", 0, functools.partial(run_plain, attention=True), attention=True),
    Door("lightning.pytorch", 0, run_lightning("lightning.pytorch"), needs=("lightning",)),
    Door("pytorch_lightning", 0, run_lightning("pytorch_lightning"), needs=("pytorch_lightning",)),
    Door("hf-transformers", 1, run_hf, needs=("transformers",)),
    Door("mmengine", 1, run_mmengine, needs=("mmengine",)),
    Door("ignite", 1, run_ignite, needs=("ignite",)),
)}


#: check-step work of a door that is a known product bug, not the door's contract: the
#: check-step tests are expected to fail for that door until the bug is fixed (strict, so a
#: fix shows as XPASS and the entry must go)
#: doors whose check step does more than the one gather and transfer, with why (a strict xfail each)
KNOWN_CHECK_STEP_BUGS: Dict[str, str] = {}


def door_params(known_bugs: Optional[Dict[str, str]] = None) -> List[Any]:
    """The doors as pytest parameters, each skipped (with the reason) when its framework is
    missing; a door named in ``known_bugs`` is a strict xfail with that reason."""
    import pytest

    params = []
    for door in DOORS.values():
        marks = [pytest.mark.skipif(not door.available(), reason=f"{door.name} needs {', '.join(door.needs)}")]
        if known_bugs and door.name in known_bugs:
            marks.append(pytest.mark.xfail(strict=True, raises=AssertionError,
                                           reason=f"product bug: {known_bugs[door.name]}"))
        params.append(pytest.param(door, id=door.name, marks=marks))
    return params
