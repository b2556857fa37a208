"""What the benchmarks share: the model, the monitoring variants' pieces, timing and the machine.

The model is a small transformer encoder (2 layers) whose attention logits get an
additive bias from an :class:`AttentionBiasGenerator` in every layer, the way the
fusion detector uses it. On these CPUs one optimizer step (AdamW) takes a few
milliseconds, so fixed per-step costs of a few tens of microseconds show up as
ratios of a few per mille, which is what the targets are about.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import platform
import statistics
import time
import warnings
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.data import DataLoader, Sampler, TensorDataset

from scalewatch.monitor import AttentionBiasGenerator
from scalewatch.monitor.bounded_scale import BoundedScale

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

#: the period every periodic cost in the overhead comparison shares (ScaleMonitor N=50,
#: Lightning's log_every_n_steps, wandb.watch log_freq): step times are averaged over
#: blocks of exactly this many steps, so each block holds one of each periodic event.
PERIOD = 50


def quiet() -> None:
    """Silence Lightning's per-fit banners and the warnings the benchmark runs trigger on purpose."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric", "scalewatch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for pattern in (".*does not have many workers.*", ".*GPU available but not used.*",
                    ".*smaller than the logging interval.*", ".*found no bounded scale.*",
                    ".*treating them as a.*", ".*`max_epochs` was not set.*"):
        warnings.filterwarnings("ignore", message=pattern)


def machine() -> Dict[str, Any]:
    """Where the numbers were taken: CPU model, cores, threads, versions, accelerator."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: Dict[str, Any] = {
        "cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__, "pytorch_lightning": pl.__version__,
        "platform": platform.platform(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["load_average_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def describe_machine(info: Dict[str, Any]) -> str:
    where = f"{info['cpu']}, {info['logical_cpus']} logical CPUs, torch threads={info['torch_threads']}"
    if info.get("cuda"):
        where = f"{info['cuda']} (host: {where})"
    return f"{where}; torch {info['torch']}, pytorch_lightning {info['pytorch_lightning']}, Python {info['python']}"


# ---- the model -------------------------------------------------------------------------------


def report(result: Dict[str, Any], title: str, table: str, json_path: Any) -> int:
    """Print one benchmark's table under a title naming the machine, and write its JSON."""
    import json

    result["machine"] = machine()
    print(f"\n{title} ({describe_machine(result['machine'])})\n")
    print(table)
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


def no_monitoring_work(model: nn.Module) -> None:
    """Switch off the per-forward statistics bounded scales keep for a monitor (the clamp fraction).

    A generator computes it in every forward unless a monitor says otherwise
    (ScaleMonitor turns it on for check steps only). The baseline does no
    monitoring work at all, so the monitor is charged for all of it.
    """
    for module in model.modules():
        if isinstance(module, BoundedScale) and hasattr(module, "track_clamp_fraction"):
            module.track_clamp_fraction = False


class BiasedEncoderLayer(nn.Module):
    """Pre-norm encoder layer whose attention logits get ``generator(router weights)`` added.

    Router weights in [-1, 1] per query-key pair (``tanh`` of a scaled dot product of
    a small routing projection) stand in for the AQR weights of the fusion detector.
    """

    def __init__(self, d_model: int, heads: int, ff: int, route: int, generator_cls: type) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.router = nn.Linear(d_model, route)
        self.attention_bias_generator = generator_cls(bias_scale=2.5, learnable_scale=True, min_scale=0.5,
                                                      max_scale=5.0, use_local_bias=True, fp16=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, ff), nn.GELU(), nn.Linear(ff, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.norm1(x)
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        r = self.router(h)
        weights = torch.tanh(r @ r.transpose(-1, -2) / math.sqrt(r.shape[-1]))  # [B, Q, K] in [-1, 1]
        bias = self.attention_bias_generator(weights).unsqueeze(1).to(q.dtype)  # [B, 1, Q, K]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = x + self.out(a.transpose(1, 2).reshape(b, n, d))
        return x + self.ff(self.norm2(x))


class Encoder(nn.Module):
    """A 2-layer encoder regressing a target from a token sequence; one bias generator per layer.

    Plain ``nn.Module``: what the plain-loop benchmark trains. :class:`BenchEncoder`
    is the same model as a LightningModule.
    """

    generator_cls: type = AttentionBiasGenerator

    def __init__(self, features: int = 16, d_model: int = 64, heads: int = 4, ff: int = 128, route: int = 16,
                 layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(features, d_model)
        self.layers = nn.ModuleList(BiasedEncoderLayer(d_model, heads, ff, route, self.generator_cls)
                                    for _ in range(layers))
        self.head = nn.Linear(d_model, 1)
        no_monitoring_work(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(h.mean(dim=1)).squeeze(-1)

    def generators(self) -> List[AttentionBiasGenerator]:
        return [layer.attention_bias_generator for layer in self.layers]


class BenchEncoder(Encoder, pl.LightningModule):
    """:class:`Encoder` as a LightningModule (same parameters and names), trained with AdamW."""

    def __init__(self, lr: float = 1e-3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lr = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


class RandomPrintBiasGenerator(AttentionBiasGenerator):
    """The approach scalewatch replaces: forward prints the scale on 0.1% of calls, at random.

    ``torch.rand(1).item()`` runs on every forward pass; on a GPU the ``.item()`` of
    the scale (and on the sampled calls ``self.scale.item()``) waits for the device.
    Lines go to ``os.devnull`` so the benchmark's table stays readable; at 0.1% the
    printing itself is not what costs.
    """

    sink = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    #: the benchmark switches it off for the blocks it compares against
    enabled = True

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        if self.enabled and self.training and torch.rand(1).item() < 0.001:
            scale = self.scale.item()
            print(f"📊 Bias scale: {scale:.3f} (range: [{self.min_scale}, {self.max_scale}])", file=self.sink)
            if scale > 0.9 * self.max_scale:
                print("⚠️ Scale near upper bound!", file=self.sink)
        return super().forward(weights)


class _Cycle(Sampler):
    """Indices 0..n-1 over and over: one endless epoch, no epoch boundary inside the timing."""

    def __init__(self, n: int, length: int) -> None:
        self.n, self.length = n, length

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(itertools.cycle(range(self.n)), self.length)

    def __len__(self) -> int:
        return self.length


def cycled_data(steps: int, batch_size: int = 8, samples: int = 4096, seq: int = 32, features: int = 16) -> DataLoader:
    """``steps`` batches drawn in order from a fixed random set, as one epoch."""
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(samples, seq, features, generator=g), torch.randn(samples, generator=g))
    return DataLoader(data, batch_size=batch_size, sampler=_Cycle(samples, steps * batch_size))


def trainer_kwargs(root: str, max_steps: int, accelerator: str = "auto") -> Dict[str, Any]:
    """The same Trainer for every variant: only callbacks, loggers and the model differ."""
    return dict(accelerator=accelerator, devices=1, max_steps=max_steps, default_root_dir=root,
                enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                log_every_n_steps=PERIOD, num_sanity_val_steps=0)


# ---- timing ----------------------------------------------------------------------------------


class StepClock:
    """Wall and CPU time of every step, ticked at each step's start; averaged per block of ``period`` steps.

    Framework-free: a plain loop ticks it at the top of each iteration, a trainer
    from a hook at each batch's start (:class:`StepTimer`). The interval from one
    tick to the next holds everything the loop does for a step. CPU time is this
    process's (all its threads) plus, at block boundaries, its child processes'
    (wandb's service process does its writing there). On a GPU each tick
    synchronizes, so device time is not hidden in a queue.
    """

    def __init__(self, warmup: int = 0, period: int = PERIOD) -> None:
        self.warmup = warmup
        self.period = period
        self.starts: List[float] = []
        self.cpu: List[float] = []
        self.child_cpu: Dict[int, float] = {}
        #: step index -> (wall, cpu) seconds spent by the benchmark's own machinery in that step
        self.excluded: Dict[int, Tuple[float, float]] = {}
        self._children: List[Any] = []

    def watch_children(self) -> None:
        """Count the CPU time of the child processes that exist now (call once the loop's services run)."""
        import psutil

        self._children = psutil.Process().children(recursive=True)

    def _children_cpu(self) -> float:
        total = 0.0
        for child in self._children:
            try:
                t = child.cpu_times()
                total += t.user + t.system
            except Exception:  # a child that ended: its time is no longer ours to count
                pass
        return total

    def tick(self, device: torch.device) -> None:
        """A step starts now."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        i = len(self.starts)
        if self._children and i >= self.warmup and (i - self.warmup) % self.period == 0:
            self.child_cpu[i] = self._children_cpu()
        self.cpu.append(time.process_time())
        self.starts.append(time.perf_counter())

    def exclude(self, step_index: int, wall: float, cpu: float) -> None:
        """Leave ``wall``/``cpu`` seconds the harness spent in step ``step_index`` out of its time."""
        w, c = self.excluded.get(step_index, (0.0, 0.0))
        self.excluded[step_index] = (w + wall, c + cpu)

    def step_times(self) -> List[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:])]

    def blocks(self, blocks: int) -> Dict[str, List[float]]:
        """Per block of ``period`` steps after the warm-up: mean wall and CPU seconds per step."""
        wall, cpu = [], []
        for k in range(blocks):
            a, b = self.warmup + k * self.period, self.warmup + (k + 1) * self.period
            wall.append((self.starts[b] - self.starts[a]) / self.period)
            kids = self.child_cpu.get(b, 0.0) - self.child_cpu.get(a, 0.0)
            skip_w = sum(self.excluded.get(i, (0.0, 0.0))[0] for i in range(a, b))
            skip_c = sum(self.excluded.get(i, (0.0, 0.0))[1] for i in range(a, b))
            wall[-1] -= skip_w / self.period
            cpu.append((self.cpu[b] - self.cpu[a] + kids - skip_c) / self.period)
        return {"wall": wall, "cpu": cpu}


class StepTimer(StepClock, Callback):
    """A :class:`StepClock` ticked by Lightning: from one batch's start to the next one's.

    That interval holds everything the loop does for a step: fetching the batch,
    forward, backward, every callback hook, the optimizer, and the logger writes
    Lightning does after ``on_train_batch_end``.
    """

    def on_train_start(self, trainer, pl_module) -> None:
        self.watch_children()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.tick(pl_module.device)


def spread(values: Sequence[float], seed: int = 0, resamples: int = 2000) -> Dict[str, float]:
    """min / median / max, and a bootstrap 95% interval of the median (how well the median is pinned down)."""
    import random

    rng = random.Random(seed)
    values = list(values)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values),
            "median_ci95": [medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]]}


#: what each block's step time is measured in: CPU time (this process and its children) and wall time
METRICS = ("cpu", "wall")


def neighbour_ratios(seq: Sequence[Dict[str, Any]], variants: Sequence[str]) -> Dict[str, Dict[str, List[float]]]:
    """Ratio of every variant entry to the mean of the baseline entries on either side of it, per clock."""
    out: Dict[str, Dict[str, List[float]]] = {m: {v: [] for v in variants} for m in METRICS}
    for i, entry in enumerate(seq):
        if entry["variant"] == "baseline":
            continue
        before = next(e for e in reversed(seq[:i]) if e["variant"] == "baseline")
        after = next(e for e in seq[i + 1:] if e["variant"] == "baseline")
        for m in METRICS:
            out[m][entry["variant"]].append(entry[m] / statistics.fmean([before[m], after[m]]))
    return out


def ratio_row(variant: str, label: str, comparison: str, entries: List[Dict[str, Any]],
              ratios: "Dict[str, Dict[str, List[float]]] | None", n: int) -> Dict[str, Any]:
    """One table row: median ms/step per clock and the spread of the variant's ratios (1 for the baseline)."""
    row: Dict[str, Any] = {"variant": variant, "label": label, "comparison": comparison}
    for m in METRICS:
        row[f"{m}_ms"] = statistics.median(e[m] for e in entries) * 1e3
        row[f"{m}_ratio"] = (spread(ratios[m][variant]) if ratios else
                             {"min": 1.0, "median": 1.0, "max": 1.0, "n": n, "median_ci95": [1.0, 1.0]})
    return row


def ratio_table(result: Dict[str, Any], hook_column: str = "in-hook") -> str:
    """An A/B result's rows as Markdown: the primary clock's ratios, the other clock's median, the direct account."""
    p = result.get("primary_metric", "cpu")
    other = "wall" if p == "cpu" else "cpu"
    lines = [f"| variant | {p} ms/step | {p} ratio min / **median** / max | 95% CI of the median "
             f"| {other} ratio median | {hook_column} |", "|---|---:|---:|---:|---:|---:|"]
    comparison = None
    for row in result["rows"]:
        if row["comparison"] != comparison:
            comparison = row["comparison"]
            lines.append(f"| *comparison {comparison}* | | | | | |")
        r, o = row[f"{p}_ratio"], row[f"{other}_ratio"]
        lo, hi = r["median_ci95"]
        hook = f"{row['in_hook']['ratio']:.4f}" if "in_hook" in row else ""
        base = row["variant"] == "baseline"
        lines.append(f"| {row['label']} | {row[f'{p}_ms']:.2f} | "
                     + ("1 (n=%d)" % r["n"] if base else f"{r['min']:.3f} / **{r['median']:.3f}** / {r['max']:.3f}")
                     + " | " + ("" if base else f"{lo:.3f} - {hi:.3f}") + " | "
                     + ("" if base else f"{o['median']:.3f}") + f" | {hook} |")
    return "\n".join(lines)


def with_in_hook(row: Dict[str, Any], account: Dict[str, Any], base_wall_ms: float) -> Dict[str, Any]:
    """``row`` with its direct account: seconds per step inside the monitor, as 1 + that / the baseline step."""
    return dict(row, in_hook=dict(account, ratio=1 + account["hook_s_per_step"] * 1e3 / base_wall_ms))


# ---- the engine's record path ----------------------------------------------------------------


def observe_record(watcher: Any, observe: Callable[[int, List[Any], List[Any], float], None]) -> None:
    """Call ``observe(step, readings, alerts, seconds)`` after each pass of ``watcher``'s record path.

    The record path is :meth:`ScaleWatcher._record` (the loggers and the history
    line). Wrapped on this one instance, so other watchers and what the path does
    stay as they are.
    """
    record = watcher._record

    # Whatever else the engine passes along (it may grow arguments) goes through untouched.
    def observed(step: int, readings: List[Any], alerts: List[Any], *more: Any, **kw: Any) -> None:
        t0 = time.perf_counter()
        record(step, readings, alerts, *more, **kw)
        observe(step, readings, alerts, time.perf_counter() - t0)

    watcher._record = observed


# ---- host reads --------------------------------------------------------------------------------

#: Tensor methods that hand a value to Python, i.e. that wait for the device on a GPU
_HOST_READS = {"item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__",
               "__complex__", "__array__"}
#: factories: without a ``device=`` they make a host tensor (the default device is the CPU)
_FACTORIES = {"tensor", "as_tensor", "from_numpy", "scalar_tensor", "rand", "randn", "randint", "zeros", "ones",
              "full", "empty", "arange", "linspace", "eye"}


def _tensors(obj: Any) -> List[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _tensors(item)]
    return []


class HostReadCounter(TorchFunctionMode):
    """Counts device-to-host reads: the calls that would synchronize with a GPU.

    On a CPU nothing synchronizes, so this counts the calls instead: ``.cpu()``,
    ``.item()``, ``.tolist()``, ``.numpy()`` and ``float()``/``int()``/``bool()`` of a
    tensor that lives on the "device" (the model's tensors). What is already on the
    host is not counted: a tensor returned by ``.cpu()``, one made by a factory
    without a ``device=`` (``torch.tensor([...])``, ``torch.rand(1)``: the default
    device is the CPU) and whatever is computed from such tensors alone
    (``torch.stack(values).cpu().tolist()`` is one transfer). ``.to(device)`` is not
    counted: on a CPU-only machine it cannot tell a move to the host from staying
    on the tensor's own device.
    """

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.calls: Dict[str, int] = {}
        self._on_host: Dict[int, "weakref.ref[torch.Tensor]"] = {}

    def _is_host(self, t: torch.Tensor) -> bool:
        known = self._on_host.get(id(t))
        return known is not None and known() is t

    def _mark(self, result: Any) -> None:
        for t in _tensors(result):
            self._on_host[id(t)] = weakref.ref(t)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        inputs = _tensors(args) + _tensors(kwargs)
        if name in _HOST_READS and args and isinstance(args[0], torch.Tensor):
            if not self._is_host(args[0]):
                self.count += 1
                self.calls[name] = self.calls.get(name, 0) + 1
            if name == "cpu":
                self._mark(result)
        elif ((name in _FACTORIES and kwargs.get("device") in (None, "cpu", torch.device("cpu")))
              or (inputs and all(self._is_host(t) for t in inputs))):
            self._mark(result)
        return result


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


class LiveBytes(TorchDispatchMode):
    """Peak bytes held at once by the tensors that operations return (in-place results and views of
    an input are not counted again), while ``counts()`` is true (default: always).

    What an op log can say of memory on any device: the kernels' own scratch, which no op
    returns, is left out.
    """

    def __init__(self, counts: Optional[Callable[[], bool]] = None) -> None:
        super().__init__()
        self.counts = counts
        self.live = self.peak = 0
        self._seen: set = set()

    def _free(self, key: int, n: int) -> None:
        self.live -= n
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.counts is not None and not self.counts():
            return out
        # a view (expand, slice, transpose: no _base at this level) shares an input's storage
        inputs = {a.untyped_storage().data_ptr() for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                key = t.untyped_storage().data_ptr()
                if key and key not in self._seen and key not in inputs:
                    n = t.untyped_storage().nbytes()
                    self._seen.add(key)
                    self.live += n
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, key, n)
        return out


class WatcherBlocks:
    """The interleaved schedule of a plain-loop benchmark: ``W`` (warm-up) + ``rounds`` x ``B W`` + ``B``
    blocks of :data:`PERIOD` steps, ``W`` calling ``watcher.step``, ``B`` not calling it at all.

    With the watcher's ``every_n_steps=PERIOD`` each ``W`` block holds exactly one check, and the
    step before it (which arms the next check's forwards) is in the same block. The loop asks
    :meth:`calls` at each step and times its ``watcher.step`` through :meth:`step`; :meth:`blocks`
    gives each timed block's mean step time from a :class:`StepClock` ticked at every step.
    """

    def __init__(self, rounds: int, variant: str) -> None:
        self.variant = variant
        self.rounds = rounds
        self.schedule = [variant] + ["baseline", variant] * rounds + ["baseline"]
        #: +1: the last block's last step ends at the next tick
        self.steps = len(self.schedule) * PERIOD + 1
        self.in_step = 0.0  # seconds inside watcher.step in the timed (not warm-up) blocks
        self.check_s: List[float] = []  # each timed check step's watcher.step

    def calls(self, step: int) -> bool:
        """Whether the loop calls ``watcher.step`` at ``step`` (a ``W`` block)."""
        block = step // PERIOD
        return block < len(self.schedule) and self.schedule[block] == self.variant

    def step(self, watcher: Any, step: int, call: bool = True) -> None:
        """``watcher.step(step)`` (unless ``call`` is False: an A/A control), timed past the warm-up block."""
        t0 = time.perf_counter()
        if call:
            watcher.step(step)
        took = time.perf_counter() - t0
        if step >= PERIOD:
            self.in_step += took
            if call and watcher.last_step == step:  # it read: a check step
                self.check_s.append(took)

    def check(self, watcher: Any, called: bool = True) -> None:
        """One check in each ``W`` block and none elsewhere (none at all for a control that never called it)."""
        expected = self.schedule.count(self.variant) if called else 0
        if watcher.checks != expected:
            raise RuntimeError(f"{watcher.checks} checks in {self.schedule.count(self.variant)} watcher blocks")

    def hook_s_per_step(self) -> float:
        return self.in_step / (PERIOD * self.rounds)

    def blocks(self, clock: "StepClock") -> List[Dict[str, Any]]:
        """``{"variant", "cpu", "wall"}`` of each block after the warm-up: its mean step times."""
        if len(clock.starts) < self.steps:
            raise RuntimeError(f"only {len(clock.starts)} of {self.steps} steps were timed")
        per_block = clock.blocks(len(self.schedule) - 1)
        return [{"variant": v, "cpu": c, "wall": w}
                for v, c, w in zip(self.schedule[1:], per_block["cpu"], per_block["wall"])]
