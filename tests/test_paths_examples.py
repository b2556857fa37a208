"""The examples in a quick mode, with the outcomes the README and their comments state:

- ``examples/demo.py --quick`` (``make demo``, shorter): the fast-scale-lr run's near_upper at
  step 29 and pinned at 49 (README "make demo"), every file the README lists, the compare table;
- ``examples/compare_bias.py --steps 64``: learning the scale beats fixing it at its minimum,
  freezing it at its start does as well as learning it, and a learnable scale that starts at
  its minimum is pinned at step 29 and does no better than the fixed one (README, the example);
- the mmengine ``fast-scale-lr.py`` config: near_upper at 40, pinned at 60 (README "mmengine").
"""
from __future__ import annotations

import glob
import os
import re
import runpy
import subprocess
import sys

import pytest
import torch

import readback
from test_examples import ALERT_LINES, clean_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples")
GEN = "fusion_attention.attention_bias_generator"
RUNS = ("conservative", "aggressive", "ultra-conservative", "fast-scale-lr")


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the examples set one thread for the whole process


# ---- make demo ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, "demo.py"), "--quick"], cwd=str(cwd),
                          env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return dict(root=cwd / "demo_runs", out=proc.stdout, err=proc.stderr)


@pytest.mark.slow
def test_demo_fast_scale_lr_alerts_at_the_readme_steps(demo):
    records = readback.history(str(demo["root"] / "fast-scale-lr" / "tensorboard" / "version_0"))
    history = [r for r in records if "attention" not in r]  # the scale's own lines
    # its config watches the softmax too (attention: true): while the scale pins, the logits grow
    # and the rows sharpen (the README's picture; rows saturate later, in the full run)
    head0 = {(r["attention"], r["step"]): r["scale"] for r in records if r.get("attention") and r["index"] == 0}
    assert head0["max_logit", 59] > 1.5 * head0["max_logit", 9] and head0["entropy", 59] < 0.5 * head0["entropy", 9]
    assert [r["step"] for r in history] == [9, 19, 29, 39, 49, 59]
    assert [(r["step"], kind) for r in history for kind in r["alerts"]] == [(29, "near_upper"), (49, "pinned")]
    assert all(r["grad"] == 0 and r["scale"] == 5.0 for r in history if r["step"] >= 29)  # the clamp cut it
    output = demo["out"] + demo["err"]
    # the README's alert line, as it prints it
    assert (f"⚠️ Scale near upper bound! {GEN} at step 29: scale=5 (range [0.5, 5]), raw=5.389, grad=0; "
            "above 0.9 x max_scale = 4.5") in output
    assert output.count(ALERT_LINES["near_upper"]) == 1 and output.count(ALERT_LINES["pinned"]) == 1
    assert "near_upper@29, pinned@49" in demo["out"]  # the summary table


@pytest.mark.slow
def test_demo_presets_stay_inside_their_bounds_without_alerts(demo):
    bounds = {"conservative": (0.5, 5.0), "aggressive": (1.0, 8.0), "ultra-conservative": (0.5, 3.0)}
    for run, (lo, hi) in bounds.items():
        history = readback.history(str(demo["root"] / run / "tensorboard" / "version_0"))
        assert [r["step"] for r in history] == [9, 19], run
        assert all((r["min"], r["max"]) == (lo, hi) and lo < r["scale"] < 0.9 * hi and r["grad"] != 0
                   and not r["alerts"] for r in history), run


@pytest.mark.slow
def test_demo_leaves_every_file_the_readme_lists(demo):
    root = demo["root"]
    for run in RUNS:
        tb = root / run / "tensorboard" / "version_0"
        assert glob.glob(str(tb / "events.out.tfevents.*")), run
        assert (tb / "config.yaml").is_file() and glob.glob(str(tb / "checkpoints" / "*.ckpt")), run
        assert (tb / "scalewatch_history.jsonl").stat().st_size > 0
        assert (tb / "scale_history.png").stat().st_size > 0
        assert (root / run / "csv" / "version_0" / "metrics.csv").stat().st_size > 0
        assert len(glob.glob(str(root / run / "wandb" / "offline-run-*" / "run-*.wandb"))) == 1, run
        assert "scalewatch/plot" in readback.tensorboard_tags(str(tb))["images"]
    assert (root / "compare.png").stat().st_size > 0
    assert "wrote demo_runs/compare.png" in demo["out"]


@pytest.mark.slow
def test_demo_prints_the_compare_table(demo):
    table = demo["out"].split(GEN + "\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert table[0].split() == ["run", "bounds", "readings", "last", "min", "max", "near", "bound", "alerts",
                                "advice", "val/loss"]
    rows = {line.split()[0]: line for line in table[1:]}
    assert list(rows) == list(RUNS)
    assert re.match(r"fast-scale-lr\s+\[0\.5, 5\]\s+6\s+5\s+2\.089\s+5\s+4 \(67%\)\s+near_upper@29 pinned@49\s+pinned high: soft bound\s+0\.0\d+$",
                    rows["fast-scale-lr"]), rows["fast-scale-lr"]
    for run, bounds in (("conservative", "[0.5, 5]"), ("aggressive", "[1, 8]"), ("ultra-conservative", "[0.5, 3]")):
        assert re.match(rf"{run}\s+{re.escape(bounds)}\s+2\s.*0 \(0%\)\s+-\s+-\s+-$", rows[run]), rows[run]


# ---- compare_bias.py -----------------------------------------------------------------------------


@pytest.mark.slow
def test_compare_bias_quick_keeps_its_stated_outcome(capsys, one_thread, monkeypatch):
    monkeypatch.setattr(sys, "argv", [os.path.join(EXAMPLES, "compare_bias.py")])
    namespace = runpy.run_path(os.path.join(EXAMPLES, "compare_bias.py"), run_name="compare_bias_example")
    namespace["main"](["--steps", "64"])
    text = capsys.readouterr().out
    assert text.startswith("preset conservative, 64 steps, seed 0; oracle (best possible) validation loss 0.0380")
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| setting"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = dict(loss=float(cells[2]), final=float(cells[5]), alerts=cells[6])
    assert list(rows) == ["learnable", "fixed at min", "fixed at init", "learnable from min"]
    assert rows["learnable"]["loss"] < 0.5 * rows["fixed at min"]["loss"]  # learning the bias helps
    assert abs(rows["fixed at init"]["loss"] - rows["learnable"]["loss"]) < 0.005  # what matters is a large scale
    assert rows["learnable from min"]["loss"] == rows["fixed at min"]["loss"]  # pinned: no better than fixed
    assert rows["learnable from min"]["final"] == 0.5
    assert "pinned@29" in rows["learnable from min"]["alerts"]  # README: "reports pinned at step 29"
    assert rows["learnable"]["alerts"] == "-" and rows["fixed at init"]["alerts"] == "-"


# ---- the mmengine fast-scale-lr config --------------------------------------------------------------


@pytest.mark.slow
def test_mmengine_fast_scale_lr_config_alerts_at_40_and_60(tmp_path, one_thread):
    pytest.importorskip("mmengine")
    mm = os.path.join(EXAMPLES, "mmengine")
    namespace = runpy.run_path(os.path.join(mm, "train.py"), run_name="mmengine_example")
    runner = namespace["main"]([os.path.join(mm, "configs", "fast-scale-lr.py"), "--work-dir", str(tmp_path),
                                "--cfg-options", "train_cfg.max_iters=60", "val_dataloader.dataset.num_samples=256"])
    history = [r for r in readback.history(runner.log_dir) if r["name"] == "net." + GEN]
    assert [r["step"] for r in history] == [10, 20, 30, 40, 50, 60]
    assert [(r["step"], kind) for r in history for kind in r["alerts"]] == [(40, "near_upper"), (60, "pinned")]
    (log,) = glob.glob(os.path.join(runner.log_dir, "*.log"))
    with open(log, encoding="utf-8") as f:
        text = f.read()
    assert re.search(rf"Scale near upper bound! net\.{GEN} at step 40", text)
    assert re.search(rf"Scale pinned at its bound! net\.{GEN} at step 60", text)
    assert os.path.getsize(os.path.join(runner.log_dir, "scale_history.png")) > 0
