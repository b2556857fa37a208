"""Missing optional pieces: without wandb everything but W&B works and asking for W&B says how
to install it; with no logger the history and the plot land in default_root_dir."""
from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from scalewatch.callbacks import PLOT_FILENAME, ScaleMonitor, metric_key
from scalewatch.monitor import HISTORY_FILENAME

from . import support
from .support import GEN, assert_png, csv_series, make_trainer, read_csv_metrics, read_jsonl, read_tb, tb_series


@pytest.fixture(scope="module")
def site_without_wandb(tmp_path_factory) -> Path:
    """A site-packages with everything this venv has except wandb (module and metadata):
    links to every entry but ``wandb*``. Interpreters started with ``-S`` and this one
    site dir see wandb as not installed at all."""
    site = tmp_path_factory.mktemp("site_without_wandb")
    purelib = Path(sysconfig.get_paths()["purelib"])
    for entry in purelib.iterdir():
        if not entry.name.lower().startswith("wandb"):
            (site / entry.name).symlink_to(entry)
    return site


def run_without_wandb(site: Path, code: str, timeout: float = 240) -> subprocess.CompletedProcess:
    boot = (f"import site, sys; site.addsitedir({str(site)!r}); "
            f"sys.path.insert(0, {str(support.HERE)!r}); sys.path.insert(0, {str(support.TESTS_DIR)!r}); "
            "exec(compile(sys.stdin.read(), '<test>', 'exec'))")
    return subprocess.run([sys.executable, "-S", "-c", boot], input=textwrap.dedent(code), capture_output=True,
                          text=True, timeout=timeout, env=support.subprocess_env(), cwd=str(support.REPO_ROOT))


def _tagged(proc: subprocess.CompletedProcess, tag: str):
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(tag + " ")]
    assert proc.returncode == 0 and lines, f"rc={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len(tag) + 1:])


@pytest.fixture(scope="module")
def no_wandb_run(site_without_wandb, tmp_path_factory):
    """One interpreter without wandb: trains with TensorBoard + CSV, then asks for W&B twice."""
    root = tmp_path_factory.mktemp("no_wandb_run")
    history = root / "asked" / HISTORY_FILENAME
    history.parent.mkdir()
    history.write_text(json.dumps({"step": 1, "name": "g", "scale": 2.5, "raw": 2.5, "grad": 0.1, "min": 0.5,
                                   "max": 5.0, "alerts": []}) + "\n")
    proc = run_without_wandb(site_without_wandb, f"""
        import importlib.metadata, importlib.util, json, sys
        assert importlib.util.find_spec("wandb") is None
        try:
            importlib.metadata.version("wandb")
            raise SystemExit("wandb metadata still visible")
        except importlib.metadata.PackageNotFoundError:
            pass
        import support
        support.main(["plain-run", {str(root)!r}])

        def attempt(fn):
            try:
                fn()
            except Exception as err:
                return [type(err).__name__, str(err)]
            return None

        from pytorch_lightning.loggers import WandbLogger
        from scalewatch.dashboards import wandb_charts
        print("ASKED " + json.dumps({{
            "WandbLogger": attempt(lambda: WandbLogger(save_dir={str(root / "asked")!r}, offline=True)),
            "bounds_charts": attempt(lambda: wandb_charts.bounds_charts({str(history)!r})),
        }}))
    """)
    return root, _tagged(proc, "RESULT"), _tagged(proc, "ASKED")


def test_training_without_wandb_works(no_wandb_run):
    root, result, _ = no_wandb_run
    assert result["global_step"] == 8
    assert result["wandb_imported"] is False
    assert result["alerts"] == ["near_upper", "pinned"]
    log_dir = Path(result["log_dir"])
    assert log_dir == root / "tb" / "version_0"
    records = read_jsonl(log_dir / HISTORY_FILENAME)
    assert [r["step"] for r in records] == [1, 3, 5, 7]
    assert_png(log_dir / PLOT_FILENAME)
    expected = {r["step"]: r["scale"] for r in records}
    assert tb_series(read_tb(log_dir), metric_key(GEN, "scale")) == pytest.approx(expected)
    assert csv_series(read_csv_metrics(root / "csv" / "version_0"), metric_key(GEN, "scale")) == pytest.approx(expected)


def test_asking_for_wandb_logger_says_how_to_install_it(no_wandb_run):
    out = no_wandb_run[2]["WandbLogger"]
    assert out is not None, "WandbLogger was created without wandb"
    kind, message = out
    assert kind == "ModuleNotFoundError"
    assert "pip install" in message and "wandb" in message, message


def test_asking_for_scalewatch_wandb_charts_says_how_to_install_it(no_wandb_run):
    """scalewatch's own W&B view (the bounds charts) needs wandb: its error must say how to get it."""
    out = no_wandb_run[2]["bounds_charts"]
    assert out is not None, "bounds_charts worked without wandb"
    kind, message = out
    assert kind in ("ModuleNotFoundError", "ImportError"), out
    assert "pip install" in message and "wandb" in message, message


def test_no_logger_writes_history_and_plot_into_default_root_dir(tmp_path):
    root = tmp_path / "root"
    monitor = ScaleMonitor(every_n_steps=2)
    trainer = make_trainer(root, max_steps=8, logger=False, callbacks=[monitor])
    trainer.fit(support.DriftModel(lr=2.0))
    assert trainer.log_dir == str(root)
    records = read_jsonl(root / HISTORY_FILENAME)
    assert [r["step"] for r in records] == [1, 3, 5, 7]
    assert support.alerts_in(records) == [(3, "near_upper"), (7, "pinned")]
    assert_png(root / PLOT_FILENAME)
    # nothing anywhere else
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("scale*")) == \
           [PLOT_FILENAME, HISTORY_FILENAME]
