"""Does learning the attention-bias scale help? Validation loss, learnable vs. fixed at the minimum.

    python examples/compare_bias.py                 # conservative preset, 320 steps, seed 0
    python examples/compare_bias.py --steps 150 --config examples/configs/aggressive.yaml

Trains the example with the same seed, data and steps under each setting and
validates the final weights:

- ``learnable``: the preset as configured (scale starts at ``bias_scale`` and learns);
- ``fixed at min``: ``--model.learnable_scale false --model.bias_scale <min_scale>``;
- ``fixed at init``: ``--model.learnable_scale false`` (scale frozen at the preset's start);
- ``learnable from min``: ``--model.bias_scale <min_scale>``: the first updates push the
  raw parameter below the minimum, the hard clamp cuts its gradient and it stays pinned
  there (ScaleMonitor's ``pinned`` alert) -- no better than fixing it.

It prints a Markdown table with the oracle's loss (inverse-variance fusion with
the true noise levels) as the floor.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train import main as train_main  # noqa: E402
from scalewatch.monitor import HISTORY_FILENAME  # noqa: E402

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "conservative.yaml")


@dataclass
class Outcome:
    """How one setting ended."""

    setting: str
    overrides: List[str]
    val_loss: float
    reliable_attention: float
    saturated_rows: float
    final_scale: float
    alerts: List[str]


def quiet_args(config: str, steps: int, seed: int, run_dir: str) -> List[str]:
    """CLI arguments (after the subcommand) for a run with no loggers, checkpoints or progress bar (ScaleMonitor stays)."""
    return ["--config", config, "--seed_everything", str(seed), "--trainer.max_steps", str(steps),
            "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", run_dir]


def train_and_validate(setting: str, config: str, steps: int, seed: int, overrides: List[str],
                       root: str) -> Outcome:
    """Train one setting quietly and validate its final weights."""
    run_dir = os.path.join(root, setting.replace(" ", "-"))
    cli = train_main(["fit"] + quiet_args(config, steps, seed, run_dir) + overrides)
    metrics: Dict[str, float] = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    history = os.path.join(run_dir, HISTORY_FILENAME)
    records = [json.loads(line) for line in open(history, encoding="utf-8")] if os.path.exists(history) else []
    return Outcome(setting=setting, overrides=overrides, val_loss=metrics["val/loss"],
                   reliable_attention=metrics["val/reliable_attention"],
                   saturated_rows=metrics["val/saturated_rows"],
                   final_scale=float(cli.model.attention_bias_generator.scale.detach()),
                   alerts=[f"{kind}@{r['step']}" for r in records for kind in r.get("alerts", [])])


def compare(config: str = DEFAULT_CONFIG, steps: int = 320, seed: int = 0) -> Dict[str, object]:
    """Run every setting; return the outcomes and the oracle floor."""
    with tempfile.TemporaryDirectory(prefix="scalewatch-compare-") as root:
        cli = train_main(quiet_args(config, steps, seed, root), run=False)  # built, not trained
        min_scale = cli.model.attention_bias_generator.min_scale
        oracle = cli.datamodule.val_oracle_mse()
        settings = {
            "learnable": [],
            "fixed at min": ["--model.learnable_scale", "false", "--model.bias_scale", str(min_scale)],
            "fixed at init": ["--model.learnable_scale", "false"],
            "learnable from min": ["--model.bias_scale", str(min_scale)],
        }
        outcomes = [train_and_validate(s, config, steps, seed, o, root) for s, o in settings.items()]
    return {"preset": cli.model.hparams.preset, "steps": steps, "seed": seed, "oracle": oracle,
            "outcomes": outcomes}


def format_table(result: Dict[str, object]) -> str:
    """The comparison as a Markdown table."""
    lines = [f"preset {result['preset']}, {result['steps']} steps, seed {result['seed']}; "
             f"oracle (best possible) validation loss {result['oracle']:.4f}", "",
             "| setting | overrides | val loss | attention on reliable sensor | saturated rows | final scale | alerts |",
             "|---|---|---|---|---|---|---|"]
    for o in result["outcomes"]:
        lines.append(f"| {o.setting} | `{' '.join(o.overrides) or '(none)'}` | {o.val_loss:.4f} | "
                     f"{o.reliable_attention:.3f} | {o.saturated_rows:.3f} | {o.final_scale:.3f} | "
                     f"{', '.join(o.alerts) or '-'} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="a preset config (default: conservative)")
    parser.add_argument("--steps", type=int, default=320, help="optimizer steps per setting")
    parser.add_argument("--seed", type=int, default=0, help="seed_everything value (the data has its own seed)")
    args = parser.parse_args(argv)
    print(format_table(compare(args.config, args.steps, args.seed)))


if __name__ == "__main__":
    main()
