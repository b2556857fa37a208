"""Both Lightning packages from one install: ``lightning.pytorch`` and ``pytorch_lightning``.

Their classes are distinct (``pytorch_lightning.Callback is not
lightning.pytorch.Callback``), so a callback built on one is rejected or silently
degraded by the other's Trainer and LightningCLI. ScaleMonitor subclasses the
``Callback`` of every installed package, raises a MisconfigurationException that
both packages' ``except`` clauses catch, and recognises either package's loggers.
"""
from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Tuple

#: the unified package first: it is what Lightning's current docs use
PACKAGES = ("lightning.pytorch", "pytorch_lightning")

INSTALL_HINT = ("scalewatch's ScaleMonitor needs PyTorch Lightning: pip install 'scalewatch[lightning]' "
                "(for `import lightning`) or 'scalewatch[pytorch-lightning]' (for `import pytorch_lightning`). "
                "Without Lightning, use scalewatch.callbacks.ScaleWatcher in your own loop")


def _installed() -> Tuple[ModuleType, ...]:
    found = []
    for name in PACKAGES:
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            continue
    if not found:
        raise ImportError(INSTALL_HINT)
    return tuple(found)


LIGHTNING_PACKAGES = _installed()

#: ``Callback`` of every installed package: ScaleMonitor is an instance of each
CALLBACK_BASES: Tuple[type, ...] = tuple(pkg.Callback for pkg in LIGHTNING_PACKAGES)


def _exception_bases() -> Tuple[type, ...]:
    bases = []
    for pkg in LIGHTNING_PACKAGES:
        exc = importlib.import_module(f"{pkg.__name__}.utilities.exceptions").MisconfigurationException
        if exc not in bases:
            bases.append(exc)
    return tuple(bases)


class MisconfigurationException(ValueError, *_exception_bases()):  # type: ignore[misc]
    """A bad ScaleMonitor argument: caught as either Lightning package's
    ``MisconfigurationException`` and as ``ValueError``."""


def _loaded_classes(module: str, name: str) -> Tuple[type, ...]:
    # Only packages the program already imported can have made the logger at hand, so
    # this never imports a logger module (or wandb) that is not in use.
    found = []
    for pkg in PACKAGES:
        mod = sys.modules.get(f"{pkg}.{module}")
        cls = getattr(mod, name, None) if mod is not None else None
        if cls is not None:
            found.append(cls)
    return tuple(found)


def tensorboard_logger_classes() -> Tuple[type, ...]:
    """``TensorBoardLogger`` of each loaded Lightning package."""
    return _loaded_classes("loggers.tensorboard", "TensorBoardLogger")


def wandb_logger_classes() -> Tuple[type, ...]:
    """``WandbLogger`` of each loaded Lightning package."""
    return _loaded_classes("loggers.wandb", "WandbLogger")


def grad_scaler_active(trainer: object) -> bool:
    """True when the trainer's precision plugin scales gradients (their overflow steps are skipped)."""
    return getattr(getattr(trainer, "precision_plugin", None), "scaler", None) is not None
