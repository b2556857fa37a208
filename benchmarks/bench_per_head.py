"""One check step with per-head (multi-element) scales: Swin V2's shapes and 1000 tensors x 16 heads.

    python -m benchmarks.bench_per_head                 # the issue's rows (about a minute)
    python -m benchmarks.bench_per_head --checks 5      # quicker

A plain loop: the model is only the watched parameters (the check is what is
measured, not a network), ``ScaleWatcher(model, log_dir=tmp, every_n_steps=2,
tensorboard=SummaryWriter(tmp))``, gradients from one backward. The loop calls
``step()`` every 10 ms (matrix products standing in for a training step) with
``every_n_steps=10``, so a writer thread (history lines of watches >= 2048 values)
has the time a real run gives it: a check every 100 ms is a short step time.

Per row: the check step on the training thread (median over ``--checks``), split into
``read_scales`` (one gather, one transfer, Reading objects), the saturation rules
(vectorised masks, alert state) and the record (loggers; the history hand-over or
write), plus the history lines' encoding, which for big watches runs on the writer
thread (measured separately, same readings). Target: <= 15 ms a check at 16k values (#17).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Sequence

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from benchmarks.common import quiet, report
from scalewatch.callbacks import ScaleWatcher
from scalewatch.callbacks import watcher as watcher_module
from scalewatch.monitor.history.encoding import column_lines, reading_lines

TARGET_MS = 15.0  # issue #17 (columnar check path); 50 before it
EVERY = 10
#: seconds of compute between step() calls
STEP_S = 0.01
#: Swin V2 tiny's per-block head counts (stages of 3, 6, 12, 24 heads; 2, 2, 6, 2 blocks)
SWIN_V2_HEADS = [3, 3, 6, 6] + [12] * 6 + [24, 24]


class Heads(nn.Module):
    """Per-head logit scales in Swin V2's shape ``(H, 1, 1)``, one parameter per block."""

    def __init__(self, heads: Sequence[int]) -> None:
        super().__init__()
        self.scales = nn.ParameterList(nn.Parameter(torch.full((h, 1, 1), 2.3)) for h in heads)

    def loss(self) -> torch.Tensor:
        return torch.stack([p.exp().sum() for p in self.scales]).sum()


def _timed(into: List[float], fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        into.append(time.perf_counter() - t0)
        return out
    return wrapper


def run_case(label: str, heads: Sequence[int], checks: int) -> Dict[str, Any]:
    model = Heads(heads)
    work = torch.randn(256, 256)
    with tempfile.TemporaryDirectory(prefix="scalewatch-perhead-") as root:
        writer = SummaryWriter(root)
        watcher = ScaleWatcher(model, log_dir=root, every_n_steps=EVERY, tensorboard=writer, plot=False,
                               params={"scales.*": (None, 4.6052)})
        read_s: List[float] = []
        record_s: List[float] = []
        # the engine's read: read_columns (the columnar check path), read_scales before it
        read_name = "read_columns" if hasattr(watcher_module, "read_columns") else "read_scales"
        original_read = getattr(watcher_module, read_name)
        setattr(watcher_module, read_name, _timed(read_s, original_read))
        watcher._record = _timed(record_s, watcher._record)  # type: ignore[method-assign]
        check_s: List[float] = []
        try:
            model.loss().backward()
            for step in range(EVERY * (checks + 2)):
                until = time.perf_counter() + STEP_S
                while time.perf_counter() < until:  # a training step's worth of compute between calls
                    work = torch.tanh(work @ work) * 0.5
                t0 = time.perf_counter()
                watcher.step(step)
                if (step + 1) % EVERY == 0 and step >= 2 * EVERY:  # checks after two warm-up ones
                    check_s.append(time.perf_counter() - t0)
            last = getattr(watcher, "last_columns", None) or watcher.last_readings
            encode = column_lines if hasattr(last, "layout") else reading_lines
            encode_s = []
            for _ in range(5):
                t0 = time.perf_counter()
                encode(last, {"warn_fraction": 0.9, "patience": 3}, {})
                encode_s.append(time.perf_counter() - t0)
            background = watcher.history is not None and watcher.history._thread is not None
            watcher.close()
            writer.close()
        finally:
            setattr(watcher_module, read_name, original_read)
    check, read, record = (statistics.median(v) * 1e3 for v in (check_s, read_s[2:], record_s[2:]))
    return {"case": label, "tensors": len(heads), "values": sum(heads), "check_ms": check, "read_scales_ms": read,
            "rules_ms": max(check - read - record, 0.0), "record_ms": record,
            "history_lines_ms": statistics.median(encode_s) * 1e3, "history_on_thread": background}


def run(checks: int = 15, log: Callable[[str], None] = print) -> Dict[str, Any]:
    quiet()
    cases = [("Swin V2 tiny: 12 tensors x 3..24 heads", SWIN_V2_HEADS), ("1000 tensors x 16 heads", [16] * 1000)]
    rows = []
    for label, heads in cases:
        rows.append(run_case(label, heads, checks))
        log(f"  {label}: check step {rows[-1]['check_ms']:.1f} ms")
    big = rows[-1]
    return {"benchmark": "per_head", "method": __doc__.strip(), "config": {"checks": checks}, "rows": rows,
            "target": {"what": "1000 x 16 heads check step, ms (median)", "limit": TARGET_MS,
                       "value": big["check_ms"], "met": big["check_ms"] <= TARGET_MS}}


def format_table(result: Dict[str, Any]) -> str:
    lines = ["| watch | values | check step (ms) | of which read_scales | rules | record | history lines "
             "(ms, where) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        where = "writer thread" if r["history_on_thread"] else "in the check"
        lines.append(f"| {r['case']} | {r['values']:,} | {r['check_ms']:.1f} | {r['read_scales_ms']:.1f} "
                     f"| {r['rules_ms']:.1f} | {r['record_ms']:.1f} | {r['history_lines_ms']:.1f} ({where}) |")
    return "\n".join(lines)


def main(argv: Any = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checks", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args.checks)
    return report(result, "One check step with per-head scales", format_table(result), args.json)


if __name__ == "__main__":
    sys.exit(main())
