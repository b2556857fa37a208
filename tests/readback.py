"""Read back what loggers wrote to disk, with each tool's own reader."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import time
import sys
from pathlib import Path
from typing import Dict, List, Tuple

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from scalewatch.monitor import HISTORY_FILENAME, iter_history


def history(log_dir: str) -> List[dict]:
    return list(iter_history(os.path.join(log_dir, HISTORY_FILENAME)))


def tensorboard_scalars(log_dir: str, tag: str) -> List[Tuple[int, float]]:
    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    return [(e.step, e.value) for e in ea.Scalars(tag)]


def tensorboard_tags(log_dir: str) -> Dict[str, list]:
    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    ea.Reload()
    return ea.Tags()


def tensorboard_layout(log_dir: str) -> Dict[str, Dict[str, List[str]]]:
    """The custom-scalars layout: {category: {chart title: [value, lower, upper] tags}} of Margin charts."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    ea = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    ea.Reload()
    layout = layout_pb2.Layout()
    layout.ParseFromString(ea.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0])
    return {cat.title: {c.title: [c.margin.series[0].value, c.margin.series[0].lower, c.margin.series[0].upper]
                        for c in cat.chart} for cat in layout.category}


def csv_series(log_dir: str, key: str) -> List[Tuple[int, float]]:
    with open(os.path.join(log_dir, "metrics.csv"), newline="") as f:
        return [(int(row["step"]), float(row[key])) for row in csv.DictReader(f) if row.get(key) not in (None, "")]


def wandb_records(run_dir: str, timeout: float = 180.0) -> List[dict]:
    """Every record of an offline W&B run, via `wandb leet inspect --json`, once W&B has written them all.

    ``run.finish()`` can return before W&B's service has written the run file (see
    ``reliability/support.finished_wandb_records``): wait for its last record, ``exit``.
    """
    exe = Path(sys.executable).with_name("wandb")
    deadline = time.monotonic() + timeout
    while True:
        proc = subprocess.run([str(exe), "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True,
                              timeout=120)
        records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()] if proc.returncode == 0 \
            else []
        if any(r.get("type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"W&B never finished the offline run {run_dir} within {timeout:g} s: "
                                 f"{len(records)} record(s), exit {proc.returncode}: {proc.stderr[-500:]}")
        time.sleep(0.1)


def wandb_history(run_dir: str, key: str) -> List[Tuple[int, float]]:
    rows = []
    for rec in wandb_records(run_dir):
        if rec["type"] == "history":
            item = rec["history"]["item"]
            if key in item:
                rows.append((int(item["trainer/global_step"]), float(item[key])))
    return rows


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
