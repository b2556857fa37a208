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
- a global forward pre-hook and forward hook keep the stack of modules whose forward is
  running, so each call is attributed to the innermost module of the watched model that made it.

Off check steps none of this is installed: no wrapper, no hook, no mode, no tensor op.
Calls from validation or inference (grad disabled and the module in eval mode) are left out.

Attention that never comes through these (flash-attn kernels, a compiled graph, a hand-written
softmax not opted in) is named once in a warning, with the reason, instead of an empty record.
"""
from __future__ import annotations

import logging
import re
import weakref
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scalewatch.monitor.attention_options import AttentionOptions
from scalewatch.monitor.attention_stats import (ENTROPY, MAX_LOGIT, SATURATED, STATISTICS, HeadStatistics, computing,
                                                logit_statistics, sdpa_statistics)
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


class AttentionStat(WatchedScale):
    """One statistic of one attention module, per head: a scale-like handle :func:`read_scales` reads.

    ``raw`` is the statistic's values at this check (set by :meth:`AttentionWatch.collect`);
    the effective value is the same tensor (no clamp: ``bound="soft"``, the threshold cuts no
    gradient), and there is no gradient.
    """

    statistic: str = ""

    def effective(self) -> Tensor:
        return self.raw

    def clamp_fraction(self) -> None:
        return None


def _stat(name: str, statistic: str, values: Tensor, threshold: Optional[float]) -> AttentionStat:
    s = AttentionStat(name=f"{name}.{statistic}", raw=values, min=None,
                      max=threshold if statistic == MAX_LOGIT else None, bound="soft")
    s.statistic = statistic
    return s


# ---- the one interceptor every armed watch shares -----------------------------------------------


class _Interceptor:
    """Installs the wrappers and hooks while at least one watch is armed, and routes calls to the watches."""

    def __init__(self) -> None:
        self.watches: List["AttentionWatch"] = []
        self.stack: List[nn.Module] = []
        self._sdpa: Optional[Callable[..., Tensor]] = None
        self._softmax: Optional[Dict[str, Any]] = None
        self._hooks: List[Any] = []

    # -- install / remove

    def add(self, watch: "AttentionWatch") -> None:
        if watch in self.watches:
            return
        self.watches.append(watch)
        if self._sdpa is None:
            self._sdpa = F.scaled_dot_product_attention
            F.scaled_dot_product_attention = _wrap_sdpa(self._sdpa)
            self.stack = []
            self._hooks = [nn.modules.module.register_module_forward_pre_hook(self._enter),
                           nn.modules.module.register_module_forward_hook(self._leave, always_call=True)]
        if watch.wants_softmax and self._softmax is None:
            self._install_softmax()

    def remove(self, watch: "AttentionWatch") -> None:
        if watch in self.watches:
            self.watches.remove(watch)
        if self._softmax is not None and not any(w.wants_softmax for w in self.watches):
            self._remove_softmax()
        if not self.watches and self._sdpa is not None:
            for hook in self._hooks:
                hook.remove()
            self._hooks = []
            if getattr(F.scaled_dot_product_attention, "_scalewatch_original", None) is self._sdpa:
                F.scaled_dot_product_attention = self._sdpa
            self._sdpa = None
            self.stack = []

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

    # -- the module stack

    def _enter(self, module: nn.Module, _inputs: Any) -> None:
        if _compiling():  # traced by torch.compile: nothing of this goes into a graph
            return
        self.stack.append(module)
        for w in self.watches:
            w.seen(module)

    def _leave(self, module: nn.Module, _inputs: Any, _output: Any) -> None:
        if _compiling():
            return
        stack = self.stack
        while stack:
            if stack.pop() is module:
                break

    # -- calls

    def sdpa(self, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        for w in list(self.watches):
            w.on_sdpa(self.stack, args, kwargs)

    def softmax(self, x: Any, dim: Any) -> None:
        if isinstance(x, Tensor):
            for w in list(self.watches):
                if w.wants_softmax:
                    w.on_softmax(self.stack, x, dim)


_INTERCEPTOR = _Interceptor()
_compiling = torch.compiler.is_compiling


def _wrap_sdpa(original: Callable[..., Tensor]) -> Callable[..., Tensor]:
    def scaled_dot_product_attention(*args: Any, **kwargs: Any) -> Tensor:
        out = original(*args, **kwargs)  # first: invalid arguments fail as SDPA fails
        if _INTERCEPTOR.watches and not _compiling():
            _INTERCEPTOR.sdpa(args, kwargs)
        return out

    scaled_dot_product_attention.__doc__ = original.__doc__
    scaled_dot_product_attention._scalewatch_original = original  # type: ignore[attr-defined]
    return scaled_dot_product_attention


def _wrap_softmax(original: Callable[..., Tensor], dim_name: str) -> Callable[..., Tensor]:
    def softmax(x: Any, *args: Any, **kwargs: Any) -> Tensor:
        out = original(x, *args, **kwargs)
        if _INTERCEPTOR.watches and not _compiling():
            _INTERCEPTOR.softmax(x, args[0] if args else kwargs.get(dim_name))
        return out

    softmax.__doc__ = original.__doc__
    return softmax


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
        self.warn = warn
        self.model_name = type(_unwrap(model)).__name__
        self._paths: Optional[Dict[int, str]] = None
        self._mha: Set[int] = set()
        self._softmax_modules: Set[int] = set()
        self._excluded: Set[int] = set()
        self.wants_softmax = bool(options.softmax) or any(isinstance(m, nn.MultiheadAttention)
                                                          for m in model.modules())
        self.armed = False
        # this check's sums: (module path, heads) -> statistics
        self._sums: Dict[Tuple[str, int], HeadStatistics] = {}
        self._seen: Set[int] = set()
        self._captured: Set[int] = set()
        self._failed: Dict[str, str] = {}
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
                    if isinstance(m, nn.MultiheadAttention):
                        self._mha.add(id(m))
                    if path in softmax:
                        self._softmax_modules.add(id(m))
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
        else:
            _INTERCEPTOR.remove(self)

    def seen(self, module: nn.Module) -> None:
        self._seen.add(id(module))

    def _owner(self, stack: List[nn.Module]) -> Optional[Tuple[nn.Module, str]]:
        paths = self._paths or {}
        for module in reversed(stack):
            path = paths.get(id(module))
            if path is not None:
                return module, path
        return None

    def _counts(self, module: nn.Module) -> bool:
        # validation and inference forwards (no grad, eval mode) are not the check step's training
        return id(module) not in self._excluded and (torch.is_grad_enabled() or module.training)

    def _add(self, module: nn.Module, path: str, compute: Callable[[], HeadStatistics]) -> None:
        self._captured.add(id(module))
        if path in self._failed:
            return
        try:
            stats = compute()
        except Exception as err:  # statistics must never break training
            self._failed[path] = f"{type(err).__name__}: {err}"
            self._warn_once(f"failed:{path}", f"scalewatch attention statistics of {path} could not be computed "
                                              f"({self._failed[path]}); it is left out of this run's record")
            return
        key = (path, stats.heads)
        with computing():
            total = self._sums.get(key)
            if total is None:
                self._sums[key] = stats
            else:
                total.add_(stats)

    def on_sdpa(self, stack: List[nn.Module], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        owner = self._owner(stack)
        if owner is None or not self._counts(owner[0]):
            return
        bound = dict(zip(_SDPA_ARGS, args), **kwargs)
        opts = self.options
        self._add(owner[0], owner[1], lambda: sdpa_statistics(
            bound["query"], bound["key"], bound.get("attn_mask"), bool(bound.get("is_causal", False)),
            bound.get("scale"), bool(bound.get("enable_gqa", False)), max_samples=opts.samples,
            memory_bytes=opts.memory_bytes))

    def on_softmax(self, stack: List[nn.Module], x: Tensor, dim: Any) -> None:
        owner = self._owner(stack)
        if owner is None:
            return
        module, path = owner
        is_mha = id(module) in self._mha
        if not (is_mha or id(module) in self._softmax_modules) or not self._counts(module):
            return
        if dim not in (-1, x.dim() - 1):
            self._warn_once(f"dim:{path}", f"scalewatch attention statistics: {path} takes a softmax over dim {dim}, "
                                           "not the last one; only softmax(logits, dim=-1) is read as attention")
            return
        heads = module.num_heads if is_mha else None
        opts = self.options
        self._add(module, path, lambda: logit_statistics(x, heads, max_samples=opts.samples,
                                                         memory_bytes=opts.memory_bytes))

    # -- the check

    def collect(self, forwards_watched: bool = True) -> Tuple[List[AttentionStat], bool]:
        """This check's statistics as readable handles, and whether any is new (a name not seen before).

        Resets the sums for the next check; says once what it could not see (unless
        ``forwards_watched`` is False: the check's forwards ran before the watch was armed,
        e.g. a plain loop's first ``step()`` at a check step).
        """
        threshold = self.options.max_logit
        out: List[AttentionStat] = []
        added = False
        with computing():
            for key, sums in self._sums.items():
                handles = self.stats.get(key)
                if handles is None:
                    name = self._name_for(key)
                    values = sums.values()
                    handles = self.stats[key] = [_stat(name, s, v, threshold) for s, v in zip(STATISTICS, values)]
                    for h in handles:
                        self.statistic_of[h.name] = h.statistic
                    added = True
                else:
                    for h, v in zip(handles, sums.values()):
                        h.raw = v
                out.extend(handles)
        if forwards_watched:
            self._diagnose()
        elif not out:
            log.info("scalewatch attention statistics: the forwards of this first check step ran before the watcher "
                     "started (call watcher.start() before the loop to watch them); they begin at the next check")
        self._sums = {}
        self._seen = set()
        self._captured = set()
        return out, added

    def _name_for(self, key: Tuple[str, int]) -> str:
        path, heads = key
        others = [k for k in self.stats if k[0] == path]
        name = path if not others else f"{path}.heads{heads}"
        self._names[key] = name
        return name

    def _diagnose(self) -> None:
        paths = self._paths or {}
        if not self._seen & set(paths):
            if not self._sums:
                self._warn_once("no-forward", f"scalewatch attention statistics: no module of {self.model_name} ran "
                                              "its forward during the check step (a torch.compile'd model runs its "
                                              "graph without them, as do forwards outside Python); nothing is "
                                              "recorded for attention")
            return
        model = self._model_ref()
        if model is None:
            return
        by_id = {id(m): m for m in model.modules()}
        captured_paths = [paths[i] for i in self._captured]
        silent: List[str] = []
        for i in self._seen:
            m = by_id.get(i)
            if m is None or i in self._captured or i in self._excluded or not _ATTENTION_LIKE.search(type(m).__name__):
                continue
            path = paths[i]
            prefix = path + "."
            if any(p.startswith(prefix) for p in captured_paths):
                continue  # attention inside it was seen (BertAttention holds BertSelfAttention)
            silent.append(f"{path} ({type(m).__name__}: {_reason(m)})")
        silent = [s for s in silent if not any(o != s and o.split(" ")[0].startswith(s.split(" ")[0] + ".")
                                                for o in silent)]  # the innermost of nested ones
        if silent:
            self._warn_once("silent", "scalewatch attention statistics: these attention modules ran without calling "
                                      "torch.nn.functional.scaled_dot_product_attention, so they are not in the "
                                      "record: " + "; ".join(sorted(silent)))
        if not self.stats and not self._sums and not silent:
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


__all__ = ["ATTENTION_FIELD", "AttentionStat", "AttentionWatch", "WRAPPER_SEGMENTS", "own_name"]
