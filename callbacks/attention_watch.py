"""Catching the attention calls of a check step's forwards, and turning them into per-head readings.

While a :class:`AttentionWatch` is armed (the engine arms it for the forwards of check steps
only, as it turns on the clamp-fraction statistic), and only then:

- ``torch.nn.functional.scaled_dot_product_attention`` is replaced by a wrapper that calls it
  and then computes the statistics of its softmax (:mod:`scalewatch.monitor.attention_stats`);
  timm, HF Transformers' ``sdpa`` attention, ``nn.MultiheadAttention`` in training (through
  ``F.multi_head_attention_forward``) and so open_clip all call it there;
- ``torch.softmax``, ``torch.nn.functional.softmax`` and ``Tensor.softmax`` are wrapped too when
  the watch has modules whose softmax is their attention: the opt-in ``softmax`` patterns for
  attention written by hand, and ``nn.MultiheadAttention`` called with ``need_weights=True``
  (which computes its softmax by hand);
- each call is attributed to the innermost module of the watched model whose code is running
  (the nearest frame of the Python stack whose ``self`` is one of its modules): no hook on
  any module for that. A forward pre-hook goes only on attention-like modules whose calls
  have not been seen yet (and on the model and its children until a first call is seen), to
  say what scalewatch could not see; a model whose attention has been seen gets none.

SDPA calls are not computed one by one: their inputs are kept (the tensors autograd keeps for
the backward anyway) up to the memory budget, and computed at the check (or when the budget
is full) together, in batched passes per shape, a handful of tensor operations for all of them
(on a CPU at most CPU_PASS_BYTES a pass, so that its sweeps over the logits run from the cache;
one pass per shape on a GPU), in buffers kept from one check to the next on a CPU (which pays a
page fault per 4 KiB of memory freshly mapped at every check).

Off check steps none of this is installed: no wrapper, no hook, no mode, no tensor op.
Calls from validation or inference (grad disabled and the module in eval mode) are left out.

Attention that never comes through these (flash-attn kernels, a compiled graph, a hand-written
softmax not opted in) is named once in a warning, with the reason, instead of an empty record.
"""
from __future__ import annotations

import logging
import re
import sys
import weakref
import zlib
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Set, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scalewatch.monitor.attention_options import AttentionOptions
from scalewatch.monitor.attention_stats import (MAX_LOGIT, STATISTICS, HeadStatistics, Workspace, as_sums,
                                                computing, logit_statistics, pass_bytes, sdpa_statistics, stacked_bytes,
                                                stacked_sdpa_sums, sums_values)
from scalewatch.monitor.name_patterns import match_names
from scalewatch.monitor.watched_scale import WatchedScale

log = logging.getLogger("scalewatch")

#: the history field that marks an attention statistic's record; its value is the statistic
ATTENTION_FIELD = "attention"
#: module path segments of wrappers, dropped from names so that a wrapped model's names are its own
#: (``module`` only where a path starts: DDP, DataParallel, DeepSpeed; a model may name a child "module")
WRAPPER_SEGMENTS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_forward_module")
LEADING_WRAPPER_SEGMENTS = ("module",) + WRAPPER_SEGMENTS
#: class names that look like attention, for the warning about attention scalewatch did not see
_ATTENTION_LIKE = re.compile(r"(attention|attn)$|selfattention|crossattention|multihead", re.IGNORECASE)
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _world() -> int:
    d = torch.distributed
    return d.get_world_size() if d.is_available() and d.is_initialized() else 1


def own_name(path: str, root: nn.Module) -> str:
    """A module path without wrapper segments (``module.``, ``_orig_mod.``, FSDP's, ...); ``""``: the root's type."""
    parts = path.split(".") if path else []
    while parts and parts[0] in LEADING_WRAPPER_SEGMENTS:
        parts.pop(0)
    return ".".join(p for p in parts if p not in WRAPPER_SEGMENTS) or type(_unwrap(root)).__name__


def _unwrap(model: nn.Module) -> nn.Module:
    for attr in ("_orig_mod", "module", "_forward_module"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            return _unwrap(inner)
    return model


def _is_compiled(model: nn.Module) -> bool:
    return type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod")


class _Measured(WatchedScale):
    """Values measured at a check, read as they are: the effective value is the raw tensor (no clamp:
    ``bound="soft"``, a threshold cuts no gradient), no gradient, no clamp fraction."""

    effective_is_raw = True

    def effective(self) -> Tensor:
        return self.raw

    def clamp_fraction(self) -> None:
        return None


class AttentionStat(_Measured):
    """One statistic of one attention module, per head: a scale-like handle :func:`read_scales` reads.

    ``raw`` is the statistic's values at this check (set by :meth:`AttentionWatch.collect`).
    """

    statistic: str = ""


class AttentionValues(_Measured):
    """Every statistic of a check in one tensor, in the order of their handles' rows (module, statistic,
    head): what a reader reads in their place, one part instead of one per handle. The rows'
    names and bounds come from the handles (the check's layout); this has no bounds of its own."""


def _stat(name: str, statistic: str, values: Tensor, threshold: Optional[float]) -> AttentionStat:
    s = AttentionStat(name=f"{name}.{statistic}", raw=values, min=None,
                      max=threshold if statistic == MAX_LOGIT else None, bound="soft")
    s.statistic = statistic
    s.record_fields = {ATTENTION_FIELD: statistic}  # on its history lines
    return s


# ---- the one interceptor every armed watch shares -----------------------------------------------


class _Interceptor:
    """Installs the wrappers while at least one watch is armed, and routes calls to the watches."""

    def __init__(self) -> None:
        self.watches: List["AttentionWatch"] = []
        self._sdpa: Optional[Callable[..., Tensor]] = None
        self._softmax: Optional[Dict[str, Any]] = None

    # -- install / remove

    def add(self, watch: "AttentionWatch") -> None:
        if watch in self.watches:
            return
        self.watches.append(watch)
        if self._sdpa is None:
            self._sdpa = F.scaled_dot_product_attention
            F.scaled_dot_product_attention = _wrap_sdpa(self._sdpa)
        if watch.wants_softmax and self._softmax is None:
            self._install_softmax()

    def remove(self, watch: "AttentionWatch") -> None:
        if watch in self.watches:
            self.watches.remove(watch)
        if self._softmax is not None and not any(w.wants_softmax for w in self.watches):
            self._remove_softmax()
        if not self.watches and self._sdpa is not None:
            if getattr(F.scaled_dot_product_attention, "_scalewatch_original", None) is self._sdpa:
                F.scaled_dot_product_attention = self._sdpa
            self._sdpa = None

    def _install_softmax(self) -> None:
        self._softmax = {"F": F.softmax, "torch": torch.softmax, "Tensor": torch.Tensor.__dict__.get("softmax")}
        F.softmax = _wrap_softmax(F.softmax, "dim")
        torch.softmax = _wrap_softmax(torch.softmax, "dim")
        torch.Tensor.softmax = _wrap_softmax(torch.Tensor.softmax, "dim")

    def _remove_softmax(self) -> None:
        saved, self._softmax = self._softmax, None
        assert saved is not None
        F.softmax, torch.softmax = saved["F"], saved["torch"]
        if saved["Tensor"] is None:
            if "softmax" in torch.Tensor.__dict__:
                del torch.Tensor.softmax
        else:
            torch.Tensor.softmax = saved["Tensor"]

    # -- calls

    def sdpa(self, caller: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        for w in list(self.watches):
            w.on_sdpa(caller, args, kwargs)

    def softmax(self, caller: Any, x: Any, dim: Any) -> None:
        if isinstance(x, Tensor):
            for w in list(self.watches):
                if w.wants_softmax:
                    w.on_softmax(caller, x, dim)


_INTERCEPTOR = _Interceptor()
_compiling = torch.compiler.is_compiling
#: code object -> whether its frames' ``self`` is a module (False: a function, or a method of something else)
_MODULE_CODE: Dict[Any, bool] = {}


def _running_modules(frame: Any) -> Iterator[nn.Module]:
    """The modules whose code is running at ``frame`` and above, innermost first: each frame's ``self`` module.

    Takes the place of a hook on every module: a call is attributed by walking the frames above
    it (its module's ``forward`` is usually the first; a helper function such as HF's
    ``sdpa_attention_forward(module, ...)`` is passed by on its way there). Whether a code
    object's ``self`` is a module is learnt once, so other frames cost a dictionary look-up.
    """
    while frame is not None:
        code = frame.f_code
        known = _MODULE_CODE.get(code)
        if known is not False:
            obj = frame.f_locals.get("self") if code.co_argcount and code.co_varnames[0] == "self" else None
            is_module = isinstance(obj, nn.Module)
            if known is None:
                _MODULE_CODE[code] = is_module
            if is_module:
                yield obj
        frame = frame.f_back


def _wrap_sdpa(original: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def scaled_dot_product_attention(*args: Any, **kwargs: Any) -> Tensor:
        out = original(*args, **kwargs)  # first: invalid arguments fail as SDPA fails
        if _INTERCEPTOR.watches and not _compiling():
            _INTERCEPTOR.sdpa(sys._getframe(1), args, kwargs)
        return out

    scaled_dot_product_attention.__doc__ = original.__doc__
    scaled_dot_product_attention._scalewatch_original = original  # type: ignore[attr-defined]
    return scaled_dot_product_attention


def _wrap_softmax(original: Callable[..., Tensor], dim_name: str) -> Callable[..., Tensor]:
    def softmax(x: Any, *args: Any, **kwargs: Any) -> Tensor:
        out = original(x, *args, **kwargs)
        if _INTERCEPTOR.watches and not _compiling():
            _INTERCEPTOR.softmax(sys._getframe(1), x, args[0] if args else kwargs.get(dim_name))
        return out

    softmax.__doc__ = original.__doc__
    return softmax


class _Call(NamedTuple):
    """An SDPA call kept for the batched computation: its inputs and what groups it with others."""

    key: Tuple[str, int]
    module: int
    query: Tensor
    key_: Tensor
    mask: Optional[Tensor]
    versions: Tuple[int, ...]
    signature: Tuple[Any, ...]
    is_causal: bool
    scale: Optional[float]
    gqa: bool


def _versions(q: Tensor, k: Tensor, mask: Optional[Tensor]) -> Tuple[int, ...]:
    return (q._version, k._version) if mask is None else (q._version, k._version, mask._version)


def _defer(q: Tensor, k: Tensor, mask: Any) -> bool:
    """Whether a call's inputs can wait for the batched pass: (N, H, L, E) tensors with a version counter."""
    return (q.dim() == 4 and k.dim() == 4 and (mask is None or isinstance(mask, Tensor))
            and not (q.is_inference() or k.is_inference() or (mask is not None and mask.is_inference())))


class RankSums:
    """One rank's attention sums at a check, as its part of one ``all_reduce`` (SUM, float64).

    ``payload``: a header ``[1, fingerprint, fingerprint², new]`` (summed: the rank count, whether
    every rank holds the same agreed modules, how many ranks saw a module not agreed on yet), then
    a ``[ranks, n]`` block over the modules the ranks have agreed on, in which this rank wrote its
    ``[4, heads]`` sums per module into its own row, zeros elsewhere, so that the sum brings every
    rank's sums to every rank exactly (a value plus zeros) and the maximum is taken locally: no
    second collective for the maximum. The payload has the same size on every rank whatever
    modules each ran (a collective of mismatched sizes aborts a gloo process and hands the other
    garbage). :meth:`reduced` reads the summed buffer on the host: max_logit the largest over the
    ranks, the other rows summed (entropy and saturated share become the row-weighted means over
    the global batch); when some rank saw a module not agreed on yet (the first check, or a module
    that runs on some ranks only), the ranks first agree on the union of their modules and reduce
    again, in collectives of their own.
    """

    def __init__(self, watch: "AttentionWatch", sums: Dict[Tuple[str, int], Tensor], keys: List[Tuple[str, int]],
                 payload: Tensor, fingerprint: float, rank: int, world: int) -> None:
        self.watch, self.sums, self.keys, self.payload, self.fingerprint = watch, sums, keys, payload, fingerprint
        self.rank, self.world = rank, world

    def reduced(self, summed: Any) -> Dict[Tuple[str, int], Tensor]:
        """Every rank's sums per module (float32 ``[4, heads]`` CPU tensors) from the summed payload (numpy).

        Raises:
            RuntimeError: when the ranks' agreed modules differ (they reached different checks).
        """
        import numpy as np

        world, fp = self.world, self.fingerprint
        if summed[3] > 0:  # a module some rank saw is not agreed on yet: agree on all of them, reduce again
            return self.watch.agree_and_reduce(self.sums)
        n = sum(4 * heads for _, heads in self.keys)
        if summed[:3].tolist() != [world, world * fp, world * fp * fp]:
            raise RuntimeError(f"scalewatch attention statistics: the ranks hold different attention modules at this "
                               f"check (rank {self.rank}: {[k[0] for k in self.keys]}); every rank must call step() at "
                               "every step")
        every = np.asarray(summed[4:4 + world * n]).reshape(world, n)
        first = np.zeros(n, dtype=bool)  # the max_logit row of each module
        at = 0
        for _, heads in self.keys:
            first[at:at + heads] = True
            at += 4 * heads
        joined = np.where(first, every.max(0), every.sum(0)).astype(np.float32)
        out: Dict[Tuple[str, int], Tensor] = {}
        at = 0
        for key in self.keys:
            size = 4 * key[1]
            if joined[at + 3 * key[1]:at + size].any():  # rows on some rank (the same decision on every rank)
                out[key] = torch.from_numpy(joined[at:at + size].reshape(4, key[1]).copy())
            at += size
        return out


# ---- one watcher's attention -------------------------------------------------------------------


class AttentionWatch:
    """The attention statistics of one watched model: armed for check-step forwards, collected at the check.

    Args:
        model: the watched model (names are its own module paths, wrappers dropped).
        options: checked ``attention=...`` (:class:`AttentionOptions`).
        warn: whether this process logs the one-time warnings (rank zero).
    """

    def __init__(self, model: nn.Module, options: AttentionOptions, warn: bool = True) -> None:
        self._model_ref = weakref.ref(model)
        self.options = options
        self._budget = options.memory_bytes  # looked up at every kept call
        self.warn = warn
        self.model_name = type(_unwrap(model)).__name__
        self._paths: Optional[Dict[int, str]] = None
        self._mha: Set[int] = set()
        self._softmax_modules: Set[int] = set()
        self._excluded: Set[int] = set()
        self.wants_softmax = bool(options.softmax) or any(isinstance(m, nn.MultiheadAttention)
                                                          for m in model.modules())
        self.armed = False
        # this check's calls: kept SDPA inputs, and per-call sums ([C, 4, heads], a key per row)
        self._pending: List[_Call] = []
        self._pending_bytes = 0
        # the batched passes' large tensors on a CPU, kept between checks: each buffer the largest of its
        # passes (about CPU_PASS_BYTES, or memory_mib if smaller, in all), given back at close()
        self.workspace = Workspace()
        self._results: List[Tuple[Tensor, List[Tuple[str, int]]]] = []
        self._seen: Set[int] = set()
        self._captured: Set[int] = set()
        self._failed: Dict[str, str] = {}
        # what the diagnosis still watches for: attention-like modules whose calls were not seen yet
        self._attention_like: Dict[int, nn.Module] = {}
        self._presence: List[nn.Module] = []  # the model's children: did any of it run?
        self._hooks: List[Any] = []
        self._presence_hooked = False
        # under torch.distributed: the modules every rank's payload has a place for, the same list on every rank
        self._agreed: List[Tuple[str, int]] = []
        #: this check's statistics in one tensor, read in place of the handles (renewed when they change)
        self.values: Optional[AttentionValues] = None
        self._values_by_rows: Dict[Tuple[Tuple[str, int], ...], AttentionValues] = {}
        #: every statistic known so far, in the order first seen: (path, heads) -> its three readings' handles
        self.stats: Dict[Tuple[str, int], List[AttentionStat]] = {}
        self._names: Dict[Tuple[str, int], str] = {}
        self._warned: Set[str] = set()
        self.statistic_of: Dict[str, str] = {}
        if options.softmax:
            names = [own_name(path, model) for path, _ in model.named_modules()]
            if not match_names_any(options.softmax, names):
                raise ValueError(f"`attention['softmax']` patterns {list(options.softmax)} match no module of "
                                 f"{self.model_name} (module paths look like {names[1:4]})")
        if _is_compiled(model):
            self._warn_once("compiled", f"scalewatch attention statistics: {self.model_name} is a torch.compile'd "
                                        "module: its compiled graph calls attention inside the graph, where scalewatch "
                                        "cannot see it, so attention statistics are taken only from forwards that "
                                        "run eagerly (none, usually). Watch the model before compiling it, or "
                                        "train it uncompiled to record them")

    # -- names

    def _module_paths(self) -> Dict[int, str]:
        if self._paths is None:
            model = self._model_ref()
            paths: Dict[int, str] = {}
            if model is not None:
                named = [(own_name(path, model), m) for path, m in model.named_modules()]
                wanted = set(match_names_any(self.options.modules, [p for p, _ in named])) if self.options.modules \
                    else None
                softmax = set(match_names_any(self.options.softmax, [p for p, _ in named]))
                for path, m in named:
                    if id(m) in paths:
                        continue
                    paths[id(m)] = path
                    if wanted is not None and path not in wanted:
                        self._excluded.add(id(m))
                    elif _ATTENTION_LIKE.search(type(m).__name__):
                        self._attention_like[id(m)] = m
                    if isinstance(m, nn.MultiheadAttention):
                        self._mha.add(id(m))
                    if path in softmax:
                        self._softmax_modules.add(id(m))
                # its children, not itself: a compiled model's own hooks run outside its graph
                self._presence = list(model.children()) or [model]
            self._paths = paths
        return self._paths

    # -- arming

    def arm(self, on: bool) -> None:
        """Install (``True``) or remove the interception; the engine calls it around check-step forwards."""
        if on == self.armed:
            return
        self.armed = on
        if on:
            self._module_paths()
            _INTERCEPTOR.add(self)
            self._hook_diagnosis()
        else:
            _INTERCEPTOR.remove(self)
            self._unhook()

    def _unhook(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _hook_diagnosis(self) -> None:
        """Pre-hooks only where the diagnosis still needs them (none once every attention module was seen)."""
        watch = list(self._attention_like.values())
        self._presence_hooked = not self.stats and not self._results and not self._pending and not (
            {"none", "no-forward"} & self._warned)
        if self._presence_hooked:
            watch += [m for m in self._presence if id(m) not in self._attention_like]
        self._hooks = [m.register_forward_pre_hook(self._seen_hook) for m in watch]

    def _seen_hook(self, module: nn.Module, _inputs: Any) -> None:
        # traced by torch.compile: nothing of this goes into a graph; a validation forward's
        # calls are not counted, so it does not count as having run either
        if not _compiling() and (torch.is_grad_enabled() or module.training):
            self._seen.add(id(module))

    def _owner(self, caller: Any) -> Optional[Tuple[nn.Module, str]]:
        paths = self._paths or {}
        for module in _running_modules(caller):
            path = paths.get(id(module))
            if path is not None:
                return module, path
        return None

    def _counts(self, module: nn.Module) -> bool:
        # validation and inference forwards (no grad, eval mode) are not the check step's training
        return id(module) not in self._excluded and (torch.is_grad_enabled() or module.training)

    def _captured_by(self, module: nn.Module) -> None:
        self._captured.add(id(module))
        self._attention_like.pop(id(module), None)  # seen: no more hook on it

    def _add(self, module: int, path: str, compute: Callable[[], HeadStatistics]) -> None:
        """Compute a call's statistics now (a softmax, or an SDPA call the batched pass does not take)."""
        if path in self._failed:
            return
        try:
            stats = compute()
        except Exception as err:  # statistics must never break training
            self._fail(path, err)
            return
        with computing():
            self._results.append((as_sums(stats), [(path, stats.heads)]))

    def _fail(self, path: str, err: Exception) -> None:
        self._failed[path] = f"{type(err).__name__}: {err}"
        self._warn_once(f"failed:{path}", f"scalewatch attention statistics of {path} could not be computed "
                                          f"({self._failed[path]}); it is left out of this run's record")

    def on_sdpa(self, caller: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        """An SDPA call made at frame ``caller``: kept for the batched pass (or computed now)."""
        owner = self._owner(caller)
        if owner is None or not self._counts(owner[0]):
            return
        module, path = owner
        self._captured_by(module)
        if path in self._failed:
            return
        bound = dict(zip(_SDPA_ARGS, args), **kwargs)
        q, k, mask = bound["query"], bound["key"], bound.get("attn_mask")
        is_causal, scale = bool(bound.get("is_causal", False)), bound.get("scale")
        gqa = bool(bound.get("enable_gqa", False))
        opts = self.options
        if isinstance(q, Tensor) and isinstance(k, Tensor) and _defer(q, k, mask):
            n = opts.samples
            if n is not None:
                q, k = q[:n], k[:n]
                if mask is not None and mask.dim() == 4 and mask.shape[0] > 1:  # (fewer dims: no batch dim)
                    mask = mask[:n]
            size = stacked_bytes(q, k)
            budget = self._budget
            if size <= budget:  # else: chunked on its own, now
                if self._pending_bytes + size > budget:
                    self._flush()
                # (torch.Size is a tuple: the shapes go in as they are)
                signature = (q.shape, k.shape, q.dtype, k.dtype, q.device, is_causal, scale, gqa,
                             None if mask is None else (mask.shape, mask.dtype))
                with computing():  # (detach: no autograd graph kept alive to the check)
                    self._pending.append(_Call((path, q.shape[-3]), id(module), q.detach(), k.detach(),
                                               None if mask is None else mask.detach(), _versions(q, k, mask),
                                               signature, is_causal, scale, gqa))
                self._pending_bytes += size
                return
        self._add(id(module), path, lambda: sdpa_statistics(
            q, k, mask, is_causal, scale, gqa, max_samples=opts.samples, memory_bytes=opts.memory_bytes))

    def _flush(self) -> None:
        """The kept SDPA calls' statistics: batched passes per signature (shapes, mask, causal, scale)."""
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        groups: Dict[Tuple[Any, ...], List[_Call]] = {}
        for call in pending:
            if _versions(call.query, call.key_, call.mask) != call.versions:
                self._warn_once(f"modified:{call.key[0]}", f"scalewatch attention statistics: the inputs of "
                                f"{call.key[0]}'s scaled_dot_product_attention call were modified in place after "
                                "the call; that call is left out of the record")
                continue
            groups.setdefault(call.signature, []).append(call)
        for group in groups.values():
            # passes of at most pass_bytes each: on a CPU they run from the cache, in a workspace it keeps
            first = group[0]
            per_pass = pass_bytes(self._budget, first.query.device) // max(1, stacked_bytes(first.query, first.key_))
            if per_pass == 0:  # larger calls: each in row chunks of its own
                for c in group:
                    self._one_by_one(c)
                continue
            for at in range(0, len(group), per_pass):
                self._pass(group[at:at + per_pass])

    def _pass(self, calls: List[_Call]) -> None:
        """One batched pass over calls of one signature."""
        first = calls[0]
        try:
            sums = stacked_sdpa_sums([c.query for c in calls], [c.key_ for c in calls],
                                     None if first.mask is None else [c.mask for c in calls],
                                     first.is_causal, first.scale, first.gqa,
                                     # (a GPU's caching allocator keeps its blocks mapped already)
                                     self.workspace if first.query.device.type == "cpu" else None)
        except Exception:  # one by one: the failing module is named, the others recorded
            for c in calls:
                self._one_by_one(c)
            return
        self._results.append((sums, [c.key for c in calls]))

    def _one_by_one(self, c: _Call) -> None:
        self._add(c.module, c.key[0], lambda: sdpa_statistics(c.query, c.key_, c.mask, c.is_causal, c.scale, c.gqa,
                                                              memory_bytes=self.options.memory_bytes))

    def on_softmax(self, caller: Any, x: Tensor, dim: Any) -> None:
        """A softmax called at frame ``caller``: attention when its module's softmax is (MHA with weights, opted in)."""
        owner = self._owner(caller)
        if owner is None:
            return
        module, path = owner
        is_mha = id(module) in self._mha
        if not (is_mha or id(module) in self._softmax_modules) or not self._counts(module):
            return
        self._captured_by(module)
        if dim not in (-1, x.dim() - 1):
            self._warn_once(f"dim:{path}", f"scalewatch attention statistics: {path} takes a softmax over dim {dim}, "
                                           "not the last one; only softmax(logits, dim=-1) is read as attention")
            return
        heads = module.num_heads if is_mha else None
        opts = self.options
        self._add(id(module), path, lambda: logit_statistics(x, heads, max_samples=opts.samples,
                                                             memory_bytes=opts.memory_bytes))

    # -- the check

    def _sums(self) -> Dict[Tuple[str, int], Tensor]:
        """This check's sums per (module path, heads): ``[4, heads]`` views, computed all at once per head count."""
        self._flush()
        by_heads: Dict[int, Tuple[List[Tensor], List[Tuple[str, int]]]] = {}
        for sums, keys in self._results:
            parts, order = by_heads.setdefault(sums.shape[-1], ([], []))
            parts.append(sums)
            order.extend(keys)
        out: Dict[Tuple[str, int], Tensor] = {}
        for parts, keys in by_heads.values():
            joined = torch.cat(parts) if len(parts) > 1 else parts[0]
            unique = list(dict.fromkeys(keys))
            if len(unique) < len(keys):  # a module called more than once (micro-batches): fold its calls
                at = {key: i for i, key in enumerate(unique)}
                index = torch.tensor([at[key] for key in keys], device=joined.device)
                folded = joined.new_zeros((len(unique),) + tuple(joined.shape[1:]))
                top = joined[:, 0]
                folded[:, 0].scatter_reduce_(0, index.unsqueeze(-1).expand_as(top), top, "amax")  # >= 0: from 0
                folded[:, 1:].index_add_(0, index, joined[:, 1:])
                joined = folded
            out.update(zip(unique, joined.unbind(0)))
        return out

    def collect(self, forwards_watched: bool = True,
                reduced: Optional[Dict[Tuple[str, int], Tensor]] = None) -> Tuple[List[AttentionStat], bool]:
        """This check's statistics as readable handles, and whether any is new (a name not seen before).

        Resets the sums for the next check; says once what it could not see (unless
        ``forwards_watched`` is False: the check's forwards ran before the watch was armed,
        e.g. a plain loop's first ``step()`` at a check step). ``reduced``: every rank's sums,
        reduced by the caller (:meth:`rank_sums`, :meth:`RankSums.reduced`) in its own collective.
        """
        threshold = self.options.max_logit
        out: List[AttentionStat] = []
        added = False
        with computing():
            if reduced is not None:
                sums = reduced
            else:
                sums = self._sums()
                if _world() > 1:  # every rank's batch: the global batch's statistics, the same on every rank
                    sums = self._over_ranks(sums)
            keys = [k for k in self.stats if k in sums] + [k for k in sums if k not in self.stats]
            by_heads: Dict[int, List[Tuple[str, int]]] = {}
            for key in keys:  # modules of one head count at once: [modules, 3, heads]
                by_heads.setdefault(key[1], []).append(key)
            values: Dict[Tuple[str, int], Tensor] = {}
            for group in by_heads.values():
                values.update(zip(group, sums_values(torch.stack([sums[k] for k in group])).unbind(0)))
            for key in keys:
                handles = self.stats.get(key)
                stat_values = values[key].unbind(0)
                if handles is None:
                    name = self._name_for(key)
                    handles = self.stats[key] = [_stat(name, s, t, threshold)
                                                 for s, t in zip(STATISTICS, stat_values)]
                    for h in handles:
                        self.statistic_of[h.name] = h.statistic
                    added = True
                else:
                    for h, t in zip(handles, stat_values):
                        h.raw = t
                out.extend(handles)
            if keys:
                flat = torch.cat([values[k].reshape(-1) for k in keys])  # the handles' rows, in their order
                # one object per set of modules: readers key their layouts by identity
                rows = tuple(keys)
                held = self._values_by_rows.get(rows)
                if held is None:
                    held = self._values_by_rows[rows] = AttentionValues(
                        name="attention statistics", raw=flat, min=None, max=None, bound="soft")
                held.raw = flat
                self.values = held
        had = bool(self._results)
        if forwards_watched:
            self._diagnose(had)
        elif not out:
            log.info("scalewatch attention statistics: the forwards of this first check step ran before the watcher "
                     "started (call watcher.start() before the loop to watch them); they begin at the next check")
        self._results = []
        self._seen = set()
        self._captured = set()
        if self.armed:  # still armed (a check at every step): only the hooks the diagnosis still needs
            self._unhook()
            self._hook_diagnosis()
        return out, added

    def rank_sums(self) -> "RankSums":
        """This check's sums as this rank's part of a collective, for a reader that reduces them together
        with the scales' values (one collective per check). :meth:`collect` with the
        :meth:`RankSums.reduced` of its ``summed`` buffer once it came back. Every rank gives one,
        of the same size, also one that ran no attention at this check."""
        with computing():
            return self._rank_payload(self._sums())

    def _rank_payload(self, sums: Dict[Tuple[str, int], Tensor]) -> "RankSums":
        import torch.distributed as dist

        from scalewatch.monitor.sharded import collective_device

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("scalewatch attention statistics: torch.distributed is not initialised at this check "
                               "(destroyed before the watcher's last step?); the ranks' statistics cannot be reduced")
        keys = self._agreed  # the same on every rank: grown only by agree_and_reduce
        agreed = set(keys)
        new = any(k not in agreed for k in sums)
        # chosen by the backend, not by this rank's data: a rank with no attention call builds it too
        device = collective_device()
        n = sum(4 * heads for _, heads in keys)
        rank, world = dist.get_rank(), dist.get_world_size()
        fp = float(zlib.crc32("\n".join(f"{path}:{heads}" for path, heads in keys).encode()) & 0xFFFFF)
        buf = torch.zeros(4 + world * n, dtype=torch.float64, device=device)
        buf[:4] = torch.tensor([1.0, fp, fp * fp, float(new)], dtype=torch.float64)
        if n:
            parts = [(sums[k] if k in sums else torch.zeros(4, k[1], device=device)).to(device, torch.float64)
                     .reshape(-1) for k in keys]
            torch.cat(parts, out=buf[4 + rank * n:4 + (rank + 1) * n])
        return RankSums(self, sums, list(keys), buf, fp, rank, world)

    def agree_and_reduce(self, sums: Dict[Tuple[str, int], Tensor]) -> Dict[Tuple[str, int], Tensor]:
        """Every rank adds the modules any rank saw to the agreed ones (in rank order, then call order),
        then the sums are reduced over them. Every rank calls it at the same check: each learnt from
        the summed header that some rank saw a module not agreed on yet."""
        import torch.distributed as dist

        agreed = set(self._agreed)
        seen: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(seen, [k for k in sums if k not in agreed])
        for keys in seen:
            for key in keys or ():
                key = (str(key[0]), int(key[1]))
                if key not in agreed:
                    agreed.add(key)
                    self._agreed.append(key)
        return self._reduce(self._rank_payload(sums))

    def _over_ranks(self, sums: Dict[Tuple[str, int], Tensor]) -> Dict[Tuple[str, int], Tensor]:
        """The sums of every rank's calls, in a collective of their own (no watched scale to share one with).

        Raises:
            RuntimeError: a rank did not come within the collective timeout.
        """
        return self._reduce(self._rank_payload(sums))

    def _reduce(self, mine: "RankSums") -> Dict[Tuple[str, int], Tensor]:
        from scalewatch.monitor.sharded import COLLECTIVE_TIMEOUT_ENV, all_reduce_within, collective_timeout

        timeout = collective_timeout()
        if not all_reduce_within(mine.payload, timeout):
            raise RuntimeError(f"scalewatch attention statistics: rank {mine.rank} waited {timeout:g} s at the check "
                               f"for the other ranks' statistics; every rank must call step() at every step "
                               f"({COLLECTIVE_TIMEOUT_ENV} sets the wait)")
        return mine.reduced(mine.payload.cpu().numpy())

    def _name_for(self, key: Tuple[str, int]) -> str:
        path, heads = key
        others = [k for k in self.stats if k[0] == path]
        name = path if not others else f"{path}.heads{heads}"
        self._names[key] = name
        return name

    def _diagnose(self, had_calls: bool) -> None:
        paths = self._paths or {}
        if not (self._seen or self._captured):  # nothing of the model was seen to run
            if self._presence_hooked and not had_calls:
                self._warn_once("no-forward", f"scalewatch attention statistics: no module of {self.model_name} ran "
                                              "its forward during the check step (a torch.compile'd model runs its "
                                              "graph without them, as do forwards outside Python); nothing is "
                                              "recorded for attention")
            return
        captured_paths = [paths[i] for i in self._captured]
        silent: List[str] = []
        for i in list(self._attention_like):
            if i not in self._seen:
                continue  # did not run at this check: asked again at the next
            m = self._attention_like[i]
            path = paths[i]
            prefix = path + "."
            if not any(p.startswith(prefix) for p in captured_paths):  # (BertAttention holds BertSelfAttention)
                silent.append(f"{path} ({type(m).__name__}: {_reason(m)})")
            del self._attention_like[i]  # settled: no more hook on it
        silent = [s for s in silent if not any(o != s and o.split(" ")[0].startswith(s.split(" ")[0] + ".")
                                                for o in silent)]  # the innermost of nested ones
        if silent:
            self._warn_once("silent", "scalewatch attention statistics: these attention modules ran without calling "
                                      "torch.nn.functional.scaled_dot_product_attention, so they are not in the "
                                      "record: " + "; ".join(sorted(silent)))
        if not self.stats and not had_calls and not silent:
            self._warn_once("none", f"scalewatch attention statistics: {self.model_name} made no attention call "
                                    "during the check step (no scaled_dot_product_attention, no nn.MultiheadAttention, "
                                    "no opted-in softmax): nothing is recorded for attention. Attention written by "
                                    "hand is read with attention={'softmax': ['MODULE_PATH_PATTERN']}")

    def _warn_once(self, key: str, message: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        if self.warn:
            log.warning(message)

    def close(self) -> None:
        self.arm(False)
        self._pending, self._pending_bytes, self._results = [], 0, []
        self.workspace.clear()


def _reason(module: nn.Module) -> str:
    config = getattr(module, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    if isinstance(impl, str) and impl != "sdpa":
        if "flash" in impl:
            return (f"attn_implementation={impl!r} runs flash-attn kernels scalewatch cannot look into; "
                    "attn_implementation='sdpa' is read")
        return (f"attn_implementation={impl!r} computes the softmax by hand; attn_implementation='sdpa' is read, "
                "or opt in with attention={'softmax': [PATTERN]}")
    return ("no scaled_dot_product_attention call: a softmax written by hand (opt in with "
            "attention={'softmax': [PATTERN]}) or a fused kernel scalewatch cannot look into")


def match_names_any(patterns: Tuple[str, ...], names: List[str]) -> List[str]:
    """The ``names`` any of ``patterns`` matches (fnmatch; a plain name matches itself)."""
    out: List[str] = []
    for pattern in patterns:
        out.extend(match_names(pattern, names))
    return out


__all__ = ["ATTENTION_FIELD", "AttentionStat", "AttentionValues", "AttentionWatch", "RankSums", "WRAPPER_SEGMENTS", "own_name"]
