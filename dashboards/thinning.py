"""Thinning long series for drawing and charts, spikes kept (numpy only: no matplotlib).

The plot and the W&B charts both thin with these; the engine imports the W&B charts,
so keeping them apart from matplotlib keeps matplotlib out of training until it draws.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

#: points drawn per line at most; the record itself is never thinned
MAX_DRAWN_POINTS = 2000


def envelope(x: np.ndarray, y: np.ndarray, max_points: int = MAX_DRAWN_POINTS) -> Tuple[np.ndarray, np.ndarray]:
    """Thin a line for drawing, keeping each bucket's min and max so spikes stay visible.

    Vectorised: the points are cut into equal buckets (the last one padded), so a
    200k-point line costs a few milliseconds.
    """
    n = len(x)
    if n <= max_points:
        return x, y
    buckets = max_points // 2
    size = -(-n // buckets)
    finite = np.isfinite(y)
    pad = buckets * size - n
    low = np.concatenate((np.where(finite, y, np.inf), np.full(pad, np.inf))).reshape(buckets, size)
    high = np.concatenate((np.where(finite, y, -np.inf), np.full(pad, -np.inf))).reshape(buckets, size)
    first = np.arange(buckets) * size  # a bucket with no finite value keeps its first point (a gap)
    idx = np.unique(np.concatenate((first + low.argmin(axis=1), first + high.argmax(axis=1))))
    idx = idx[idx < n]
    return x[idx], y[idx]


def band_envelope(x: np.ndarray, low: np.ndarray, high: np.ndarray,
                  max_points: int = MAX_DRAWN_POINTS) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin a band for drawing: per bucket its first step, the smallest low and the largest high."""
    n = len(x)
    if n <= max_points:
        return x, low, high
    size = -(-n // max_points)
    pad = max_points * size - n

    def cut(v: np.ndarray, fill: float) -> np.ndarray:
        return np.concatenate((v, np.full(pad, fill))).reshape(max_points, size)

    with np.errstate(invalid="ignore"):
        lo = np.fmin.reduce(cut(low, np.nan), axis=1)
        hi = np.fmax.reduce(cut(high, np.nan), axis=1)
    keep = np.arange(max_points) * size < n
    return x[::size][:keep.sum()], lo[keep], hi[keep]
