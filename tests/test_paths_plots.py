"""Advertised plot and display paths, for real, read back from disk:

- ``plot_every_n_checks=K`` sends the plot to the loggers every K checks (and once at the end),
  through every door: TensorBoard event files read back with TensorBoard's EventAccumulator;
- ``display: exp`` given in a LightningCLI YAML reaches the history, the plot and the report.
"""
from __future__ import annotations

import glob
import importlib
import json
import math
import os
import sys  # noqa: F401 - sys.argv patched by name
import textwrap
from typing import List

import pytest
import torch

import readback
from models import LIGHTNING_PACKAGES, loader, modules_for
from scalewatch.callbacks import PLOT_FILENAME, ScaleMonitor, ScaleWatcher
from scalewatch.dashboards.cli import main as scalewatch
from scalewatch.dashboards.plot import close, plot_history
from scalewatch.monitor import HISTORY_FILENAME
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

GEN = "head.attention_bias_generator"
LN100 = 4.60517


def images(log_dir: str, tag: str) -> List[int]:
    """The steps of the images under ``tag`` in the TensorBoard events below ``log_dir``; each a real PNG."""
    ea = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    ea.Reload()
    events = ea.Images(tag)
    assert all(e.width > 0 and e.height > 0 and e.encoded_image_string[:4] == b"\x89PNG" for e in events)
    return [e.step for e in events]


# ---- plot_every_n_checks, through every door --------------------------------------------------
# every_n_steps=2, plot_every_n_checks=3, 20 optimizer steps: 10 checks, a plot at checks 3, 6, 9
# and the final one at the end.


def test_plain_loop_sends_the_plot_every_k_checks(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    DriftModel, _ = modules_for("pytorch_lightning")
    torch.manual_seed(0)
    model = DriftModel(lr=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [b for b in loader()]
    writer = SummaryWriter(str(tmp_path / "tb"))
    with ScaleWatcher(model, log_dir=tmp_path, every_n_steps=2, plot_every_n_checks=3, tensorboard=writer) as w:
        for step in range(20):
            (x,) = batches[step % len(batches)]
            weights = torch.sigmoid(model.proj(x)).unsqueeze(-1).expand(-1, -1, 8)
            (-model.head.attention_bias_generator(weights).float().mean()).backward()
            w.step(step)
            opt.step()
            opt.zero_grad()
    writer.close()
    assert [r["step"] for r in readback.history(str(tmp_path))] == list(range(1, 20, 2))
    assert images(str(tmp_path / "tb"), "scalewatch/plot") == [5, 11, 17, 19]  # checks 3, 6, 9; close()
    assert (tmp_path / PLOT_FILENAME).stat().st_size > 0


@pytest.mark.parametrize("package", LIGHTNING_PACKAGES)
def test_lightning_sends_the_plot_every_k_checks(tmp_path, package):
    pl = importlib.import_module(package)
    loggers = importlib.import_module(f"{package}.loggers")
    DriftModel, _ = modules_for(package)
    logger = loggers.TensorBoardLogger(str(tmp_path), name="tb")
    trainer = pl.Trainer(max_steps=20, logger=logger, log_every_n_steps=2, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         callbacks=[ScaleMonitor(every_n_steps=2, plot_every_n_checks=3)])
    trainer.fit(DriftModel(lr=0.1))
    assert [r["step"] for r in readback.history(logger.log_dir)] == list(range(1, 20, 2))
    assert images(logger.log_dir, "scalewatch/plot") == [5, 11, 17, 20]  # the last at the end of fit's global_step


def test_hf_sends_the_plot_every_k_checks(tmp_path):
    pytest.importorskip("transformers")
    from hf_models import hf_trainer
    from scalewatch.callbacks.hf import ScaleMonitorCallback

    trainer = hf_trainer(tmp_path, [ScaleMonitorCallback(every_n_steps=2, plot_every_n_checks=3)], max_steps=20,
                         logging_steps=2, learning_rate=0.1)
    trainer.train()
    assert [r["step"] for r in readback.history(str(tmp_path))] == list(range(2, 21, 2))  # HF counts from 1
    (events,) = glob.glob(str(tmp_path / "**" / "events.out.tfevents.*"), recursive=True)
    assert images(os.path.dirname(events), "scalewatch/plot") == [6, 12, 18, 20]


def test_mmengine_sends_the_plot_every_k_checks(tmp_path):
    pytest.importorskip("mmengine")
    from mmengine_models import make_runner

    runner = make_runner(str(tmp_path), max_iters=20, lr=0.1, log_interval=2,
                         hook=dict(interval=2, plot_every_n_checks=3),
                         vis_backends=[dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")])
    runner.train()
    assert [r["step"] for r in readback.history(runner.log_dir) if r["name"] == GEN] == list(range(2, 21, 2))
    assert images(os.path.join(runner.log_dir, "vis_data"), "scalewatch_plot") == [6, 12, 18, 20]
    pngs = glob.glob(os.path.join(runner.log_dir, "vis_data", "vis_image", "scalewatch_plot_*.png"))
    assert sorted(int(p.rsplit("_", 1)[1][:-4]) for p in pngs) == [6, 12, 18, 20]


# ---- display: exp from a LightningCLI YAML ----------------------------------------------------


@pytest.fixture(scope="module", params=LIGHTNING_PACKAGES)
def exp_cli_run(request, tmp_path_factory):
    """LogitScaleModel (open_clip's pattern: Adam pushes ``logit_scale`` up, an in-place clamp at ln 100)
    through LightningCLI, ScaleMonitor's params from YAML as the README writes them."""
    package = request.param
    root = tmp_path_factory.mktemp("exp-" + package.split(".")[0])
    cli = importlib.import_module(f"{package}.cli")
    config = root / "config.yaml"
    config.write_text(textwrap.dedent(f"""
        seed_everything: 0
        trainer:
          max_steps: 40
          log_every_n_steps: 5
          enable_checkpointing: false
          enable_progress_bar: false
          enable_model_summary: false
          logger:
            - class_path: {package}.loggers.TensorBoardLogger
              init_args: {{save_dir: {root}, name: tb}}
          callbacks:
            - class_path: scalewatch.callbacks.ScaleMonitor
              init_args:
                every_n_steps: 5
                params: {{logit_scale: {{min: 0.0, max: {LN100}, display: exp}}}}
        model:
          max_value: {LN100}
    """))
    _, LogitScaleModel = modules_for(package)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", ["train.py"])  # LightningCLI(args=...) warns about pytest's own argv
        run = cli.LightningCLI(LogitScaleModel, args=["fit", "--config", str(config)])
    monitor = next(c for c in run.trainer.callbacks if isinstance(c, ScaleMonitor))
    return dict(root=root, log_dir=monitor.log_dir, monitor=monitor,
                history=readback.history(monitor.log_dir))


def test_exp_from_yaml_history_keeps_ln_units_and_says_exp(exp_cli_run):
    rows = exp_cli_run["history"]
    assert [r["step"] for r in rows] == list(range(4, 40, 5))
    assert all(r["name"] == "logit_scale" and r["display"] == "exp" for r in rows)
    assert all((r["min"], r["max"]) == (0.0, pytest.approx(LN100)) for r in rows)  # ln units, as the optimizer
    assert all(0.0 <= r["scale"] <= LN100 + 1e-6 for r in rows)
    fired = [(r["step"], kind) for r in rows for kind in r["alerts"]]
    assert [kind for _, kind in fired] == ["near_upper", "pinned"], rows
    # the saved config.yaml of the run has the spec as given
    saved = (os.path.join(exp_cli_run["log_dir"], "config.yaml"))
    with open(saved, encoding="utf-8") as f:
        assert "display: exp" in f.read()
    # loggers keep ln units too
    scale = readback.tensorboard_scalars(exp_cli_run["log_dir"], "scalewatch/logit_scale/scale")
    assert [(s, pytest.approx(v, rel=1e-6)) for s, v in scale] == [(r["step"], r["scale"]) for r in rows]


def test_exp_from_yaml_report_shows_exp_units(exp_cli_run, capsys):
    log_dir = exp_cli_run["log_dir"]
    rows = exp_cli_run["history"]
    assert scalewatch(["report", log_dir, "--json"]) == 0
    (s,) = json.loads(capsys.readouterr().out)["scales"]
    assert s["display"] == "exp" and (s["min"], s["max"]) == (pytest.approx(1.0), pytest.approx(100.0, rel=1e-5))
    assert s["raw_units"]["min"] == 0.0 and s["raw_units"]["max"] == pytest.approx(LN100)
    assert s["last"]["scale"] == pytest.approx(math.exp(rows[-1]["scale"]))
    assert (s["last"]["raw"], s["last"]["grad"]) == (rows[-1]["raw"], rows[-1]["grad"])  # raw stays raw
    assert s["upper_warning"] == pytest.approx(math.exp(0.9 * LN100), rel=1e-5)
    assert all(a["scale"] == pytest.approx(math.exp(a["raw_units"]["scale"])) for a in s["alerts"])
    assert scalewatch(["report", log_dir]) == 0
    text = capsys.readouterr().out
    assert "logit_scale (exp)" in text and "[1, 100]" in text
    assert "scale=100 (raw 4.605)" in text  # the pinned alert, as the README shows it


def test_exp_from_yaml_plot_draws_exp_units(exp_cli_run):
    log_dir = exp_cli_run["log_dir"]
    rows = exp_cli_run["history"]
    assert os.path.getsize(os.path.join(log_dir, PLOT_FILENAME)) > 0
    fig = plot_history(os.path.join(log_dir, HISTORY_FILENAME))
    try:
        (panel,) = [ax for ax in fig.axes if ax.get_yscale() == "linear"]
        assert panel.get_ylabel() == "exp(scale)" and "range [1, 100]" in panel.get_title("left")
        (line,) = [ln for ln in panel.get_lines() if ln.get_label() == "exp(scale) (effective)"]
        assert list(line.get_ydata()) == pytest.approx([math.exp(r["scale"]) for r in rows])
        labels = {ln.get_label() for ln in panel.get_lines()}
        assert {"max = exp(4.605) = 100", "min = exp(0) = 1"} <= labels
    finally:
        close(fig)
    assert images(log_dir, "scalewatch/plot")  # the final plot reached TensorBoard
