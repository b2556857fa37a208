"""Lightning's FSDPStrategy, ModelParallelStrategy and DeepSpeedStrategy with ScaleMonitor on GPUs: FSDP and
DeepSpeed refuse a CPU accelerator, so these run where CUDA exists (the engine's read path they share is
proven on the CPU by tests/test_sharded.py, and ModelParallelStrategy, which starts on a CPU, runs there too). The history holds the model's own names and full values at every check."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import readback

HERE = Path(__file__).parent

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="Lightning's FSDP/DeepSpeed strategies need CUDA")]


@pytest.mark.parametrize("strategy", ["fsdp", "model_parallel", "deepspeed"])
def test_lightning_sharded_strategies_record_the_models_own_names(tmp_path: Path, strategy: str) -> None:
    if strategy == "deepspeed":
        pytest.importorskip("deepspeed")
    out = subprocess.run([sys.executable, str(HERE / "lightning_sharded_script.py"), str(tmp_path), strategy],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    (history,) = tmp_path.rglob("scalewatch_history.jsonl")
    rows = readback.history(str(history.parent))
    names = {r["name"] for r in rows}
    assert names == {"net.head.attention_bias_generator", "net.per_head[0]", "net.per_head[1]", "net.per_head[2]",
                     "net.logit_scale"}
    assert sorted({r["step"] for r in rows}) == [1, 3, 5, 7]
    assert all(math.isfinite(r["raw"]) and r["grad"] is not None for r in rows)
