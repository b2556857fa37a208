"""Both Lightning packages from one install: LightningCLI of each takes ScaleMonitor from YAML,
its errors are each package's MisconfigurationException, and with only one package (or none)
installed everything still works (or says which extra to install).

The end-to-end runs under both packages are in test_scale_monitor.py (the three-logger run)
and test_resume_and_ddp.py (resume and 2-process DDP)."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import Dict, Sequence

import pytest

import readback
from models import LIGHTNING_PACKAGES, modules_for
from scalewatch.callbacks import ScaleMonitor

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: the top-level entries (module and metadata) that make up each package in site-packages
DISTRIBUTIONS = {"lightning.pytorch": ("lightning", "lightning-"), "pytorch_lightning": ("pytorch_lightning",)}


@pytest.mark.parametrize("package", LIGHTNING_PACKAGES)
def test_monitor_is_a_callback_of_each_package_and_raises_its_exception(package):
    lightning = importlib.import_module(package)
    exceptions = importlib.import_module(f"{package}.utilities.exceptions")
    assert isinstance(ScaleMonitor(), lightning.Callback)
    assert issubclass(ScaleMonitor, lightning.Callback)
    with pytest.raises(exceptions.MisconfigurationException, match="`patience` must be an integer >= 1, got 0"):
        ScaleMonitor(patience=0)


@pytest.mark.parametrize("package", LIGHTNING_PACKAGES)
def test_lightning_cli_of_each_package_takes_the_monitor_from_yaml(tmp_path, package):
    cli = importlib.import_module(f"{package}.cli")
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent(f"""
        trainer:
          max_steps: 6
          default_root_dir: {tmp_path}
          logger: false
          enable_checkpointing: false
          enable_progress_bar: false
          enable_model_summary: false
          callbacks:
            - class_path: scalewatch.callbacks.ScaleMonitor
              init_args: {{every_n_steps: 2, warn_fraction: 0.8, patience: 2}}
        model:
          lr: 0.01
    """))
    DriftModel, _ = modules_for(package)
    run = cli.LightningCLI(DriftModel, args=["fit", "--config", str(config)], save_config_callback=None)
    monitors = [c for c in run.trainer.callbacks if isinstance(c, ScaleMonitor)]
    assert len(monitors) == 1 and (monitors[0].warn_fraction, monitors[0].patience) == (0.8, 2)
    assert [r["step"] for r in readback.history(str(tmp_path))] == [1, 3, 5]


def site_without(root: Path, packages: Sequence[str]) -> Path:
    """A site-packages with everything this venv has except ``packages`` (modules and metadata)."""
    site = root / ("site_without_" + "_".join(p.split(".")[0] for p in packages))
    site.mkdir()
    hidden = tuple(prefix for p in packages for prefix in DISTRIBUTIONS[p])
    purelib = Path(sysconfig.get_paths()["purelib"])
    for entry in purelib.iterdir():
        if not any(entry.name == h or (h.endswith("-") and entry.name.startswith(h))
                   or entry.name.startswith(h + "-") for h in hidden):
            (site / entry.name).symlink_to(entry)
    return site


def run_in(site: Path, code: str) -> Dict[str, object]:
    boot = (f"import site, sys; site.addsitedir({str(site)!r}); sys.path.insert(0, {str(HERE)!r}); "
            "exec(compile(sys.stdin.read(), '<test>', 'exec'))")
    proc = subprocess.run([sys.executable, "-S", "-c", boot], input=textwrap.dedent(code), capture_output=True,
                          text=True, timeout=300, cwd=str(REPO))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"rc={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.slow
@pytest.mark.parametrize("only", LIGHTNING_PACKAGES)
def test_with_only_one_package_installed_it_trains_with_the_full_treatment(tmp_path, only):
    other = next(p for p in LIGHTNING_PACKAGES if p != only)
    site = site_without(tmp_path, [other])
    result = run_in(site, f"""
        import importlib, importlib.util, json
        assert importlib.util.find_spec({other.split(".")[0]!r}) is None
        lightning = importlib.import_module({only!r})
        from {only}.loggers import CSVLogger, TensorBoardLogger
        from scalewatch.callbacks import ScaleMonitor
        from models import modules_for
        import readback
        root = {str(tmp_path / "run")!r}
        monitor = ScaleMonitor(every_n_steps=2)
        tb = TensorBoardLogger(root, name="tb")
        trainer = lightning.Trainer(max_steps=6, logger=[tb, CSVLogger(root, name="csv")], callbacks=[monitor],
                                    enable_progress_bar=False, enable_model_summary=False,
                                    enable_checkpointing=False, log_every_n_steps=2)
        trainer.fit(modules_for({only!r})[0](lr=0.01))
        tags = readback.tensorboard_tags(tb.log_dir)
        print("RESULT " + json.dumps({{
            "callback": isinstance(monitor, lightning.Callback),
            "steps": [r["step"] for r in readback.history(tb.log_dir)],
            "layout": list(readback.tensorboard_layout(tb.log_dir)["scalewatch"]),
            "image": "scalewatch/plot" in tags["images"],
        }}))
    """)
    assert result == {"callback": True, "steps": [1, 3, 5], "layout": ["head.attention_bias_generator"],
                      "image": True}


@pytest.mark.slow
def test_with_neither_package_the_engine_works_and_the_monitor_names_both_extras(tmp_path):
    site = site_without(tmp_path, LIGHTNING_PACKAGES)
    result = run_in(site, f"""
        import json, torch
        from scalewatch.callbacks import ScaleWatcher
        from scalewatch.monitor import AttentionBiasGenerator
        model = torch.nn.Sequential(AttentionBiasGenerator())
        with ScaleWatcher(model, log_dir={str(tmp_path / "loop")!r}, every_n_steps=1, plot=False) as w:
            model[0](torch.ones(2, 2)).sum().backward()
            w.step(0)
        try:
            from scalewatch.callbacks import ScaleMonitor
            error = None
        except ImportError as err:
            error = str(err)
        print("RESULT " + json.dumps({{"checks": w.checks, "error": error}}))
    """)
    assert result["checks"] == 1
    assert "scalewatch[lightning]" in result["error"] and "scalewatch[pytorch-lightning]" in result["error"]
