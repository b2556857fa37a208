"""Beyond one machine: wrapped and sharded models record what the unwrapped model records.

Real engines, 2 gloo processes on the CPU (tests/sharded_script.py, tests/accelerate_script.py):
DDP (with a checkpoint-wrapped block), DDP around ``torch.compile``, FSDP2 ``fully_shard``, FSDP1
(``use_orig_params`` True and False), DeepSpeed ZeRO-3, HF Accelerate, FSDP2 continuing a
single-process run's record and one process continuing an FSDP2 run's, and HF's ``Trainer`` under
FSDP2, FSDP1 and ZeRO-3 (tests/hf_sharded_script.py, against a one-process Trainer). For each: rank 0's history equals the unwrapped single-process run
of the same model and data line for line (names, steps, alerts; values within float tolerance:
full values and gradients, not shards), one history file, the same stop step on every rank,
the model's own names, exactly one collective per check and none off check steps (counted by
wrapping torch.distributed's collectives), no ATen operation and no host read in ``step()`` off
check steps. Faults: a rank that stops calling ``step()`` is named after a bounded wait; ranks
that watch different scales are told which. Always subprocesses (DDP inside pytest would
start pytest again as rank 1), each bounded by a timeout.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
from torch import nn

import hf_sharded_script as H
import readback
import sharded_script as S
from front_doors import torchrun
from scalewatch.callbacks import ScaleWatcher
from scalewatch.monitor import AttentionBiasGenerator, HISTORY_FILENAME, LearnableScale
from scalewatch.monitor.sharded import COLLECTIVE_TIMEOUT_ENV, ScaleGatherError, make_shardable

HERE = Path(__file__).parent
ENGINES = ["ddp", "compile", "fsdp2", "fsdp1", "fsdp1-flat", "zero3"]
NAMES = ["head.attention_bias_generator", "per_head", "logit_scale"]
VALUES = ("scale", "raw", "grad", "clamp_fraction")
FAULT_TIMEOUT = 10
#: HF's Trainer under FSDP2, FSDP1 and DeepSpeed ZeRO-3 (tests/hf_sharded_script.py), in the same launch
HF_CASES = ["hf-fsdp", "hf-fsdp1", "hf-zero3"]
FULL_HF = 8 * 8 + 8 + 1  # the HF model's elements: proj's weight and bias, the scale


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """The unwrapped single-process run, then every engine in one 2-process launch (and Accelerate in another)."""
    out = tmp_path_factory.mktemp("sharded")
    S.train("single", str(out / "single" / "run"))
    # the first checks of the same run, saved: FSDP2 continues this record
    S.train("single", str(out / "single-part"), stop_after=6, checkpoint=str(out / "single-ckpt.pt"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(COLLECTIVE_TIMEOUT_ENV, str(FAULT_TIMEOUT))  # the faults' wait (the others never wait long)
        launched = torchrun(str(HERE / "sharded_script.py"), str(out), *ENGINES, "fsdp2-resume", "fsdp2-part",
                            *HF_CASES, "hf-fsdp-cpu", "fault-diverge", "fault-missing", timeout=300)
    assert launched.returncode == 0, launched.stderr[-4000:]
    # and back: one process continues the FSDP2 run's record from its (gathered, full) checkpoint
    back = torch.load(out / "fsdp2-ckpt.pt", weights_only=False)
    S.train("single", str(out / "back" / "run"), resume=back, start=back["watcher"]["last_step"] + 1)
    single = H.run("single", str(out / "hf-single"), 0)  # HF's Trainer in one process: the HF cases' model, data
    (out / "hf-single" / "rank0.json").write_text(json.dumps(single))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    # `accelerate launch --cpu --num_processes 2` starts ONE process; --multi_gpu is the multi-process
    # launcher, and Accelerator(cpu=True) in the script makes it a CPU (gloo) run
    accelerate = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                                 "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                                 "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1", "--main_process_port",
                                 str(_free_port()), str(HERE / "accelerate_script.py"), str(out)],
                                capture_output=True, text=True, timeout=180, env=env)
    assert accelerate.returncode == 0, accelerate.stderr[-4000:]
    return out


def _ranks(out: Path, engine: str) -> Dict[int, Dict[str, Any]]:
    return {r["rank"]: r for r in (json.loads(p.read_text()) for p in sorted((out / engine).glob("rank*.json")))}


def _same_lines(rows: List[Dict[str, Any]], reference: List[Dict[str, Any]]) -> None:
    assert [(r["step"], r["name"]) for r in rows] == [(r["step"], r["name"]) for r in reference]
    for row, ref in zip(rows, reference):
        assert set(row) == set(ref), (row, ref)
        for key in ref:
            if key in VALUES and ref[key] is not None:
                assert row[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-5), (key, row, ref)
            else:
                assert row[key] == ref[key], (key, row, ref)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES + ["accelerate", "fsdp2-resume"])
def test_a_wrapped_or_sharded_run_records_what_the_unwrapped_run_records(runs: Path, engine: str) -> None:
    reference = readback.history(str(runs / "single" / "run"))
    stop = max(r["step"] for r in reference)
    checks = [r for r in sorted({r["step"] for r in reference})]
    ranks = _ranks(runs, engine)
    assert sorted(ranks) == [0, 1]
    for rank, r in ranks.items():
        # the model's own names, whatever wraps it; the same alert and stop step on every rank
        assert r["names"] == NAMES
        assert r["stopped_at"] == stop and r["checks"] == len(checks)
        assert [tuple(a) for a in r["alerts"]] == [("near_upper", "head.attention_bias_generator", stop)]
        assert r["is_global_zero"] is (rank == 0) and r["history"] is (rank == 0)
        # one collective per check (from the step() that reads), none at any other step
        steps = range(r["start"], r["stopped_at"] + 1)
        assert r["per_step"] == [1 if s in checks else 0 for s in steps], r["per_step"]
        assert r["handshake"] == 1  # once, when the watcher is built: the ranks agree on what they watch
        assert r["off_check"] == {"aten": 0, "host": 0}
    assert ranks[0]["last"] == ranks[1]["last"]  # every rank holds the full values
    # one history, written by rank 0, line for line the unwrapped run's
    histories = sorted((runs / engine).rglob("scalewatch_history*.jsonl"))
    assert histories == [runs / engine / "run" / HISTORY_FILENAME]
    _same_lines(readback.history(str(runs / engine / "run")), reference)


@pytest.mark.slow
def test_a_sharded_runs_record_continues_in_one_process(runs: Path) -> None:
    # FSDP2 took the first checks (steps 1, 3, 5) and saved its full state; one process went on from step 6
    part = readback.history(str(runs / "fsdp2-part" / "run"))
    assert sorted({r["step"] for r in part}) == [1, 3, 5]
    reference = readback.history(str(runs / "single" / "run"))
    _same_lines(part, [r for r in reference if r["step"] <= 5])
    # the one record, no step repeated, line for line the unwrapped run's
    _same_lines(readback.history(str(runs / "back" / "run")), reference)


@pytest.mark.slow
@pytest.mark.parametrize("case", HF_CASES)
def test_hf_trainer_sharded_records_what_one_process_records(runs: Path, case: str) -> None:
    reference = readback.history(str(runs / "hf-single" / "run"))
    single = _ranks(runs, "hf-single")[0]
    checks = sorted({r["step"] for r in reference})
    assert single["stopped_at"] == max(checks) == 10 and single["alerts"] == [["near_upper", H.GEN, 10]]
    ranks = _ranks(runs, case)
    assert sorted(ranks) == [0, 1]
    for rank, r in ranks.items():
        # really sharded: FSDP2's DTensors, FSDP1's flat parameter, ZeRO-3's partitioned (empty) parameters
        assert r["wrapped"] == {"hf-fsdp": "FSDPDriftModel", "hf-fsdp1": "FullyShardedDataParallel",
                                "hf-zero3": "DeepSpeedEngine"}[case], r["wrapped"]
        assert 0 < r["local"] < FULL_HF  # this rank's shards
        # the model's own names; the same alert and stop step on every rank; rank 0 writes
        assert r["names"] == [H.GEN] and r["checks"] == len(checks)
        assert r["stopped_at"] == single["stopped_at"] and r["alerts"] == single["alerts"]
        assert r["is_world_process_zero"] is (rank == 0) and r["history"] is (rank == 0)
        # one collective at each check, none at any other optimizer step
        assert r["per_step"] == [1 if s in checks else 0 for s in range(1, r["stopped_at"] + 1)], r["per_step"]
    assert ranks[0]["local"] + ranks[1]["local"] >= FULL_HF  # together the whole model (and padding)
    assert ranks[0]["last"] == ranks[1]["last"]
    assert sorted((runs / case).rglob("scalewatch_history*.jsonl")) == [runs / case / "run" / HISTORY_FILENAME]
    # values before the step's update (ZeRO-3 too: DeepSpeed steps inside accelerator.backward)
    _same_lines(readback.history(str(runs / case / "run")), reference)


@pytest.mark.slow
def test_hf_trainer_fsdp_as_configured_on_a_cpu_trains_ddp(runs: Path) -> None:
    # what the README says: accelerate (1.16) turns FSDP on for GPU-like process types only
    ranks = _ranks(runs, "hf-fsdp-cpu")
    assert {r["wrapped"] for r in ranks.values()} == {"DistributedDataParallel"}
    assert {r["local"] for r in ranks.values()} == {FULL_HF}  # every rank holds the whole model
    reference = readback.history(str(runs / "hf-single" / "run"))
    _same_lines(readback.history(str(runs / "hf-fsdp-cpu" / "run")), reference)


@pytest.mark.slow
def test_compare_lines_up_wrapped_and_unwrapped_runs(runs: Path, capsys) -> None:
    from scalewatch.dashboards.cli import main

    main(["compare", str(runs / "single" / "run"), str(runs / "ddp" / "run"), str(runs / "compile" / "run"),
          str(runs / "fsdp2" / "run"), str(runs / "zero3" / "run")])
    text = capsys.readouterr().out
    for name in NAMES:
        assert name in text
    assert "module." not in text and "_orig_mod" not in text and "_fsdp_wrapped_module" not in text


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["missing", "diverge"])
def test_a_rank_missing_or_watching_something_else_is_named_not_a_hang(runs: Path, kind: str) -> None:
    ranks = _ranks(runs, f"fault-{kind}")
    error = ranks[0]["error"]
    if kind == "missing":  # rank 1 stopped calling step() after step 2 (and stays alive)
        assert error.startswith("ScaleGatherError: ") and "rank(s) [1] did not come" in error
        assert f"waited {FAULT_TIMEOUT} s at the check of step 3" in error
        assert "head.attention_bias_generator" in error
        assert ranks[1]["error"] is None
    else:  # rank 1 watches proj.bias too: both ranks are told, when the watcher is built
        for r in ranks.values():
            assert r["error"].startswith("ScaleGatherError: ")
            assert "rank 1 watches ['proj.bias'] (rank 0 does not)" in r["error"]


# ---- in one process -------------------------------------------------------------------------

def test_names_are_the_models_own_through_compile_checkpoint_and_data_parallel() -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    net = S.build()
    net.head = checkpoint_wrapper(net.head)
    wrapped = nn.DataParallel(torch.compile(net, backend="eager"))
    assert any(n.startswith("module._orig_mod.head._checkpoint_wrapped_module.") for n, _ in wrapped.named_parameters())
    watcher = ScaleWatcher(wrapped, params=S.PARAMS, plot=False)
    assert [s.name for s in watcher.scales] == NAMES
    with pytest.raises(ValueError) as err:
        ScaleWatcher(wrapped, params={"module.logit_scale": (0.0, 1.0)}, plot=False)
    assert "single-value ones are: ['head.attention_bias_generator.bias_scale', 'logit_scale']" in str(err.value)


def test_shardable_scales_are_one_element_tensors_used_and_recorded_as_scalars(tmp_path: Path) -> None:
    plain = AttentionBiasGenerator(bias_scale=2.5)
    shardable = AttentionBiasGenerator(bias_scale=2.5, shardable=True)
    assert plain.bias_scale.shape == () and shardable.bias_scale.shape == (1,)
    assert shardable.scale.shape == () and LearnableScale(2.0, shardable=True).scale.shape == ()
    w = torch.rand(2, 4, 4) * 2 - 1
    assert torch.equal(plain(w), shardable(w))
    # old 0-dim checkpoints load into the shardable scale, and back
    shardable.load_state_dict({"bias_scale": torch.tensor(3.0)})
    assert shardable.bias_scale.tolist() == [3.0]
    plain.load_state_dict(shardable.state_dict())
    assert plain.bias_scale.shape == () and plain.bias_scale.item() == 3.0
    # make_shardable on a built model: library scales and named bare parameters, old checkpoints still load
    net = S.build()
    old = net.state_dict()
    assert make_shardable(net, params=["logit_scale"]) == ["head.attention_bias_generator", "logit_scale"]
    assert net.head.attention_bias_generator.bias_scale.shape == (1,) and net.logit_scale.shape == (1,)
    net.load_state_dict(old)
    with pytest.raises(ValueError, match="0-dim ones are"):
        make_shardable(net, params=["nope"])
    # the record is the same: a 1-element tensor keeps the plain name
    for where, model in (("plain", S.build()), ("shardable", net)):
        with ScaleWatcher(model, log_dir=str(tmp_path / where), every_n_steps=1, params=S.PARAMS, plot=False) as w:
            model(S.data()[0, 0]).backward()
            w.step(0)
    a, b = readback.history(str(tmp_path / "plain")), readback.history(str(tmp_path / "shardable"))
    _same_lines(b, a)


def test_a_sharded_scale_without_a_process_group_is_a_clear_error() -> None:
    net = S.build()
    p = net.logit_scale
    p.ds_id, p.ds_shape, p.ds_numel = 0, (), 1  # as a ZeRO-3 parameter looks, after its group is gone
    watcher = ScaleWatcher(net, params=S.PARAMS, every_n_steps=1, plot=False)
    with pytest.raises(ScaleGatherError, match=r"scale\(s\) \['logit_scale'\] are sharded.*not initialised"):
        watcher.step(0)


def test_lightning_model_parallel_strategy_records_full_values_on_a_cpu(tmp_path: Path) -> None:
    """Lightning's ModelParallelStrategy starts on a CPU (2 gloo processes; FSDP and DeepSpeed strategies do
    not): the module shards itself with FSDP2 in ``configure_model`` and ScaleMonitor records the model's own
    names and every element of the sharded per-head scale, with gradients, in one history."""
    out = subprocess.run([sys.executable, str(HERE / "lightning_sharded_script.py"), str(tmp_path), "model_parallel",
                          "cpu"], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert out.returncode == 0, out.stderr[-4000:]
    (history,) = tmp_path.rglob(HISTORY_FILENAME)
    rows = readback.history(str(history.parent))
    assert {r["name"] for r in rows} == {"net.head.attention_bias_generator", "net.per_head[0]", "net.per_head[1]",
                                         "net.per_head[2]", "net.logit_scale"}
    assert sorted({r["step"] for r in rows}) == [1, 3, 5, 7] and len(rows) == 4 * 5
    assert all(r["grad"] is not None and r["grad"] == r["grad"] and r["raw"] == r["raw"] for r in rows)
    assert len({r["raw"] for r in rows if r["name"].startswith("net.per_head") and r["step"] == 1}) == 3
