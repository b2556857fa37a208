"""A synthetic per-head history, as ScaleWatcher writes it for many ``AttentionBiasGenerator(num_heads=H)``.

Written with the engine's own encoder (:func:`scalewatch.monitor.reading_lines`), so
the lines are byte for byte what a real run of that size leaves, without training
one. Used by the per-head dashboard tests and to time plot/report at scale:

    python tests/per_head_history.py OUT.jsonl --tensors 1000 --heads 16 --checks 200
"""
from __future__ import annotations

import argparse
from typing import Dict, List

import numpy as np

from scalewatch.monitor.reading import Reading, reading_from_values
from scalewatch.monitor.record_encoding import reading_lines
from scalewatch.monitor.saturation import SaturationTracker

MIN_SCALE, MAX_SCALE = 0.5, 5.0


def tensor_name(t: int) -> str:
    return f"blocks.{t}.attn.bias_gen"


def write_per_head_history(path: str, tensors: int = 1000, heads: int = 16, checks: int = 200,
                           every: int = 10, drifting: int = 3, seed: int = 0) -> int:
    """Write ``tensors`` x ``heads`` readings per check for ``checks`` checks; return the line count.

    Every head wanders around 2.5; in the first ``drifting`` tensors head ``t`` (of
    tensor ``t``) climbs into ``max_scale`` and is pinned there (its gradient zero),
    so those tensors alert and the others do not. Alerts come from the library's rules.
    """
    rng = np.random.default_rng(seed)
    tracker = SaturationTracker(0.9, 3)
    n = tensors * heads
    names = [f"{tensor_name(t)}[{h}]" for t in range(tensors) for h in range(heads)]
    groups = [tensor_name(t) for t in range(tensors) for _ in range(heads)]
    index = [h for _ in range(tensors) for h in range(heads)]
    raw = 2.5 + 0.3 * rng.standard_normal(n)
    climb = np.zeros(n)
    for t in range(min(drifting, tensors)):
        climb[t * heads + t % heads] = 4.0 / max(1, checks // 2)
    lines = 0
    with open(path, "w", encoding="utf-8") as f:
        for c in range(checks):
            step = (c + 1) * every - 1
            raw = raw + climb + 0.02 * rng.standard_normal(n)
            raw = np.where(climb > 0, raw, np.clip(raw, MIN_SCALE + 0.3, MAX_SCALE - 0.8))
            scale = np.clip(raw, MIN_SCALE, MAX_SCALE)
            grad = np.where(raw > MAX_SCALE, 0.0, 1e-3 * rng.standard_normal(n))
            readings: List[Reading] = [
                reading_from_values({"step": step, "name": nm, "scale": s, "raw": r, "grad": g, "min": MIN_SCALE,
                                     "max": MAX_SCALE, "bound": "hard", "clamp_fraction": None, "tensor": tn,
                                     "index": i, "display": "identity"})
                for nm, s, r, g, tn, i in zip(names, scale.tolist(), raw.tolist(), grad.tolist(), groups, index)]
            fired: Dict[str, List[str]] = {}
            for a in tracker.update_all(readings):
                fired.setdefault(a.name, []).append(a.kind)
            f.write(reading_lines(readings, {"warn_fraction": 0.9, "patience": 3}, fired))
            lines += n
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path")
    p.add_argument("--tensors", type=int, default=1000)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--checks", type=int, default=200)
    args = p.parse_args()
    lines = write_per_head_history(args.path, args.tensors, args.heads, args.checks)
    print(f"wrote {lines} readings ({args.tensors} x {args.heads} x {args.checks}) to {args.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
