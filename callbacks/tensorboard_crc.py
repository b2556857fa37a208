"""TensorBoard's event checksums in C: the cost of logging a thousand scales is its pure-Python CRC.

TensorBoard's event writer (used by ``torch.utils.tensorboard.SummaryWriter``)
frames every event with a masked CRC-32C that, without TensorFlow installed, is
computed in pure Python: ~56 ms for the ~200 KB event a 1000-scale check writes,
on the writer's thread but holding the GIL, so the training thread waits for it.
The ``crc32c`` package computes the same checksum in C. Swapping it in changes no
byte on disk (tests/test_tensorboard_crc.py compares the two) and speeds up every
event this process writes, the user's own included.
"""
from __future__ import annotations

from typing import Callable

_MASK_DELTA = 0xA282EAD8


def _masked(crc32c: Callable[[bytes], int]) -> Callable[[bytes], int]:
    def masked_crc32c(data: bytes) -> int:
        x = crc32c(data) & 0xFFFFFFFF
        return ((((x >> 15) | (x << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF

    masked_crc32c.scalewatch_c_crc = True  # type: ignore[attr-defined]
    return masked_crc32c


def use_c_crc32c() -> bool:
    """Make TensorBoard's record writer checksum events in C; ``False`` if ``crc32c`` is missing."""
    try:
        import crc32c
        from tensorboard.summary.writer import record_writer
    except ImportError:
        return False
    if not getattr(record_writer.masked_crc32c, "scalewatch_c_crc", False):
        record_writer.masked_crc32c = _masked(crc32c.crc32c)
    return True
