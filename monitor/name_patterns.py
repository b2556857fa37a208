"""Glob patterns over parameter names, as ``params`` keys accept them (torch-free).

``"*.attn.logit_scale"`` names every ``logit_scale`` of a Swin V2 in one key. The
syntax is :mod:`fnmatch`'s, matched case-sensitively: ``*`` (any run of
characters, dots included), ``?`` (one character), ``[seq]`` / ``[!seq]`` (one
character in / not in ``seq``). A key without these characters is a plain name.
"""
from __future__ import annotations

import fnmatch
import re
from typing import Iterable, List

_PATTERN_CHARS = re.compile(r"[*?\[]")
#: ``NAME[3]``: how scalewatch names one element of a tensor, easily mistaken for a key
_ELEMENT_NAME = re.compile(r"\[\d+\]$")


def is_pattern(key: str) -> bool:
    """True when ``key`` holds a glob character (``*``, ``?`` or ``[``)."""
    return _PATTERN_CHARS.search(key) is not None


def check_pattern(key: object, where: str = "params") -> str:
    """Validate a ``params`` key: a non-empty name, and any ``[`` opens a closed set.

    :mod:`fnmatch` itself never fails: it reads an unclosed ``[`` as a literal
    bracket, which silently matches nothing in parameter names. Here it is an error.

    Raises:
        ValueError: naming ``where`` and the key.
    """
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"`{where}` keys must be parameter names or glob patterns, got {key!r}")
    i, n = 0, len(key)
    while i < n:
        if key[i] == "[":
            # as fnmatch.translate: a "]" right after "[" or "[!" belongs to the set
            j = i + 1
            if j < n and key[j] == "!":
                j += 1
            if j < n and key[j] == "]":
                j += 1
            while j < n and key[j] != "]":
                j += 1
            if j >= n:
                raise ValueError(f"`{where}` key {key!r} is a malformed pattern: the '[' at position {i} is "
                                 "never closed (a set is written [abc] or [!abc])")
            i = j
        i += 1
    return key


def match_names(pattern: str, names: Iterable[str]) -> List[str]:
    """The ``names`` that ``pattern`` matches, in their order (case-sensitive)."""
    regex = re.compile(fnmatch.translate(pattern))
    return [name for name in names if regex.match(name)]


def no_match_hint(key: str) -> str:
    """Extra words for a key that matched nothing, when it looks like an element name."""
    if _ELEMENT_NAME.search(key):
        base = _ELEMENT_NAME.sub("", key)
        return (f"; to watch one element, name the whole tensor ({base!r}): each element of a "
                f"multi-element tensor is read as NAME[i]")
    return ""
