"""Shared pieces of the reliability suite: small real models, trainers, and readers for
what lands on disk (history, TensorBoard events, CSV metrics, W&B offline run files).

Also runnable as a script (the training subprocesses of the crash/resume/network tests):

    python support.py kill-run ROOT --kill-step K      # trains, SIGKILLs itself at step K
    python support.py wandb-run ROOT                   # a short run with W&B offline
    python support.py plain-run ROOT                   # TensorBoard + CSV only, no W&B
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
TESTS_DIR = HERE.parent
REPO_ROOT = TESTS_DIR.parent
for _p in (str(TESTS_DIR), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.callbacks import Callback, ModelCheckpoint  # noqa: E402
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger  # noqa: E402

from models import DriftModel, LogitScaleModel, loader  # noqa: E402,F401
from scalewatch.callbacks import PLOT_FILENAME, ScaleMonitor  # noqa: E402
from scalewatch.monitor import HISTORY_FILENAME  # noqa: E402

GEN = "head.attention_bias_generator"  # the DriftModel's scale, named by its module path
SEED = 1234
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# The crash/resume scenario (shared by the kill subprocess and the tests).
KILL_EVERY_N = 2          # ScaleMonitor(every_n_steps=...)
KILL_CKPT_EVERY = 5       # ModelCheckpoint(every_n_train_steps=...)
KILL_LR = 2.0             # drives near_upper at step 3 and pinned at step 7, before the first checkpoint at 10
KILL_STEP_RANGE = (12, 22)
RESUME_MAX_STEPS = 30


# ---- models ------------------------------------------------------------------------------

class BlowUpModel(DriftModel):
    """A DriftModel whose loss is multiplied by ``inf`` or ``nan`` at one step.

    ``inf``: the scale's gradient is -inf at ``blowup_step``; SGD then takes the raw
    parameter to +inf (and the rest of the model to NaN). ``nan``: the gradient is NaN,
    and so are the raw parameter and the effective scale from then on.
    """

    def __init__(self, blowup: str = "inf", blowup_step: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.blowup = blowup
        self.blowup_step = blowup_step

    def training_step(self, batch, batch_idx):
        (x,) = batch
        weights = torch.sigmoid(self.proj(x)).unsqueeze(-1).expand(-1, -1, 8)
        bias = self.head.attention_bias_generator(weights)
        factor = 1.0
        if self.global_step == self.blowup_step:
            factor = float(self.blowup)  # float("inf") / float("nan")
        loss = -self.hparams.push * bias.float().mean() * factor + 0.01 * self.proj.weight.pow(2).sum()
        self.log("loss", loss)
        return loss


class RaisingModel(DriftModel):
    """A DriftModel whose training_step raises at ``raise_step``."""

    def __init__(self, raise_step: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.raise_step = raise_step

    def training_step(self, batch, batch_idx):
        if self.global_step == self.raise_step:
            raise RuntimeError(f"boom at step {self.global_step}")
        return super().training_step(batch, batch_idx)


class MemoryLogger(Logger):
    """A real (non-file) Lightning logger: keeps metrics in memory, reports ``save_dir``.

    With it first in ``logger=[...]``, ``trainer.log_dir`` is its ``save_dir``, so the
    run's log directory can be a path nothing can write while the metrics still flow.
    """

    def __init__(self, save_dir: str) -> None:
        super().__init__()
        self._save_dir = save_dir
        self.metrics: List[Tuple[int, Dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    @property
    def save_dir(self) -> str:
        return self._save_dir

    def log_metrics(self, metrics: Dict[str, float], step: Optional[int] = None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


class KillAt(Callback):
    """SIGKILLs this process in ``on_before_optimizer_step`` of step ``step``.

    Placed after ScaleMonitor in ``callbacks``, so the reading of that step (if it is
    a check step) has been written and flushed: no Python cleanup runs after it.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == self.step:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


# ---- trainers ----------------------------------------------------------------------------

def make_trainer(root: os.PathLike, *, max_steps: int, logger: Any = None, callbacks: Sequence[Callback] = (),
                 checkpointing: bool = False, **kwargs: Any) -> pl.Trainer:
    """A quiet CPU trainer writing under ``root`` (``logger=None``: CSV under root/csv)."""
    if logger is None:
        logger = CSVLogger(str(root), name="csv")
    return pl.Trainer(max_steps=max_steps, default_root_dir=str(root), logger=logger, callbacks=list(callbacks),
                      enable_checkpointing=checkpointing, enable_progress_bar=False, enable_model_summary=False,
                      log_every_n_steps=1, accelerator="cpu", devices=1, **kwargs)


def kill_run_trainer(root: os.PathLike, max_steps: int, extra: Sequence[Callback] = (),
                     monitor: Optional[ScaleMonitor] = None, tb_version: Any = 0,
                     ckpt: bool = True) -> Tuple[pl.Trainer, ScaleMonitor]:
    """The trainer of the crash/resume scenario: TB (fixed version) + CSV, checkpoints every k steps."""
    root = str(root)
    monitor = monitor or ScaleMonitor(every_n_steps=KILL_EVERY_N)
    callbacks: List[Callback] = [monitor, *extra]
    if ckpt:
        callbacks.append(ModelCheckpoint(dirpath=os.path.join(root, "ckpt"), filename="{step}",
                                         every_n_train_steps=KILL_CKPT_EVERY, save_top_k=-1, save_last=True))
    trainer = make_trainer(root, max_steps=max_steps, callbacks=callbacks, checkpointing=ckpt,
                           logger=[TensorBoardLogger(root, name="tb", version=tb_version),
                                   CSVLogger(root, name="csv", version=tb_version)])
    return trainer, monitor


def kill_run_model() -> DriftModel:
    pl.seed_everything(SEED, verbose=False)
    return DriftModel(lr=KILL_LR)


# ---- reading back what landed on disk --------------------------------------------------------

def read_jsonl(path: os.PathLike) -> List[Dict[str, Any]]:
    """Every line of a history file, strictly: each must end in a newline and parse."""
    records = []
    with open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            assert line.endswith("\n"), f"line {lineno} of {path} is torn: {line!r}"
            records.append(json.loads(line))
    return records


def history_steps(records: Sequence[Dict[str, Any]], name: str = GEN) -> List[int]:
    return [r["step"] for r in records if r["name"] == name]


def alerts_in(records: Sequence[Dict[str, Any]]) -> List[Tuple[int, str]]:
    return [(r["step"], kind) for r in records for kind in r.get("alerts", [])]


def read_csv_metrics(log_dir: os.PathLike) -> List[Dict[str, str]]:
    with open(os.path.join(log_dir, "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


def csv_series(rows: Sequence[Dict[str, str]], key: str) -> Dict[int, float]:
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key) not in (None, "")}


def read_tb(log_dir: os.PathLike) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def tb_series(acc: Any, tag: str) -> Dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


def wandb_run_file(root: os.PathLike) -> str:
    files = glob.glob(os.path.join(str(root), "wandb", "offline-run-*", "run-*.wandb"))
    assert len(files) == 1, files
    return files[0]


def wandb_records(path: str) -> Iterator[Any]:
    """The protobuf records of a W&B offline run file (its leveldb-log framing, read directly)."""
    from wandb.proto import wandb_internal_pb2 as pb

    block, header = 32768, 7
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, buf = 7, b""
    while pos + header <= len(data):
        left = block - pos % block
        if left < header:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        pos += header
        if kind == 0 and length == 0:  # zero padding to the block's end
            pos += left - header
            continue
        chunk = data[pos:pos + length]
        pos += length
        if kind == 2:        # FIRST
            buf = chunk
            continue
        if kind == 3:        # MIDDLE
            buf += chunk
            continue
        buf = chunk if kind == 1 else buf + chunk  # FULL / LAST
        record = pb.Record()
        record.ParseFromString(buf)
        yield record


#: how long a reader waits for W&B's service to finish writing a run file (generous: a loaded machine)
WANDB_FILE_TIMEOUT = 180.0


def finished_wandb_records(root: os.PathLike, timeout: float = WANDB_FILE_TIMEOUT) -> List[Any]:
    """Every record of the one offline run under ``root``, once W&B has written all of them.

    W&B's service (wandb-core, its own process) writes the run file; ``run.finish()``
    and ``wandb.finish()`` can return before it has (measured here: right after
    ``finish()`` the file may still hold only its 7-byte header, and a few ms later all
    of it). So a reader that reads at once sees no history and no alerts at random,
    more often on a loaded machine. This waits for the run's last record, ``exit``.
    """
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout
    while True:
        try:
            records = list(wandb_records(wandb_run_file(root)))
            if any(r.WhichOneof("record_type") == "exit" for r in records):
                return records
            seen = f"{len(records)} record(s), no exit record yet"
        except (AssertionError, DecodeError, struct.error) as err:  # not there yet, or cut mid-record
            seen = f"{type(err).__name__}: {err}"
        if time.monotonic() > deadline:
            raise AssertionError(f"W&B never finished the offline run under {root} within {timeout:g} s: {seen}")
        time.sleep(0.05)


def read_wandb(root: os.PathLike) -> Tuple[List[Dict[str, Any]], List[Any]]:
    """(history rows as {key: value}, alert records) of the one offline run under ``root``."""
    rows, alerts = [], []
    for record in finished_wandb_records(root):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            rows.append({(item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                         for item in record.history.item})
        elif kind == "alert":
            alerts.append(record.alert)
    return rows, alerts


def wandb_series(rows: Sequence[Dict[str, Any]], key: str) -> Dict[int, float]:
    return {int(r["trainer/global_step"]): float(r[key]) for r in rows if key in r}


def assert_png(path: os.PathLike) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    import matplotlib.image as mpimg

    img = mpimg.imread(str(path))
    assert img.shape[0] > 100 and img.shape[1] > 100


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


# ---- subprocesses ---------------------------------------------------------------------------

def subprocess_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_SILENT="true", PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    env.update(extra)
    return env


def run_support(args: Sequence[str], *, env: Optional[Dict[str, str]] = None, timeout: float = 240,
                prefix: Sequence[str] = (), python: Sequence[str] = (sys.executable,)) -> subprocess.CompletedProcess:
    """Run this file as a script in a fresh interpreter."""
    cmd = [*prefix, *python, str(Path(__file__).resolve()), *args]
    return subprocess.run(cmd, env=env or subprocess_env(), capture_output=True, text=True, timeout=timeout,
                          cwd=str(REPO_ROOT))


# ---- script entry points ----------------------------------------------------------------------

def _kill_run(root: str, kill_step: int) -> None:
    trainer, _ = kill_run_trainer(root, max_steps=RESUME_MAX_STEPS, extra=[KillAt(kill_step)])
    trainer.fit(kill_run_model())
    raise SystemExit("not killed")  # the test fails on this exit code


def _short_run(root: str, with_wandb: bool) -> None:
    loggers: List[Any] = [TensorBoardLogger(root, name="tb", version=0), CSVLogger(root, name="csv", version=0)]
    if with_wandb:
        from pytorch_lightning.loggers import WandbLogger

        loggers.append(WandbLogger(save_dir=root, offline=True, project="scalewatch-reliability"))
    alerts = []
    trainer = make_trainer(root, max_steps=8, logger=loggers,
                           callbacks=[ScaleMonitor(every_n_steps=2, alert_callback=alerts.append)])
    pl.seed_everything(SEED, verbose=False)
    trainer.fit(DriftModel(lr=2.0))
    if with_wandb:
        import wandb

        wandb.finish()
    print("RESULT " + json.dumps({"global_step": trainer.global_step, "log_dir": trainer.log_dir,
                                  "alerts": [a.kind for a in alerts],
                                  "wandb_imported": "wandb" in sys.modules}))


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["kill-run", "wandb-run", "plain-run"])
    p.add_argument("root")
    p.add_argument("--kill-step", type=int, default=-1)
    a = p.parse_args(argv)
    if a.mode == "kill-run":
        _kill_run(a.root, a.kill_step)
    else:
        _short_run(a.root, with_wandb=a.mode == "wandb-run")


if __name__ == "__main__":
    main()
