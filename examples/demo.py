"""What ``make demo`` runs: the three presets, a run that saturates, and a comparison of all four.

1. The three presets (``configs/conservative.yaml``, ``aggressive.yaml``,
   ``ultra-conservative.yaml``): 320 steps each, the scale learns inside its
   bounds.
2. The conservative preset with the scale's learning rate raised to 0.2
   (``configs/fast-scale-lr.yaml``): 128 steps, the scale overshoots past
   ``0.9 x max_scale`` (``near_upper``) and, the hard clamp having cut its
   gradient, stays there (``pinned``).
3. ``scalewatch compare`` puts the four runs side by side: a table, and
   ``demo_runs/compare.png`` with each run against its own bounds and its gradient.

Every run goes through the LightningCLI of ``train.py`` with TensorBoard, CSV and
offline W&B loggers, and leaves its files under ``demo_runs/<run>/``. At the end
it prints what each run did, where its files are, and the commands to look at them.

``python examples/demo.py --quick`` (for tests and a first look) makes the same four runs
on the same data, only shorter: the presets 20 steps each (two readings, no validation),
fast-scale-lr 64 steps (one epoch and its validation); the fast-scale-lr run follows the
same path as in the full demo, so its alerts fire at the same steps (near_upper at 29,
pinned at 49).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

from pytorch_lightning.loggers import WandbLogger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train import main as train_main  # noqa: E402
from scalewatch.callbacks import ScaleMonitor  # noqa: E402
from scalewatch.monitor import iter_history  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
ROOT = "demo_runs"
#: (run name = the folder its config logs to, config files, what it shows)
RUNS = (("conservative", ["conservative.yaml"], "preset conservative: the scale learns inside [0.5, 5]"),
        ("aggressive", ["aggressive.yaml"], "preset aggressive: the scale learns inside [1, 8]"),
        ("ultra-conservative", ["ultra-conservative.yaml"], "preset ultra-conservative: inside [0.5, 3]"),
        ("fast-scale-lr", ["conservative.yaml", "fast-scale-lr.yaml"],
         "conservative, scale learning rate 0.2: drives the scale into its upper bound"))
COMPARE_PNG = os.path.join(ROOT, "compare.png")
#: --quick: steps per run (the same data and seed; fast-scale-lr still reaches both alerts)
QUICK_STEPS = {"conservative": 20, "aggressive": 20, "ultra-conservative": 20, "fast-scale-lr": 64}
#: the commands installed next to this interpreter (.venv/bin), as a user would type them
BIN = os.path.relpath(os.path.dirname(sys.executable))


@dataclass
class RunSummary:
    """What one training run did, and where it left its history."""

    name: str
    steps: int
    seconds: float
    history_file: str
    val_loss: Optional[float] = None
    last_scale: Optional[float] = None
    alerts: List[str] = field(default_factory=list)


def run(name: str, config_files: List[str], what: str, max_steps: Optional[int] = None) -> RunSummary:
    """Train through the example's LightningCLI and read back what its monitor recorded."""
    args = ["fit"] + [a for c in config_files for a in ("--config", os.path.join(CONFIGS, c))]
    if max_steps is not None:
        args += ["--trainer.max_steps", str(max_steps)]
    command = "python examples/train.py " + " ".join(
        a if not a.startswith(CONFIGS) else os.path.relpath(a) for a in args)
    print(f"\n=== {name}: {what}\n$ {command}\n", flush=True)
    start = time.perf_counter()
    cli = train_main(args)
    seconds = time.perf_counter() - start
    trainer = cli.trainer
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()  # the next WandbLogger must start its own run, not reuse this one
    monitor = next(cb for cb in trainer.callbacks if isinstance(cb, ScaleMonitor))
    records = list(iter_history(monitor.history_path))
    summary = RunSummary(name=name, steps=trainer.global_step, seconds=seconds, history_file=monitor.history_path)
    if "val/loss" in trainer.callback_metrics:
        summary.val_loss = float(trainer.callback_metrics["val/loss"])
    if records:
        summary.last_scale = records[-1]["scale"]
    summary.alerts = [f"step {r['step']:>4}  {kind:<10}  scale={r['scale']:.3f} (range [{r['min']:g}, {r['max']:g}]), "
                      f"raw={r['raw']:.3f}, grad={r['grad']:g}" for r in records for kind in r.get("alerts", [])]
    return summary


def compare(runs: List[RunSummary]) -> str:
    """``scalewatch compare`` over the runs, as a user types it; returns the command line."""
    from scalewatch.dashboards.cli import main as scalewatch

    args = ["compare", *(os.path.join(ROOT, r.name) for r in runs), "--normalise", "--gradient", "-o", COMPARE_PNG]
    line = f"{BIN}/scalewatch " + " ".join(args)
    print(f"\n=== the four runs side by side\n$ {line}\n", flush=True)
    if scalewatch(args) != 0:
        raise SystemExit("demo: scalewatch compare failed")
    return line


def _print_summary(runs: List[RunSummary], compare_line: str) -> None:
    rel = os.path.relpath
    print("\n" + "=" * 100)
    width = max(len(r.name) for r in runs)
    print(f"{'run'.ljust(width)}  steps   time  final scale  val loss  alerts")
    for r in runs:
        loss = f"{r.val_loss:8.4f}" if r.val_loss is not None else "       -"
        fired = ", ".join(a.split()[2] + "@" + a.split()[1] for a in r.alerts) or "none"
        print(f"{r.name.ljust(width)}  {r.steps:>5}  {r.seconds:>3.0f} s  {r.last_scale:>11.3f}  {loss}  {fired}")
    for r in runs:
        for line in r.alerts:
            print(f"  {r.name}: {line}")
    print(f"\nEach run's files, under {ROOT}/<run>/:")
    for where, what in (("tensorboard/version_0/", "TensorBoard events, run config, checkpoint"),
                        ("tensorboard/version_0/scalewatch_history.jsonl", "scale history, one JSON line per reading"),
                        ("tensorboard/version_0/scale_history.png", "scale plot, gradient strip under it"),
                        ("csv/version_0/metrics.csv", "every metric as CSV"),
                        ("wandb/offline-run-*/", f"offline W&B run (upload: {BIN}/wandb sync DIR)")):
        print(f"  {where:<48} {what}")
    print(f"\nThe runs side by side: {COMPARE_PNG}   (made by: {compare_line})")
    print("                       (each run as (scale - min) / (max - min); leave out --normalise for the raw scales)")
    print(f"Open TensorBoard     : {BIN}/tensorboard --logdir {ROOT}   (or `source {BIN}/activate` first)")
    print("                       (the CUSTOM SCALARS tab shows each scale inside its [min, max] band;"
          " SCALARS has scalewatch/*, train/*, val/*; IMAGES has the plot)")
    if importlib.util.find_spec("scalewatch.dashboards.cli") is not None:
        print(f"In the terminal      : {BIN}/scalewatch watch {rel(os.path.join(ROOT, runs[0].name))}   "
              "(live, while a run trains)")
        print(f"                       {BIN}/scalewatch report {rel(os.path.join(ROOT, runs[-1].name))}")
    print("=" * 100)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="the same four runs, shorter (presets 20 steps, fast-scale-lr 64): same alerts")
    quick = parser.parse_args(argv).quick
    for name in [r[0] for r in RUNS] + [COMPARE_PNG]:
        path = name if name == COMPARE_PNG else os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        else:
            continue
        print(f"(cleared the previous demo's {path})")
    started = time.perf_counter()
    runs = [run(name, configs, what, QUICK_STEPS[name] if quick else None) for name, configs, what in RUNS]
    compare_line = compare(runs)
    _print_summary(runs, compare_line)
    print(f"demo: {len(runs)} runs and the comparison in {time.perf_counter() - started:.0f} s")
    if not any("near_upper" in a for a in runs[-1].alerts):
        raise SystemExit("demo: expected a near_upper alert in the fast-scale-lr run, got none")


if __name__ == "__main__":
    main()
