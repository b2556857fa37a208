"""The `scalewatch` command line after a crash: it reads a killed run's history despite a torn
last line, follows a history while it is written, and only ever reads (no pickle, no
`torch.load` without `weights_only=True`, no writes into the run)."""
from __future__ import annotations

import ast
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from scalewatch.dashboards import cli
from scalewatch.monitor import HISTORY_FILENAME, HistoryWriter

from . import support
from .support import GEN, assert_png

TORN = b'{"step": 999, "name": "head.attention_bias_generator", "scale": 4.97, "raw": 5.0'
SCALEWATCH = Path(sys.executable).with_name("scalewatch")
PACKAGE_DIRS = [support.REPO_ROOT / "dashboards", support.REPO_ROOT / "monitor"]


def _complete_records(run_dir: Path):
    text = (run_dir / HISTORY_FILENAME).read_bytes()
    text = text[:text.rfind(b"\n") + 1]
    return [json.loads(line) for line in text.decode().splitlines()]


@pytest.fixture
def torn_run(killed_copy) -> Path:
    """The killed run's history with a torn last line appended (as a kill mid-write leaves it)."""
    with open(killed_copy / HISTORY_FILENAME, "ab") as f:
        f.write(TORN)
    return killed_copy


def _digest(run_dir: Path):
    return {p.relative_to(run_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_report_command_reads_a_killed_run_despite_the_torn_line(torn_run, killed_run):
    """The installed `scalewatch` entry point, in its own process."""
    proc = subprocess.run([str(SCALEWATCH), "report", str(torn_run), "--json"], capture_output=True, text=True,
                          timeout=120, env=support.subprocess_env())
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    complete = _complete_records(torn_run)
    assert report["readings"] == len(complete)
    assert report["source"]["problems"] == {"torn_last_line": True, "bad_lines": 0}
    (scale,) = report["scales"]
    assert scale["name"] == GEN
    assert scale["last_step"] == complete[-1]["step"] == max(
        s for s in range(killed_run.kill_step + 1) if (s + 1) % support.KILL_EVERY_N == 0)
    assert [(a["step"], a["kind"]) for a in report["alerts"]] == [(3, "near_upper"), (7, "pinned")]
    warnings = [ln for ln in proc.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "last line is incomplete" in warnings[0], proc.stderr


def test_plot_and_watch_read_it_too_and_change_nothing(torn_run, tmp_path, capsys):
    before = _digest(torn_run)
    out_png = tmp_path / "out.png"
    assert cli.main(["plot", str(torn_run), "-o", str(out_png), "-q"]) == 0
    plot_out = capsys.readouterr()
    assert_png(out_png)
    assert "last line is incomplete" in plot_out.err

    assert cli.main(["watch", str(torn_run), "--once", "--plain"]) == 0
    watch_out = capsys.readouterr()
    last = _complete_records(torn_run)[-1]["step"]
    assert watch_out.out.splitlines()[0].startswith(f"step {last}  {GEN}  ")
    assert "ALERT step 3  near_upper" in watch_out.out and "ALERT step 7  pinned" in watch_out.out
    assert "step 999" not in watch_out.out
    assert "last line is incomplete" in watch_out.err

    assert cli.main(["report", str(torn_run)]) == 0
    capsys.readouterr()
    # reading repaired nothing and wrote nothing: the torn line is still there, byte for byte
    assert _digest(torn_run) == before
    assert (torn_run / HISTORY_FILENAME).read_bytes().endswith(TORN)


def test_plot_of_the_run_dir_writes_only_the_png(torn_run, capsys):
    before = _digest(torn_run)
    assert cli.main(["plot", str(torn_run), "-q"]) == 0
    capsys.readouterr()
    after = _digest(torn_run)
    assert set(after) - set(before) == {"scale_history.png"}
    assert {k: v for k, v in after.items() if k in before} == before
    assert_png(torn_run / "scale_history.png")


# ---- following a history while it is written ----------------------------------------------

def _record(step: int) -> dict:
    return {"step": step, "name": GEN, "scale": 2.5 + step / 100, "raw": 2.5 + step / 100, "grad": -0.1,
            "min": 0.5, "max": 5.0, "bound": "hard", "warn_fraction": 0.9, "alerts": []}


def test_watch_streams_appended_lines_and_waits_for_a_partial_one(tmp_path):
    path = tmp_path / HISTORY_FILENAME
    writer = HistoryWriter(str(path))
    writer.append([_record(1), _record(3)])
    proc = subprocess.Popen([str(SCALEWATCH), "watch", str(tmp_path), "--plain", "--interval", "0.1",
                             "--duration", "600"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=support.subprocess_env())
    lines: list = []

    def pump():
        for line in proc.stdout:
            lines.append((time.monotonic(), line.rstrip("\n")))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()

    def wait_for(pred, timeout=240.0):  # generous: a loaded machine is slow, never wrong
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(pred(text) for _, text in lines):
                return True
            time.sleep(0.05)
        return False

    try:
        assert wait_for(lambda t: t.startswith("scalewatch watch: following")), lines
        writer.append([_record(5)])
        assert wait_for(lambda t: t.startswith("step 5 ")), lines
        full = (json.dumps(_record(7)) + "\n").encode()
        with open(path, "ab") as f:                   # a line half written ...
            f.write(full[:30])
        time.sleep(0.6)
        assert not any(t.startswith("step 7 ") for _, t in lines), "a partial line was shown"
        writer.close()
        HistoryWriter(str(path)).append([_record(7), _record(9)])  # ... cut, rewritten whole (a resumed writer)
        assert wait_for(lambda t: t.startswith("step 9 ")), lines
    finally:
        proc.send_signal(signal.SIGINT)               # Ctrl-C: how a person ends `watch`
        proc.wait(timeout=60)
        reader.join(timeout=10)
    err = proc.stderr.read()
    assert proc.returncode == 0, err
    steps = [int(t.split()[1]) for _, t in lines if t.startswith("step ")]
    # the snapshot shows the last reading, then every new reading exactly once, in order
    assert steps == [3, 5, 7, 9], lines
    assert "incomplete" not in err


# ---- the CLI only reads ------------------------------------------------------------------

AUDIT = r"""
import json, sys
events = []
def hook(event, args):
    if event == "open" and args[1] is not None and isinstance(args[1], str) and any(c in args[1] for c in "wax+"):
        events.append(["open-write", str(args[0]), args[1]])
    elif event == "open" and isinstance(args[2], int) and args[2] & 0o3:   # os.open with O_WRONLY / O_RDWR
        events.append(["open-write", str(args[0]), oct(args[2])])
    elif event in ("os.remove", "os.rename", "os.truncate", "os.rmdir", "shutil.rmtree"):
        events.append([event, repr(args)[:200], ""])
    elif event.startswith("pickle."):
        events.append([event, repr(args)[:200], ""])
sys.addaudithook(hook)
from scalewatch.dashboards import cli
run, out_png = sys.argv[1], sys.argv[2]
codes = [cli.main(["report", run, "--json"]), cli.main(["watch", run, "--once", "--plain"]),
         cli.main(["plot", run, "-o", out_png, "-q"]),
         cli.main(["report", run, "--from", "tensorboard"]), cli.main(["report", run, "--from", "csv"])]
print("AUDIT " + json.dumps({"codes": codes, "events": events}))
"""


def test_cli_run_opens_nothing_for_writing_but_its_png_and_unpickles_nothing(killed_run, tmp_path):
    """Every command on a copy of the killed run's whole directory (history with a torn line,
    TensorBoard events, checkpoints), under an audit hook: nothing under the run is opened
    for writing, renamed or removed, and nothing is unpickled."""
    run = tmp_path / "run"
    shutil.copytree(killed_run.root, run)
    (run / "tb" / "version_0" / HISTORY_FILENAME).write_bytes(killed_run.history_bytes + TORN)
    out_png = tmp_path / "plot.png"
    before = _digest(run)
    proc = subprocess.run([sys.executable, "-c", AUDIT, str(run), str(out_png)], capture_output=True,
                          text=True, timeout=180, env=support.subprocess_env(), cwd=str(tmp_path))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("AUDIT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("AUDIT "):])
    # report --json, watch --once, plot, report --from tensorboard, report --from csv (the CSVLogger's
    # metrics.csv, saved with the last checkpoint before the kill): every one reads the run and exits 0
    assert result["codes"] == [0, 0, 0, 0, 0], (result["codes"], proc.stderr[-3000:])
    events = result["events"]
    assert ["open-write", str(out_png)] in [e[:2] for e in events], "the audit hook did not see the plot written"
    assert not [e for e in events if e[0].startswith("pickle.")], events
    # writes elsewhere (matplotlib's font cache, temp files) are not the run's business
    assert not [e for e in events if not e[0].startswith("pickle.") and str(run) in e[1]], events
    assert _digest(run) == before
    assert_png(out_png)


FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


@pytest.mark.parametrize("path", sorted(p for d in PACKAGE_DIRS for p in d.glob("*.py")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_source_reads_without_pickle(path):
    """dashboards/ (the CLI) and monitor/ (what it reads with): no pickle-based loading."""
    tree = ast.parse(path.read_text(), filename=str(path))
    problems = []
    torch_load_aliases = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                          and node.module == "torch" for a in node.names if a.name == "load"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            problems += [f"line {node.lineno}: import {a.name}" for a in node.names
                         if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
            problems.append(f"line {node.lineno}: from {node.module} import ...")
    for call, name in _calls(tree):
        kw = {k.arg: k.value for k in call.keywords}
        if name == "torch.load" or name.endswith(".torch.load") or name in torch_load_aliases:
            wo = kw.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                problems.append(f"line {call.lineno}: {ast.unparse(call)} without weights_only=True")
        if name.endswith(("np.load", "numpy.load")):
            ap = kw.get("allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                problems.append(f"line {call.lineno}: {ast.unparse(call)}")
        if name.endswith(("read_pickle", "pickle.load", "pickle.loads", "Unpickler")):
            problems.append(f"line {call.lineno}: {ast.unparse(call)}")
    assert not problems, f"{path}: " + "; ".join(problems)


def test_source_scan_catches_what_it_should(tmp_path):
    """The scan itself flags the patterns it looks for (so a green scan means something)."""
    bad = ("import pickle\nfrom joblib import load\nimport torch\nfrom torch import load as tl\n"
           "torch.load('a.ckpt')\ntorch.load('b', weights_only=False)\nnp.load('x.npy', allow_pickle=True)\n"
           "tl('c.pt')\n")
    good = "import torch\ntorch.load('a.ckpt', map_location='cpu', weights_only=True)\n"
    probe = tmp_path / "probe.py"
    probe.write_text(bad)
    with pytest.raises(AssertionError) as info:
        test_source_reads_without_pickle(probe)
    for part in ("import pickle", "from joblib", "torch.load('a.ckpt') without", "weights_only=False",
                 "allow_pickle=True", "tl('c.pt') without"):
        assert part in str(info.value), part
    probe.write_text(good)
    test_source_reads_without_pickle(probe)
