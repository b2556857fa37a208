"""What ``attention=...`` asks for, checked once before any model exists (torch-free).

``attention=True`` watches every attention call of the model with the defaults below;
a dict sets any of them::

    attention={"max_logit": 30.0,            # near_upper warns against this (default 100, QK-Clip's tau)
               "modules": ["blocks.*"],       # only these module paths (fnmatch; default: all)
               "softmax": ["*.fusion_attn"],  # modules whose own softmax(logits, dim=-1) is their attention
               "samples": 4,                  # only the first 4 samples of each batch (default: all)
               "memory_mib": 64}              # working memory of the statistics at a time (default 64 MiB)

On a CPU a pass takes at most 8 MiB of it (``CPU_PASS_BYTES``), and the buffers of one pass (about
``min(memory_mib, 8)`` MiB) stay allocated from one check to the next, given back at ``close()``.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

from scalewatch.monitor.name_patterns import check_pattern

#: the threshold ``max_logit`` warns against when none is given: Kimi K2's QK-Clip tau
DEFAULT_MAX_LOGIT = 100.0
#: how much memory the statistics' logits may take at a time, in MiB
DEFAULT_MEMORY_MIB = 64.0


@dataclass(frozen=True)
class AttentionOptions:
    """``attention=...`` checked: see the module docstring for each field."""

    max_logit: float = DEFAULT_MAX_LOGIT
    modules: Tuple[str, ...] = ()
    softmax: Tuple[str, ...] = ()
    samples: Optional[int] = None
    memory_mib: float = DEFAULT_MEMORY_MIB

    @property
    def memory_bytes(self) -> int:
        return max(1, int(self.memory_mib * (1 << 20)))


KEYS = ("max_logit", "modules", "softmax", "samples", "memory_mib")


def _number(key: str, value: object) -> float:
    where = f"attention[{key!r}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{where}` must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{where}` must be a finite number > 0, got {value!r}")
    return float(value)


def _patterns(key: str, value: object) -> Tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"`attention[{key!r}]` must be a module path pattern or a list of them, got {value!r}")
    return tuple(check_pattern(p, where=f"attention[{key!r}]") for p in items)


def check_attention(attention: object) -> Optional[AttentionOptions]:
    """``attention`` as given to a door -> :class:`AttentionOptions`, or ``None`` when it is off.

    ``False``/``None``: off; ``True``: the defaults; a mapping: any of :data:`KEYS`.

    Raises:
        ValueError: an unknown key, a threshold or memory that is not > 0, ``samples`` < 1,
            a malformed pattern; each named as ``attention['KEY']`` with its value.
        TypeError: ``attention`` of another type, or a value of the wrong type (a threshold
            that is not a number), named the same way.
    """
    if attention is None or attention is False:
        return None
    if attention is True:
        return AttentionOptions()
    if isinstance(attention, AttentionOptions):
        return attention
    if not isinstance(attention, Mapping):
        raise TypeError(f"`attention` must be True, False or a dict of options ({', '.join(KEYS)}), "
                        f"got {attention!r} ({type(attention).__name__})")
    unknown = [k for k in attention if k not in KEYS]
    if unknown:
        raise ValueError(f"`attention` got unknown key(s) {', '.join(map(repr, unknown))}; it takes {', '.join(KEYS)}")
    options: dict = {}
    for key, value in attention.items():
        if key in ("max_logit", "memory_mib"):
            options[key] = _number(key, value)
        elif key in ("modules", "softmax"):
            options[key] = _patterns(key, value)
        elif value is not None:  # samples
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"`attention['samples']` must be an integer or None, got {value!r}")
            if value < 1:
                raise ValueError(f"`attention['samples']` must be >= 1, got {value!r}")
            options[key] = int(value)
    return AttentionOptions(**options)


def describe(options: AttentionOptions) -> Mapping[str, Any]:
    """The options as a plain dict (for messages and saved configs)."""
    return {k: getattr(options, k) for k in KEYS}


__all__ = ["AttentionOptions", "DEFAULT_MAX_LOGIT", "DEFAULT_MEMORY_MIB", "KEYS", "check_attention", "describe"]
