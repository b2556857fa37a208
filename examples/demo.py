"""What ``make demo`` runs: a healthy run, a run that saturates, and where everything went.

1. The conservative preset (``configs/conservative.yaml``): 320 steps, the scale
   learns and stays inside ``[0.5, 5.0]``.
2. The same preset with the scale's learning rate raised to 0.2
   (``configs/fast-scale-lr.yaml``): 128 steps, the scale overshoots past
   ``0.9 x max_scale`` (``near_upper``) and, the hard clamp having cut its
   gradient, stays there (``pinned``).

Both go through the LightningCLI of ``train.py`` with TensorBoard, CSV and
offline W&B loggers, and leave their files under ``demo_runs/``. At the end it
prints where they are and how to open them.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train import main as train_main  # noqa: E402
from scalewatch.callbacks import PLOT_FILENAME, ScaleMonitor  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
#: where the two runs' configs send their files; cleared first so each demo leaves one version_0
DEMO_DIRS = ("demo_runs/conservative", "demo_runs/fast-scale-lr")
#: the commands installed next to this interpreter (.venv/bin), as a user would type them
BIN = os.path.relpath(os.path.dirname(sys.executable))


@dataclass
class RunSummary:
    """Where one training run left its files, and how it ended."""

    title: str
    command: str
    seconds: float
    run_dir: str
    tensorboard_dir: Optional[str] = None
    csv_file: Optional[str] = None
    wandb_dir: Optional[str] = None
    history_file: Optional[str] = None
    plot_file: Optional[str] = None
    val_loss: Optional[float] = None
    last_scale: Optional[float] = None
    alerts: List[str] = field(default_factory=list)


def _read_history(path: str) -> List[Dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def run(title: str, config_files: List[str], extra_args: Optional[List[str]] = None) -> RunSummary:
    """Train through the example's LightningCLI and collect where its outputs went."""
    args = ["fit"] + [a for c in config_files for a in ("--config", os.path.join(CONFIGS, c))] + (extra_args or [])
    command = "python examples/train.py " + " ".join(
        a if not a.startswith(CONFIGS) else os.path.relpath(a) for a in args)
    print(f"\n=== {title}\n$ {command}\n", flush=True)
    start = time.perf_counter()
    cli = train_main(args)
    seconds = time.perf_counter() - start
    trainer = cli.trainer
    summary = RunSummary(title=title, command=command, seconds=seconds, run_dir=trainer.log_dir)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            summary.tensorboard_dir = logger.log_dir
        elif isinstance(logger, CSVLogger):
            summary.csv_file = os.path.join(logger.log_dir, "metrics.csv")
        elif isinstance(logger, WandbLogger):
            summary.wandb_dir = os.path.dirname(logger.experiment.dir)  # .../offline-run-*/files -> run
            logger.experiment.finish()  # the next WandbLogger must start its own run, not reuse this one
    monitor = next(cb for cb in trainer.callbacks if isinstance(cb, ScaleMonitor))
    summary.history_file = monitor.history_path
    summary.plot_file = os.path.join(monitor.log_dir, PLOT_FILENAME)
    if "val/loss" in trainer.callback_metrics:
        summary.val_loss = float(trainer.callback_metrics["val/loss"])
    records = _read_history(summary.history_file)
    if records:
        summary.last_scale = records[-1]["scale"]
    summary.alerts = [f"step {r['step']:>4}  {kind:<10}  {r['name']}  scale={r['scale']:.3f} "
                      f"(range [{r['min']:g}, {r['max']:g}]), raw={r['raw']:.3f}, grad={r['grad']}"
                      for r in records for kind in r.get("alerts", [])]
    return summary


def _print_summary(runs: List[RunSummary]) -> None:
    rel = os.path.relpath
    print("\n" + "=" * 78)
    for s in runs:
        print(f"{s.title}  ({s.seconds:.0f} s)\n  {s.command}")
        print(f"  final scale {s.last_scale:.3f}" + (f", validation loss {s.val_loss:.4f}" if s.val_loss is not None else ""))
        print(f"  TensorBoard logs : {rel(s.tensorboard_dir)}")
        print(f"  CSV metrics      : {rel(s.csv_file)}")
        print(f"  W&B offline run  : {rel(s.wandb_dir)}   (upload: wandb sync {rel(s.wandb_dir)})")
        print(f"  scale history    : {rel(s.history_file)}")
        print(f"  scale plot       : {rel(s.plot_file)}")
        print("  alerts           : " + ("none" if not s.alerts else ("\n" + " " * 21).join(s.alerts)))
        print()
    root = os.path.commonpath([rel(s.tensorboard_dir) for s in runs]).split(os.sep)[0]
    print(f"Open TensorBoard   : {BIN}/tensorboard --logdir {root}   (or `source {BIN}/activate` first)")
    print("                     (the CUSTOM SCALARS tab shows each scale inside its [min, max] band;"
          " SCALARS has scalewatch/*, train/*, val/*; IMAGES has the plot)")
    if importlib.util.find_spec("scalewatch.dashboards.cli") is not None:
        print(f"In the terminal    : {BIN}/scalewatch watch {rel(runs[0].run_dir)}   (live, while a run trains)")
        print(f"                     {BIN}/scalewatch report {rel(runs[1].run_dir)}")
    print("=" * 78)


def main() -> None:
    for path in DEMO_DIRS:
        if os.path.isdir(path):
            shutil.rmtree(path)
            print(f"(cleared the previous demo's {path})")
    healthy = run("1. conservative preset: the scale learns inside its bounds", ["conservative.yaml"])
    saturating = run("2. conservative preset, scale learning rate 0.2: drives the scale into its upper bound",
                     ["conservative.yaml", "fast-scale-lr.yaml"])
    _print_summary([healthy, saturating])
    if not any("near_upper" in a for a in saturating.alerts):
        raise SystemExit("demo: expected a near_upper alert in the second run, got none")


if __name__ == "__main__":
    main()
