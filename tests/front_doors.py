"""What the trainer front doors' tests share: a door imported without its framework, a torchrun launch."""
from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
from typing import Any


def import_without(monkeypatch: Any, framework: str, module: str) -> None:
    """Import ``module`` as if ``framework`` were not installed (uninstalling it is not an option in a shared venv)."""
    for name in [m for m in sys.modules if m == framework or m.startswith(framework + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, module, raising=False)
    importlib.import_module(module)


def torchrun(script: str, *args: str, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``script`` in ``nproc`` processes under ``torch.distributed.run`` on 127.0.0.1, output captured."""
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                           "--master_addr", "127.0.0.1", "--master_port", str(port), script, *args],
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
