"""A tensor's elements taken together: what per-tensor series and per-tensor reports share (numpy-free).

A per-head scale is recorded element by element (``TENSOR[i]``, with ``tensor`` and
``index``); dashboards show it per tensor. A single-value scale is a group of one
element and is shown exactly as before.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Sequence, TypeVar

from scalewatch.dashboards.series import ScaleBounds

G = TypeVar("G", bound="ElementGroup")


@dataclass
class ElementGroup(ScaleBounds):
    """A tensor (``name``) and its elements, each a :class:`ScaleBounds` with ``alerts``.

    The bounds, warning fraction, bound kind and display are the elements' (one
    ``params`` entry or one module gives all of them the same).
    """

    elements: List[Any] = field(default_factory=list)

    @classmethod
    def of(cls: type, name: str, elements: Sequence[Any]) -> Any:
        first = elements[0]
        return cls(name=name, min=first.min, max=first.max, warn_fraction=first.warn_fraction, bound=first.bound,
                   display=first.display, attention=first.attention, elements=list(elements))

    @property
    def element_count(self) -> int:
        """How many elements the tensor has: the engine's count when it was logged as a per-tensor
        summary (read back from a logger as the two edges of its band), else the elements recorded."""
        return max([len(self.elements)] + [getattr(e, "logged_elements", 0) for e in self.elements])

    @property
    def single(self) -> bool:
        """A single-value scale (not an element of a tensor): drawn and reported as it always was."""
        return len(self.elements) == 1 and self.elements[0].index is None

    @property
    def alerted(self) -> List[Any]:
        """The elements that raised any alert, in index order."""
        return [e for e in self.elements if e.alerts]


def grouped(make: Callable[[str, List[Any]], G], items: Iterable[Any]) -> List[G]:
    """One group per tensor (``item.group``) in the order the tensors first appear, elements by index.

    Example::

        tensors = grouped(TensorSeries.of, read_series(path).values())
    """
    groups: Dict[str, List[Any]] = {}
    for item in items:
        groups.setdefault(item.group, []).append(item)
    for elements in groups.values():
        if len(elements) > 1:
            elements.sort(key=lambda e: -1 if e.index is None else e.index)
    return [make(name, elements) for name, elements in groups.items()]
