import os
import signal
import sys
from pathlib import Path

import pytest

# W&B never leaves this machine in tests.
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_CODE", "true")
os.environ.setdefault("WANDB_CONSOLE", "off")

sys.path.insert(0, str(Path(__file__).parent))  # tests/models.py and helpers

# A suite started in the background of a shell without job control inherits SIGINT ignored, and
# so would every `scalewatch watch` the tests start and end with SIGINT (Ctrl-C): they would run
# on. A handler here is reset to the default in each child, as in a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _no_inherited_wandb_service():
    # A W&B run leaves WANDB_SERVICE in os.environ; a subprocess that inherits it would
    # attach to this process's service and write no offline run of its own.
    yield
    os.environ.pop("WANDB_SERVICE", None)
