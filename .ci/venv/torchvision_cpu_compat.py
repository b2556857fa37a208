"""Lets the registry's torchvision import next to the CPU torch of this project's virtualenv.

`make` installs torch 2.13.0 (CPU) and, for open_clip and timm, torchvision 0.28.0, the
one made for that torch. The only torchvision wheel the package registry has is a CUDA
build: its C++ ops (nms, roi_align, ...) cannot load without CUDA torch, and
torchvision 0.28 then fails at import, on a fake-kernel registration for
``torchvision::nms``/``qnms`` that is not guarded by ``extension._has_ops()`` as the
others are. Nothing here uses those ops; open_clip and timm only need torchvision's
Python parts (transforms, FrozenBatchNorm2d).

This hook runs when ``torchvision`` is first imported (never before: a `.pth` line
only puts it on ``sys.meta_path``, so interpreters that never import torchvision,
such as the `scalewatch` command, pay nothing). If the C++ extension loads, it does
nothing; if not, it declares the two ops' schemas so torchvision's import completes,
exactly as it does when ``_has_ops()`` is false for the other ops.
"""
from __future__ import annotations

import glob
import importlib.abc
import importlib.machinery
import os
import sys


class _TorchvisionCpuCompat(importlib.abc.MetaPathFinder):
    done = False

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        if fullname != "torchvision" or self.done:
            return None
        self.done = True
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not spec.submodule_search_locations:
            return None
        import torch

        libs = [p for d in spec.submodule_search_locations for p in glob.glob(os.path.join(d, "_C*.so"))]
        try:
            for lib in libs:
                torch.ops.load_library(lib)
            return None  # a torchvision that matches its torch: nothing to do
        except (OSError, RuntimeError):
            pass
        _declared.append(torch.library.Library("torchvision", "DEF"))
        for op in ("nms", "qnms"):
            _declared[-1].define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        return None


_declared: list = []
if not any(isinstance(f, _TorchvisionCpuCompat) for f in sys.meta_path):
    sys.meta_path.insert(0, _TorchvisionCpuCompat())
