"""The camera/LiDAR fusion example: data, model, LightningCLI presets, the alert setting, the quickstart.

The CLI runs are subprocesses (as a user starts them), each a few dozen steps on
a small data set, in a temporary working directory (the configs log to the
relative ``demo_runs/``).
"""
from __future__ import annotations

import csv
import glob
import json
import math
import os
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch

from scalewatch.monitor import HISTORY_FILENAME, PRESETS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples")
CONFIGS = os.path.join(EXAMPLES, "configs")
TRAIN = os.path.join(EXAMPLES, "train.py")
sys.path.insert(0, EXAMPLES)

from attention_stats import attention_entropy, saturated_row_fraction  # noqa: E402
from sensor_fusion_data import SensorFusionDataModule, make_sensor_fusion_samples, oracle_mse  # noqa: E402
from train import main as train_main  # noqa: E402

#: small and short: a few dozen steps on 512 scenes
FAST = ["--trainer.enable_progress_bar", "false", "--data.train_samples", "512", "--data.val_samples", "128"]
ALERT_LINES = {"near_upper": "Scale near upper bound!", "near_lower": "Scale near lower bound!",
               "pinned": "Scale pinned at its bound!", "non_finite": "Scale value is not finite!"}


def clean_env() -> Dict[str, str]:
    """The environment for a training subprocess: offline W&B, and none of this process's W&B state.

    An in-process W&B run leaves ``WANDB_SERVICE`` (and the like) in ``os.environ``; a
    child that inherits it talks to this process's W&B service instead of its own.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def in_process_cli(monkeypatch):
    """For LightningCLI runs inside pytest: quiet about pytest's argv, torch's thread count restored."""
    monkeypatch.setattr(sys, "argv", [TRAIN])  # LightningCLI(args=...) warns when sys.argv has arguments too
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the CLI sets --num_threads (1) for the whole process


def run_cli(args: List[str], cwd: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``python examples/train.py ARGS`` in ``cwd``, offline, and fail with its output if it fails."""
    env = clean_env()
    proc = subprocess.run([sys.executable, TRAIN, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    return proc


def run_clis(runs: List[Tuple[List[str], str]], timeout: float = 240) -> List[subprocess.CompletedProcess]:
    """:func:`run_cli` for several ``(args, cwd)`` at once: each run is one torch thread, mostly
    starting up, so the machine's cores take them side by side."""
    with ThreadPoolExecutor(len(runs)) as pool:
        return list(pool.map(lambda run: run_cli(*run, timeout=timeout), runs))


def read_history(path: str) -> List[Dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def only(pattern: str) -> str:
    found = glob.glob(pattern, recursive=True)
    assert len(found) == 1, f"expected one match for {pattern}, got {found}"
    return found[0]


# ---- data and model pieces ---------------------------------------------------------------------


def test_data_is_deterministic_by_seed() -> None:
    a = make_sensor_fusion_samples(64, seed=3)
    b = make_sensor_fusion_samples(64, seed=3)
    c = make_sensor_fusion_samples(64, seed=4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["tokens"], c["tokens"])
    dm = SensorFusionDataModule(train_samples=32, val_samples=16, seed=3)
    dm.setup("fit")
    assert torch.equal(dm.train_set.samples["tokens"], make_sensor_fusion_samples(32, seed=3)["tokens"])
    assert not torch.equal(dm.val_set.samples["target"][:16], dm.train_set.samples["target"][:16])


def test_exactly_one_sensor_is_unreliable_per_sample() -> None:
    s = make_sensor_fusion_samples(256, seed=0, num_positions=8, good_noise=0.2, bad_noise_min=1.0,
                                   bad_noise_max=3.0)
    per_sensor = s["reliable"].view(256, 2, 8)
    assert torch.equal(per_sensor.sum(1), torch.ones(256, 8))  # one of camera/LiDAR per cell...
    assert torch.equal(per_sensor.amin(-1), per_sensor.amax(-1))  # ...and the same one for all cells
    bad = s["noise_std"][s["reliable"] == 0]
    assert bad.min() >= 1.0 and bad.max() <= 3.0
    assert 0 < oracle_mse(s) < 0.2 ** 2


def test_attention_stats() -> None:
    uniform = torch.full((2, 3, 8), 1 / 8)
    one_hot = torch.nn.functional.one_hot(torch.arange(3) % 8, 8).float().expand(2, 3, 8)
    assert attention_entropy(uniform).item() == pytest.approx(math.log(8))
    assert attention_entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    assert saturated_row_fraction(uniform).item() == 0.0
    assert saturated_row_fraction(one_hot).item() == 1.0


def test_cli_builds_monitor_and_three_loggers(tmp_path, monkeypatch, in_process_cli) -> None:
    monkeypatch.chdir(tmp_path)
    cli = train_main(["--config", os.path.join(CONFIGS, "conservative.yaml"), "--model.d_model", "16",
                      "--data.num_positions", "4"], run=False)
    names = {type(cb).__name__ for cb in cli.trainer.callbacks}
    assert "ScaleMonitor" in names
    assert sorted(type(lg).__name__ for lg in cli.trainer.loggers) == ["CSVLogger", "TensorBoardLogger", "WandbLogger"]
    assert cli.model.hparams.d_model == 16
    assert cli.model.hparams.num_positions == 4  # linked from the data
    assert cli.model.attention_bias_generator.scale_bounds == (0.5, 5.0)
    assert torch.get_num_threads() == 1  # --num_threads, default 1


def test_learning_the_bias_beats_the_scale_fixed_at_min(tmp_path, in_process_cli) -> None:
    """The number the example exists to show, on a shortened run (the full one: compare_bias.py)."""
    losses = {}
    for setting, overrides in {"learnable": [],
                               "fixed_min": ["--model.learnable_scale", "false", "--model.bias_scale", "0.5"]}.items():
        cli = train_main(["fit", "--config", os.path.join(CONFIGS, "conservative.yaml"), "--trainer.max_steps", "150",
                          "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
                          "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]",
                          "--trainer.default_root_dir", str(tmp_path / setting), *overrides])
        losses[setting] = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]["val/loss"]
    assert losses["learnable"] < 0.5 * losses["fixed_min"], losses


# ---- the CLI, as a user runs it --------------------------------------------------------------------


def test_cli_trains_each_preset(tmp_path) -> None:
    names = sorted(PRESETS)
    for name in names:
        (tmp_path / name).mkdir()
    run_clis([(["fit", "--config", os.path.join(CONFIGS, f"{name}.yaml"), "--trainer.max_steps", "20", *FAST],
               str(tmp_path / name)) for name in names])
    for name in names:
        _check_preset_run(tmp_path / name / "demo_runs" / name, name)


def _check_preset_run(run: Path, preset_name: str) -> None:
    records = read_history(only(f"{run}/tensorboard/version_0/{HISTORY_FILENAME}"))
    assert [r["step"] for r in records] == [9, 19], preset_name
    bounds = PRESETS[preset_name]
    for r in records:
        assert (r["min"], r["max"]) == (bounds["min_scale"], bounds["max_scale"]), (preset_name, r)
        assert r["min"] <= r["scale"] <= r["max"] and math.isfinite(r["grad"]), (preset_name, r)
    assert (run / "tensorboard" / "version_0" / "scale_history.png").stat().st_size > 0
    assert glob.glob(f"{run}/tensorboard/version_0/events.out.tfevents.*")
    only(f"{run}/wandb/offline-run-*/run-*.wandb")
    with open(only(f"{run}/csv/version_0/metrics.csv"), encoding="utf-8") as f:
        columns = set(next(csv.reader(f)))
    for key in ("train/loss", "train/attention_entropy", "train/saturated_rows", "train/reliable_attention",
                "val/loss", "val/attention_entropy", "val/saturated_rows",
                "scalewatch/fusion_attention.attention_bias_generator/scale",
                "scalewatch/fusion_attention.attention_bias_generator/grad"):
        assert key in columns, key


def test_fast_scale_lr_drives_the_scale_into_its_bound(tmp_path) -> None:
    proc = run_cli(["fit", "--config", os.path.join(CONFIGS, "conservative.yaml"),
                    "--config", os.path.join(CONFIGS, "fast-scale-lr.yaml"), "--trainer.max_steps", "60", *FAST],
                   cwd=str(tmp_path))
    records = read_history(only(f"{tmp_path}/demo_runs/fast-scale-lr/tensorboard/version_0/{HISTORY_FILENAME}"))
    records = [r for r in records if "attention" not in r]  # the scale's lines (the config also watches attention)
    fired = [kind for r in records for kind in r["alerts"]]
    assert fired.count("near_upper") == 1
    assert records[-1]["scale"] == pytest.approx(5.0)
    output = proc.stdout + proc.stderr
    assert output.count(ALERT_LINES["near_upper"]) == 1


def test_quickstart_keeps_what_the_readme_promises(tmp_path) -> None:
    """examples/quickstart.py (the README's Quick start): ScaleMonitor(every_n_steps=10) over 200 steps
    records scalewatch/<module path>/{scale,raw,grad,min,max} to TensorBoard and CSV at the same steps
    as the history, draws the plot, and alerts as the scale climbs into its bound."""
    import readback

    root = tmp_path / "quickstart"
    env = dict(clean_env(), SCALEWATCH_DEMO_DIR=str(root), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, "quickstart.py")], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    tb_dir, csv_dir = root / "tb" / "version_0", root / "csv" / "version_0"
    # what it prints at the end: where the history and the plot are, how to open TensorBoard
    printed = dict(line.split(":", 1) for line in proc.stdout.splitlines()[-3:])
    assert {k: v.strip() for k, v in printed.items()} == {
        "history": str(tb_dir / HISTORY_FILENAME), "plot": str(tb_dir / "scale_history.png"),
        "open": f"tensorboard --logdir {root}"}, proc.stdout[-2000:]

    # the history: one reading every 10 optimizer steps, named by the module path, within its bounds
    records = readback.history(str(tb_dir))
    steps = list(range(9, 200, 10))
    assert [r["step"] for r in records] == steps
    assert {r["name"] for r in records} == {"attention_bias_generator"}
    assert all((r["min"], r["max"]) == (0.5, 5.0) and 0.5 <= r["scale"] <= 5.0 for r in records)
    # the scale climbs from 2.5 into its upper bound; the clamp then cuts its gradient
    scales = [r["scale"] for r in records]
    assert 2.5 < scales[0] and scales == sorted(scales) and scales[-1] == 5.0
    assert records[-1]["raw"] > 5.0 and records[-1]["grad"] == 0.0
    # alerts: near_upper at the first reading above 0.9 x max, pinned after `patience` (3) pinned readings
    near = next(r["step"] for r in records if r["scale"] > 0.9 * 5.0)
    pinned_at = [i for i, r in enumerate(records) if r["raw"] >= 5.0 and r["grad"] == 0.0]
    pinned = next(records[i]["step"] for i in pinned_at if {i - 1, i - 2} <= set(pinned_at))
    assert [(r["step"], a) for r in records for a in r["alerts"]] == [(near, "near_upper"), (pinned, "pinned")]
    assert proc.stderr.count("Scale near upper bound! attention_bias_generator at step") == 1
    assert proc.stderr.count("Scale pinned at its bound! attention_bias_generator at step") == 1

    # the same readings under the same keys in both loggers
    fields = ("scale", "raw", "grad", "min", "max")
    for field in fields:
        key = f"scalewatch/attention_bias_generator/{field}"
        expected = [(r["step"], pytest.approx(r[field], rel=1e-6)) for r in records]
        assert readback.tensorboard_scalars(str(tb_dir), key) == expected, key
        assert readback.csv_series(str(csv_dir), key) == expected, key
    # TensorBoard also gets the Margin chart of the scale between its bounds, and the plot image
    layout = readback.tensorboard_layout(str(tb_dir))
    assert layout["scalewatch"]["attention_bias_generator"] == [
        f"scalewatch/attention_bias_generator/{f}" for f in ("scale", "min", "max")]
    assert "scalewatch/plot" in readback.tensorboard_tags(str(tb_dir))["images"]
    # and the plot itself
    png = (tb_dir / "scale_history.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 300 and height > 200
