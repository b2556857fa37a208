"""Wrapped and sharded models: the model's own names, and full values in one collective per check.

Large models train wrapped (DDP, DeepSpeed's engine, ``torch.compile``, FSDP1, activation
checkpointing) and sharded (FSDP2's ``fully_shard``, FSDP1, DeepSpeed ZeRO-3). Two things
follow for a watcher, and both live here:

* **Names.** Wrappers rename every parameter (``module.``, ``_orig_mod.``,
  ``_fsdp_wrapped_module.``, ``_checkpoint_wrapped_module.``). :func:`named_modules` and
  :func:`named_tensors` walk a model looking through them, so the names are the model's
  own whatever wraps it, and a wrapped run's record lines up with an unwrapped one's.
* **Values.** A sharded scale is spread over the ranks: a ``DTensor`` (FSDP2; a 1-element
  scale lives on rank 0, the others hold an empty shard), a view into a rank's slice of a
  flat parameter (FSDP1), an empty ``(0,)`` tensor whose slice lives in the optimizer's
  fp32 partition (ZeRO-3). :class:`DistributedReader` reads every watched value, gradient
  and clamp fraction of a check into one buffer in which each rank fills the elements it
  holds (zeros elsewhere) and sums it over the ranks with ONE ``all_reduce``: every rank
  then holds the full values, exactly (a value plus zeros), and takes the same decisions.
  Replicated values (DDP) come from rank 0; clamp fractions, computed by each rank on its
  own batch, are averaged. Off check steps nothing here runs.

A collective never hangs silently: every rank agrees once (when the watcher is built)
on what it watches, each check carries the step and what it reads, and a rank that does
not come to a check within :data:`COLLECTIVE_TIMEOUT_ENV` seconds (default
:data:`DEFAULT_COLLECTIVE_TIMEOUT`) is named in a ``RuntimeError`` on the ranks that wait.
"""
from __future__ import annotations

import datetime
import functools
import math
import os
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from scalewatch.monitor.bounded_scale import BoundedScale
from scalewatch.monitor.reading import Reading, reading_from_values

__all__ = ["COLLECTIVE_TIMEOUT_ENV", "DEFAULT_COLLECTIVE_TIMEOUT", "DistributedReader", "ScaleGatherError",
           "global_shape", "is_sharded", "make_shardable", "named_modules", "named_tensors", "rebind"]

#: environment variable: seconds a rank waits in a check's collective for the others
COLLECTIVE_TIMEOUT_ENV = "SCALEWATCH_COLLECTIVE_TIMEOUT"
#: default of :data:`COLLECTIVE_TIMEOUT_ENV`
DEFAULT_COLLECTIVE_TIMEOUT = 300.0
#: after a timeout, how long the waiting ranks give each other to say they are there
_ROLL_CALL_SECONDS = 2.0

#: wrapper class name (anywhere in the MRO, defined in one of _WRAPPER_PACKAGES) -> the
#: attribute(s) holding the wrapped module, whose path segment the model's own names leave out
_WRAPPERS: Dict[str, Tuple[str, ...]] = {
    "DistributedDataParallel": ("module",),          # torch DDP (and mmengine's MMDistributedDataParallel)
    "DataParallel": ("module",),
    "DeepSpeedEngine": ("module",),
    "OptimizedModule": ("_orig_mod",),               # torch.compile
    "FullyShardedDataParallel": ("_fsdp_wrapped_module",),  # FSDP1
    "ActivationWrapper": ("_checkpoint_wrapped_module",),   # checkpoint_wrapper / offload_wrapper
    "_FabricModule": ("_forward_module", "_original_module"),
    "_LightningModuleWrapperBase": ("_forward_module",),
}
_WRAPPER_PACKAGES = ("torch.", "deepspeed.", "lightning.", "pytorch_lightning.", "lightning_fabric.", "mmengine.")


class ScaleGatherError(RuntimeError):
    """The ranks could not read the watched scales together (a rank missing, diverging, or no process group)."""


# ---- names ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _wrapped_children(cls: type) -> Tuple[str, ...]:
    for klass in cls.__mro__:
        names = _WRAPPERS.get(klass.__name__)
        if names and klass.__module__.startswith(_WRAPPER_PACKAGES):
            return names
    return ()


def named_modules(root: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``root.named_modules()`` with the model's own paths: wrappers' segments left out.

    ``DDP(model)``, ``torch.compile(model)``, ``FSDP(model)``, a DeepSpeed engine and
    ``checkpoint_wrapper(block)`` give the paths ``model`` itself gives (a wrapper shares
    the path of the module it wraps). Pre-order, each module once, as torch's.
    """
    out: List[Tuple[str, nn.Module]] = []
    seen: set = set()
    stack: List[Tuple[str, nn.Module]] = [("", root)]
    while stack:
        path, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        out.append((path, module))
        through = _wrapped_children(type(module))
        children = [(path if name in through else (f"{path}.{name}" if path else name), child)
                    for name, child in module._modules.items() if child is not None]
        stack.extend(reversed(children))
    return out


@dataclass(frozen=True)
class NamedTensor:
    """A parameter or buffer as the model's author names it, and where it is registered."""

    name: str
    tensor: Tensor
    owner: nn.Module
    attr: str
    #: the full (unsharded) shape
    shape: Tuple[int, ...]


def _fsdp1_handles(modules: Iterable[nn.Module]) -> Dict[Tuple[int, str], Tuple[Any, int]]:
    """``(id(owner module), attribute) -> (FSDP1 FlatParamHandle, index in its flat parameter)``."""
    found: Dict[Tuple[int, str], Tuple[Any, int]] = {}
    for module in modules:
        handle = getattr(module, "_handle", None) if "FullyShardedDataParallel" in _class_names(module) else None
        flat = getattr(handle, "flat_param", None)
        if flat is None:
            continue
        for i, info in enumerate(flat._param_infos):
            found[(id(info.module), info.param_name)] = (handle, i)
    return found


def _class_names(obj: Any) -> Tuple[str, ...]:
    return tuple(k.__name__ for k in type(obj).__mro__)


def global_shape(tensor: Tensor) -> Tuple[int, ...]:
    """The full shape of a possibly sharded tensor (a DTensor's global shape, a ZeRO-3 ``ds_shape``)."""
    shape = getattr(tensor, "ds_shape", None)
    return tuple(tensor.shape) if shape is None else tuple(shape)


def named_tensors(root: nn.Module) -> Tuple[List[NamedTensor], List[NamedTensor]]:
    """Every parameter and every buffer of ``root`` by the model's own name: ``(parameters, buffers)``.

    As ``named_parameters()`` / ``named_buffers()``, through wrappers (see :func:`named_modules`),
    with full shapes, and with the original parameters that FSDP1 (``use_orig_params=False``)
    keeps only inside its flat parameters; flat parameters themselves are left out.
    """
    modules = named_modules(root)
    fsdp1 = _fsdp1_handles(m for _, m in modules)
    hidden: Dict[int, List[str]] = {}  # FSDP1 use_orig_params=False: originals are plain attributes
    for handle, i in fsdp1.values():
        if not handle._use_orig_params:
            info = handle.flat_param._param_infos[i]
            hidden.setdefault(id(info.module), []).append(info.param_name)
    params: List[NamedTensor] = []
    buffers: List[NamedTensor] = []
    seen: set = set()

    def shape_of(module: nn.Module, attr: str, t: Tensor) -> Tuple[int, ...]:
        at = fsdp1.get((id(module), attr))
        if at is not None:
            handle, i = at
            return tuple(handle.flat_param._shapes[i])
        return global_shape(t)

    for path, module in modules:
        entries = [(attr, p) for attr, p in module._parameters.items()
                   if p is not None and not getattr(p, "_is_flat_param", False)]
        entries += [(attr, getattr(module, attr, None)) for attr in hidden.get(id(module), ())]
        for attr, t in entries:
            if isinstance(t, Tensor) and id(t) not in seen:
                seen.add(id(t))
                params.append(NamedTensor(f"{path}.{attr}" if path else attr, t, module, attr,
                                          shape_of(module, attr, t)))
    for path, module in modules:
        for attr, t in module._buffers.items():
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                buffers.append(NamedTensor(f"{path}.{attr}" if path else attr, t, module, attr, global_shape(t)))
    return params, buffers


def full_shapes(root: nn.Module) -> Callable[[Optional[nn.Module], Optional[str], Tensor], Optional[Tuple[int, ...]]]:
    """``shape_of(owner, attr, tensor)``: the full shape of a tensor of ``root`` when it is a shard
    (FSDP1's view of a flat parameter, a DTensor, a ZeRO-3 parameter), else ``None``."""
    fsdp1 = _fsdp1_handles(m for _, m in named_modules(root))

    def shape_of(owner: Optional[nn.Module], attr: Optional[str], tensor: Tensor) -> Optional[Tuple[int, ...]]:
        at = fsdp1.get((id(owner), attr)) if owner is not None else None
        if at is not None:
            handle, i = at
            shape = tuple(handle.flat_param._shapes[i])
        elif is_sharded(tensor):
            shape = global_shape(tensor)
        else:
            return None
        return None if shape == tuple(tensor.shape) else shape

    return shape_of


def rebind(root: nn.Module, scales: Sequence[Any]) -> bool:
    """Point every watched scale at the tensor its module holds now, with its full shape; ``True`` if any changed.

    ``fully_shard`` replaces each parameter with a new DTensor one, FSDP1 turns it into a
    view of this rank's shard: a watcher built before the model was wrapped would
    otherwise read the old copy, or count the shard's values.
    """
    changed = False
    shape_of = full_shapes(root)
    for s in scales:
        owner, attr = getattr(s, "owner", None), getattr(s, "attr", None)
        if owner is None or attr is None:
            continue
        now = owner._parameters.get(attr)
        if now is None:
            now = owner._buffers.get(attr)
        if now is None:
            now = owner.__dict__.get(attr)
        if isinstance(now, Tensor):
            if now is not s.raw:
                s.raw = now
                changed = True
            shape = shape_of(owner, attr, now)
            if shape != s.shape:
                s.shape = shape
                changed = True
    return changed


def is_sharded(tensor: Tensor) -> bool:
    """A DTensor (FSDP2, tensor parallel) or a ZeRO-3 partitioned parameter."""
    return _is_dtensor(tensor) or hasattr(tensor, "ds_id")


def _is_dtensor(tensor: Tensor) -> bool:
    cls = type(tensor)
    return cls.__name__ == "DTensor" and cls.__module__.startswith("torch.distributed")


# ---- shardable scales --------------------------------------------------------------------

def make_shardable(model: nn.Module, params: Sequence[str] = ()) -> List[str]:
    """Give every single-value 0-dim scale of ``model`` the shape ``(1,)``, in place, so it can be sharded.

    FSDP2's ``fully_shard``, FSDP1 and DeepSpeed refuse 0-dim parameters. Call this on the
    model before wrapping it and before building its optimizer. Every bounded scale of
    scalewatch (``AttentionBiasGenerator``, ``LearnableScale``, ...) keeps using its scale
    as a 0-dim value (``module.scale`` is still 0-dim) and loads old checkpoints with the
    0-dim scale; ``params`` names bare 0-dim parameters too (``["logit_scale"]``; they then
    broadcast as ``(1,)`` tensors), and their old 0-dim checkpoint entries load as well.
    Records keep the plain name: a 1-element tensor is read as one value.

    Returns:
        the names of the tensors it reshaped.

    Raises:
        ValueError: for a ``params`` name that is not a parameter or buffer of ``model``.
    """
    changed: List[str] = []
    for path, module in named_modules(model):
        if isinstance(module, BoundedScale) and module.raw_scale.dim() == 0:
            _to_one_element(module, module.raw_scale_name)
            changed.append(path or type(module).__name__)
    if params:
        tensors = {t.name: t for group in named_tensors(model) for t in group}
        for name in params:
            if name not in tensors:
                raise ValueError(f"make_shardable: {name!r} is not a parameter or buffer of {type(model).__name__}; "
                                 f"0-dim ones are: {sorted(n for n, t in tensors.items() if t.tensor.dim() == 0)}")
            t = tensors[name]
            if t.tensor.dim() == 0:
                _to_one_element(t.owner, t.attr)
                t.owner._register_load_state_dict_pre_hook(functools.partial(_load_zero_dim, attr=t.attr))
                changed.append(name)
    return changed


def _to_one_element(module: nn.Module, attr: str) -> None:
    t = getattr(module, attr)
    with torch.no_grad():
        t.data = t.data.reshape(1)


def _load_zero_dim(state_dict: Dict[str, Any], prefix: str, *args: Any, attr: str) -> None:
    key = prefix + attr
    value = state_dict.get(key)
    if isinstance(value, Tensor) and value.dim() == 0:
        state_dict[key] = value.reshape(1)


# ---- values -------------------------------------------------------------------------------

def collective_timeout() -> float:
    """Seconds a rank waits for the others in a check (``SCALEWATCH_COLLECTIVE_TIMEOUT``, default 300)."""
    raw = os.environ.get(COLLECTIVE_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_COLLECTIVE_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{COLLECTIVE_TIMEOUT_ENV} must be a number of seconds > 0, got {raw!r}")
    return value


def _dist() -> Any:
    return torch.distributed


def _backend() -> str:
    """The default group's backend (``"gloo"``, ``"nccl"``, ``"cpu:gloo,cuda:nccl"``); ``""`` without one."""
    d = _dist()
    return str(d.get_backend()) if d.is_available() and d.is_initialized() else ""


def collective_device() -> torch.device:
    """Where a buffer that every rank builds for one collective lives, whatever data each rank holds:
    CUDA's current device when the group's backend has NCCL, else the CPU (gloo)."""
    if "nccl" in _backend() and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_within(buf: Tensor, timeout: float) -> bool:
    """``all_reduce(buf)`` (a sum, in place), waited for at most ``timeout`` seconds: whether it finished.

    A rank that stops calling ``step()`` must not leave the others hanging in the collective:
    the caller turns ``False`` into an error that names what was waited for.
    """
    work = _dist().all_reduce(buf, async_op=True)
    try:
        return work.wait(timeout=datetime.timedelta(seconds=timeout)) is not False
    except RuntimeError as err:  # gloo raises on its timeout, NCCL's wait returns False
        if "timed out" not in str(err).lower() and "timeout" not in str(err).lower():
            raise
        return False


def distributed_world() -> int:
    """The world size of ``torch.distributed`` (1 when it is not initialised)."""
    d = _dist()
    return d.get_world_size() if d.is_available() and d.is_initialized() else 1


#: one contribution: (where in the scale's n values it goes: start or index tensor, local flat values, weight)
_Part = Tuple[Any, Tensor, float]


@dataclass
class _Source:
    """How one scale's values reach the buffer on this rank."""

    kind: str  # "replicated", "dtensor", "fsdp1", "zero3"
    n: int
    fsdp1: Optional[Tuple[Any, int]] = None


class DistributedReader:
    """Reads watched scales on every rank, sharded or not, with one ``all_reduce`` per check.

    Built by the watcher when ``torch.distributed`` runs with more than one process or a
    watched scale is sharded. :meth:`read` returns the readings ``read_scales`` would give
    for the full, unsharded values, identical on every rank.
    """

    def __init__(self, root: nn.Module, scales: Sequence[Any]) -> None:
        self.root = root
        self.scales = list(scales)
        self._sources: Dict[int, _Source] = {}
        self._layouts: Dict[Tuple[int, ...], "_Layout"] = {}
        self.refresh()
        self.agreed = False
        if _dist().is_available() and _dist().is_initialized():
            self.agree()

    def refresh(self) -> None:
        """Work out again how each scale is held (after :func:`rebind`)."""
        fsdp1 = _fsdp1_handles(m for _, m in named_modules(self.root))
        self._sources = {id(s): self._source(s, fsdp1) for s in self.scales}
        self._layouts = {}

    @staticmethod
    def _source(s: Any, fsdp1: Dict[Tuple[int, str], Tuple[Any, int]]) -> _Source:
        n = s.numel
        if _is_dtensor(s.raw):
            return _Source("dtensor", n)
        if hasattr(s.raw, "ds_id"):
            return _Source("zero3", n)
        owner = getattr(s, "owner", None)
        at = fsdp1.get((id(owner), getattr(s, "attr", None))) if owner is not None else None
        if at is not None and at[0].uses_sharded_strategy:
            return _Source("fsdp1", n, at)
        return _Source("replicated", n)

    # ---- agreement --------------------------------------------------------------------

    def _fingerprint(self, scales: Sequence[Any]) -> int:
        text = "\n".join(f"{s.name}:{s.numel}:{int(s.module is not None)}" for s in scales)
        return zlib.crc32(text.encode()) & 0xFFFFF  # 20 bits: its square sums exactly in float64

    def agree(self) -> None:
        """Check once that every rank watches the same scales (names and sizes), bounded in time.

        Raises:
            ScaleGatherError: naming the ranks that differ and how.
        """
        h = self._fingerprint(self.scales)
        buf = torch.tensor([1.0, h, h * h], dtype=torch.float64, device=self._device())
        self._all_reduce(buf, what="the start (every rank checks it watches the same scales)", step=None)
        total, s1, s2 = buf.tolist()
        if s1 != total * h or s2 != total * h * h:
            self._explain_divergence(None)
        self.agreed = True

    def _explain_divergence(self, step: Optional[int], scales: Optional[Sequence[Any]] = None) -> None:
        d = _dist()
        mine = {"step": step, "scales": [(s.name, s.numel) for s in (self.scales if scales is None else scales)]}
        everyone: List[Any] = [None] * d.get_world_size()
        d.all_gather_object(everyone, mine)  # error path only: every rank sees the same sums, so all come
        lines = []
        base = everyone[0]
        for rank, theirs in enumerate(everyone):
            if theirs == base:
                continue
            if theirs["step"] != base["step"]:
                lines.append(f"rank {rank} is at step {theirs['step']}, rank 0 at step {base['step']}")
            a, b = dict(base["scales"]), dict(theirs["scales"])
            only0 = [n for n in a if n not in b]
            only_r = [n for n in b if n not in a]
            sizes = [f"{n} ({a[n]} values on rank 0, {b[n]} on rank {rank})" for n in a if n in b and a[n] != b[n]]
            if only0:
                lines.append(f"rank {rank} does not watch {only0} (rank 0 does)")
            if only_r:
                lines.append(f"rank {rank} watches {only_r} (rank 0 does not)")
            if sizes:
                lines.append("sizes differ: " + ", ".join(sizes) +
                             " (pass the model you wrap, or the wrapper, so that the full shapes are seen)")
            if not (only0 or only_r or sizes) and theirs["step"] == base["step"]:
                lines.append(f"rank {rank} watches the same scales in another order")
        where = "at the start" if step is None else f"at the check of step {step}"
        raise ScaleGatherError(f"scalewatch: the ranks do not read the same scales {where}: " + "; ".join(lines) +
                               ". Every rank must build the watcher on the same model and call step() with "
                               "the same steps")

    # ---- the one collective -----------------------------------------------------------

    def _device(self) -> torch.device:
        backend = _backend()
        if backend == "nccl":
            return collective_device()
        for s in self.scales:
            device = _local(s.raw).device
            if device.type != "meta":
                return device if backend != "gloo" else torch.device("cpu")
        return torch.device("cpu")

    def _all_reduce(self, buf: Tensor, what: str, step: Optional[int]) -> None:
        d = _dist()
        if not (d.is_available() and d.is_initialized()):
            raise ScaleGatherError(self._no_group_message())
        timeout = collective_timeout()
        if not all_reduce_within(buf, timeout):
            raise ScaleGatherError(self._timeout_message(what, step, timeout))

    def _no_group_message(self) -> str:
        sharded = [s.name for s in self.scales if self._sources[id(s)].kind != "replicated"]
        return (f"scalewatch: the scale(s) {sharded or [s.name for s in self.scales]} are sharded over processes "
                "but torch.distributed is not initialised (or was destroyed): their full values can only be "
                "gathered while the process group runs; call step() between init_process_group() and "
                "destroy_process_group()")

    def _timeout_message(self, what: str, step: Optional[int], timeout: float) -> str:
        d = _dist()
        rank, world = d.get_rank(), d.get_world_size()
        tag = "start" if step is None else str(step)
        missing: Optional[List[int]] = None
        try:
            store = d.distributed_c10d._get_default_store()
            store.set(f"scalewatch/waiting/{tag}/{rank}", "1")
            time.sleep(_ROLL_CALL_SECONDS)
            missing = [r for r in range(world) if r != rank and not store.check([f"scalewatch/waiting/{tag}/{r}"])]
        except Exception:  # the store itself may be gone with the missing rank
            missing = None
        who = (f"rank(s) {missing} did not come" if missing else
               "another rank did not come" if missing is None else "the ranks came but the collective did not finish")
        names = [s.name for s in self.scales]
        shown = names[:5] + ([f"... {len(names) - 5} more"] if len(names) > 5 else [])
        return (f"scalewatch: rank {rank} waited {timeout:g} s at {what if step is None else f'the check of step {step}'} "
                f"to gather the scales {shown} and {who} (a rank that stopped calling step(), left the loop or "
                f"hangs elsewhere); every rank must call step() at every step. "
                f"{COLLECTIVE_TIMEOUT_ENV} sets the wait")

    # ---- a check ------------------------------------------------------------------------

    def read(self, scales: Sequence[Any], step: int) -> List[Reading]:
        """The readings of ``scales`` at ``step``: full values, the same on every rank."""
        if not scales:
            return []
        layout, host = self._gather(scales, step)
        return layout.readings(host, step)

    def read_columns(self, scales: Sequence[Any], step: int, columns_layout: Any) -> Any:
        """As :meth:`read`, as one check's :class:`~scalewatch.monitor.check_columns.CheckColumns`."""
        return self.read_columns_with(scales, step, columns_layout)[0]

    def read_columns_with(self, scales: Sequence[Any], step: int, columns_layout: Any,
                          payload: Optional[Tensor] = None) -> Tuple[Any, np.ndarray]:
        """:meth:`read_columns`, with ``payload`` (float64, the same size on every rank) summed over the
        ranks in the same ``all_reduce``: the columns, and the summed payload on the host.

        What else a check reduces over the ranks (the attention statistics' sums) rides along,
        so that a check stays one collective and one transfer.
        """
        from scalewatch.monitor.check_columns import CheckColumns

        layout, host = self._gather(scales, step, payload)
        return CheckColumns(step, columns_layout, *layout.columns(host)), host[layout.size:]

    def _gather(self, scales: Sequence[Any], step: int,
                payload: Optional[Tensor] = None) -> Tuple["_Layout", np.ndarray]:
        d = _dist()
        if not (d.is_available() and d.is_initialized()):
            raise ScaleGatherError(self._no_group_message())
        key = tuple(id(s) for s in scales)
        layout = self._layouts.get(key)
        if layout is None:
            for s in scales:
                if id(s) not in self._sources:
                    self._sources[id(s)] = self._source(s, _fsdp1_handles(m for _, m in named_modules(self.root)))
            layout = self._layouts[key] = _Layout(scales, [self._sources[id(s)] for s in scales],
                                                 self._fingerprint(scales))
        rank = d.get_rank()
        with torch.no_grad():
            buf = layout.fill(rank, step, self._device())
            if payload is not None:
                buf = torch.cat((buf, payload.to(buf.device)))
            self._all_reduce(buf, what="", step=step)
            host = buf.cpu().numpy() if buf.device.type != "cpu" else buf.numpy()
        if host[1] != host[0] * layout.fingerprint or host[2] != host[0] * layout.fingerprint ** 2 \
                or host[3] != host[0] * step or host[4] != host[0] * float(step) ** 2:
            self._explain_divergence(step, scales)
        return layout, host


def _local(t: Tensor) -> Tensor:
    return t.to_local() if _is_dtensor(t) else t


def _flat32(t: Tensor) -> Tensor:
    t = t.detach().reshape(-1)
    return t if t.dtype == torch.float32 else t.float()


class _Layout:
    """Where each scale's values go in the check's buffer, and how they come back out.

    Buffer (float64: float32 values plus zeros sum exactly): a header
    ``[ranks, fingerprint, fingerprint², step, step²]``, then per scale ``raw[n]``,
    ``grad[n]``, ``grad present``, for library modules ``clamp fraction[n]`` and
    ``present``, and for a replicated scale whose effective value is not computed from
    the raw one (a custom ``scale``) ``effective[n]``.
    """

    HEADER = 5

    def __init__(self, scales: Sequence[Any], sources: Sequence[_Source], fingerprint: int) -> None:
        self.scales = list(scales)
        self.sources = list(sources)
        self.fingerprint = fingerprint
        at = self.HEADER
        self.slots: List[Tuple[int, int, int, Optional[int], Optional[int]]] = []
        self.effective_from: List[str] = []
        for s, src in zip(self.scales, self.sources):
            n = src.n
            raw_at, grad_at, at = at, at + n, at + 2 * n + 1
            frac_at = None
            if getattr(s, "module", None) is not None:
                frac_at, at = at, at + n + 1
            how = _effective_kind(s)
            eff_at = None
            if how == "local":
                if src.kind != "replicated":
                    raise ValueError(f"scale {s.name!r}: {type(s.module).__name__} overrides `scale`, so its effective "
                                     "value cannot be computed from the gathered raw value of a sharded scale; "
                                     "override `scale_of(raw)` instead")
                eff_at, at = at, at + n
            self.effective_from.append(how)
            self.slots.append((n, raw_at, grad_at, frac_at, eff_at))
        self.size = at

    def fill(self, rank: int, step: int, device: torch.device) -> Tensor:
        buf = torch.zeros(self.size, dtype=torch.float64, device=device)
        fp = float(self.fingerprint)
        buf[:self.HEADER] = torch.tensor([1.0, fp, fp * fp, float(step), float(step) ** 2], dtype=torch.float64)
        for s, src, (n, raw_at, grad_at, frac_at, eff_at) in zip(self.scales, self.sources, self.slots):
            values, grads = _parts(s, src, rank)
            _put(buf, raw_at, values)
            if grads is not None:
                _put(buf, grad_at, grads)
                buf[grad_at + n] = 1.0
            if frac_at is not None:
                frac = s.clamp_fraction()
                if frac is not None:
                    frac = _flat32(frac).to(device)
                    buf[frac_at:frac_at + n] = frac if frac.numel() == n else frac.expand(n)
                    buf[frac_at + n] = 1.0
            if eff_at is not None and rank == 0:
                buf[eff_at:eff_at + n] = _flat32(s.effective()).to(device)
        return buf

    def columns(self, host: np.ndarray) -> Tuple[np.ndarray, ...]:
        """``(scale, raw, grad, has_grad, clamp_fraction, has_fraction)``, one row per value, as
        float64 arrays of float32 values (NaN where there is none), as the single-process read gives them."""
        scale_parts, raw_parts, grad_parts, has_grad, frac_parts, has_frac = [], [], [], [], [], []
        for s, how, (n, raw_at, grad_at, frac_at, eff_at) in zip(self.scales, self.effective_from, self.slots):
            raw32 = host[raw_at:raw_at + n].astype(np.float32)
            raw_parts.append(raw32)
            grad_present = host[grad_at + n] > 0
            grad_parts.append(host[grad_at:grad_at + n].astype(np.float32) if grad_present
                              else np.full(n, np.nan, dtype=np.float32))
            has_grad.append(np.full(n, grad_present))
            frac_present = frac_at is not None and host[frac_at + n] > 0
            frac_parts.append((host[frac_at:frac_at + n] / host[frac_at + n]).astype(np.float32) if frac_present
                              else np.full(n, np.nan, dtype=np.float32))
            has_frac.append(np.full(n, frac_present))
            if how == "clip":
                lo = -np.inf if s.min is None else s.min
                hi = np.inf if s.max is None else s.max
                # float32 bounds, as torch.clamp casts a Python bound to the tensor's dtype
                scale_parts.append(np.clip(raw32, np.float32(lo), np.float32(hi)))
            elif how == "scale_of":
                scale_parts.append(_flat32(s.module.scale_of(torch.from_numpy(raw32.copy()))).numpy())
            else:
                scale_parts.append(host[eff_at:eff_at + n].astype(np.float32))
        join = (lambda parts, dtype: np.concatenate(parts).astype(dtype)) if self.scales else \
            (lambda parts, dtype: np.zeros(0, dtype=dtype))
        return (join(scale_parts, np.float64), join(raw_parts, np.float64), join(grad_parts, np.float64),
                join(has_grad, bool), join(frac_parts, np.float64), join(has_frac, bool))

    def readings(self, host: np.ndarray, step: int) -> List[Reading]:
        scale, raw, grad, has_grad, frac, has_frac = (a.tolist() for a in self.columns(host))
        out: List[Reading] = []
        row = 0
        for s in self.scales:
            n = s.numel
            for index, name in enumerate(s.element_names()):
                out.append(reading_from_values({
                    "step": step, "name": name, "scale": scale[row], "raw": raw[row],
                    "grad": grad[row] if has_grad[row] else None, "min": s.min, "max": s.max, "bound": s.bound,
                    "clamp_fraction": frac[row] if has_frac[row] else None,
                    "tensor": None if n == 1 else s.name, "index": None if n == 1 else index,
                    "display": s.display}))
                row += 1
        return out


def _effective_kind(s: Any) -> str:
    """``clip`` (on the host), ``scale_of`` (the module's map from the gathered raw value) or ``local``."""
    module = s.module
    if s.bound == "hard" and (module is None or type(module).scale is BoundedScale.scale):
        return "clip"
    if module is not None and type(module).scale is BoundedScale.scale:
        return "scale_of"
    return "local"


def _put(buf: Tensor, at: int, parts: List[_Part]) -> None:
    for where, values, weight in parts:
        if values.numel() == 0:
            continue
        values = values.to(buf.device, torch.float64)
        if weight != 1.0:
            values = values * weight
        if isinstance(where, int):
            buf[at + where:at + where + values.numel()] = values
        else:
            buf.index_copy_(0, where.to(buf.device) + at, values)


def _parts(s: Any, src: _Source, rank: int) -> Tuple[List[_Part], Optional[List[_Part]]]:
    """This rank's (values, gradient) contributions to the scale's ``n`` full values."""
    raw = s.raw
    if src.kind == "replicated":
        grad = raw.grad
        if rank != 0:
            return [], ([] if grad is not None else None)
        return [(0, _flat32(raw), 1.0)], (None if grad is None else [(0, _flat32(grad), 1.0)])
    if src.kind == "dtensor":
        grad = raw.grad
        return _dtensor_parts(raw), (None if grad is None else _dtensor_parts(grad))
    if src.kind == "zero3":
        return _zero3_parts(s, raw)
    return _fsdp1_parts(s, src)


def _dtensor_parts(dt: Any) -> List[_Part]:
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    mesh, placements = dt.device_mesh, dt.placements
    coordinate = mesh.get_coordinate()
    if coordinate is None:  # this rank is not in the tensor's mesh
        return []
    weight = 1.0
    for dim, p in enumerate(placements):
        if p.is_replicate() and coordinate[dim] != 0:
            return []  # another rank of this replica group sends it
        if p.is_partial():
            op = str(getattr(p, "reduce_op", "sum")).lower()
            if "avg" in op:
                weight /= mesh.size(dim)
            elif "sum" not in op:
                raise ValueError(f"scalewatch cannot gather a DTensor with placement {p!r}")
    local = dt.to_local()
    if local.numel() == 0:
        return []
    shape = tuple(dt.shape)
    local_shape, offset = compute_local_shape_and_global_offset(dt.shape, mesh, placements)
    if len(shape) == 0:
        return [(0, _flat32(local), weight)]
    if tuple(local_shape[1:]) == shape[1:]:
        start = int(offset[0]) * int(np.prod(shape[1:], dtype=np.int64))
        return [(start, _flat32(local), weight)]
    index = torch.arange(int(np.prod(shape, dtype=np.int64))).reshape(shape)[
        tuple(slice(int(o), int(o) + int(n)) for o, n in zip(offset, local_shape))].reshape(-1)
    return [(index, _flat32(local), weight)]


def _zero3_parts(s: Any, param: Any) -> Tuple[List[_Part], Optional[List[_Part]]]:
    optimizer = getattr(param, "_z3_optimizer", None)
    d = _dist()
    if optimizer is not None:
        group_size = optimizer._get_param_partition_world_size(param)
        if group_size != d.get_world_size():
            raise ValueError(f"scale {s.name!r}: ZeRO-3 partitions it over {group_size} of {d.get_world_size()} "
                             "ranks (hpZ / MiCS); scalewatch reads scales partitioned over all ranks")
        part_rank = optimizer._get_param_partition_rank(param)
    else:
        part_rank = d.get_rank()
    local = None
    grad = None
    if optimizer is not None and param.requires_grad:
        local = optimizer.get_local_fp32_param(param)
        try:
            grad = optimizer.get_local_fp32_grad_for_param(param)
        except (KeyError, AttributeError):  # no backward yet
            grad = None
    if local is None:
        local = param.ds_tensor
    size = local.numel()
    start = part_rank * size
    count = max(0, min(size, int(param.ds_numel) - start))
    values = [(start, _flat32(local)[:count], 1.0)] if count else []
    grads = None if grad is None else ([(start, _flat32(grad)[:count], 1.0)] if count else [])
    return values, grads


def _fsdp1_parts(s: Any, src: _Source) -> Tuple[List[_Part], Optional[List[_Part]]]:
    handle, i = src.fsdp1
    flat = handle.flat_param
    info = flat._shard_param_infos[i]
    local = getattr(flat, "_local_shard", None)
    if local is None:
        local = flat.data
    grad = flat.grad
    if grad is not None and grad.numel() != local.numel():
        raise ValueError(f"scale {s.name!r}: the FSDP1 gradient is not sharded yet ({grad.numel()} values, the "
                         f"shard {local.numel()}); call step() after the backward of the last accumulation "
                         "micro-batch (outside no_sync())")
    if not info.in_shard:
        return [], (None if grad is None else [])
    start, count = int(info.intra_param_start_idx), int(info.numel_in_shard)
    at = int(info.offset_in_shard)
    values = [(start, _flat32(local)[at:at + count], 1.0)]
    grads = None if grad is None else [(start, _flat32(grad)[at:at + count], 1.0)]
    return values, grads


def reader_for(root: nn.Module, scales: Sequence[Any],
               current: Optional[DistributedReader] = None) -> Optional[DistributedReader]:
    """A :class:`DistributedReader` when the scales need one (several processes, or a sharded scale), else ``None``.

    ``current``, the reader built earlier, is kept (and told to look at the scales again);
    a new one first agrees with the other ranks on what they watch (one collective).
    """
    if current is not None:
        current.refresh()
        if not current.agreed and distributed_world() > 1:
            current.agree()
        return current
    if not scales:
        return None
    if distributed_world() > 1 or any(is_sharded(s.raw) for s in scales):
        return DistributedReader(root, scales)
    return None

