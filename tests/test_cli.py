"""The `scalewatch` command line, run as a subprocess against a real training run.

The CLI pays a few seconds of start-up (torch), so the one-shot commands start
together in one module fixture and each test checks its own result.
"""
from __future__ import annotations

import json
import os
import queue
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from scalewatch.dashboards.cli import main
from scalewatch.monitor import HISTORY_FILENAME, iter_history
from test_sources import DOWN, UP, train_run

CLI = [sys.executable, "-m", "scalewatch.dashboards.cli"]
SCRIPT = Path(sys.executable).parent / "scalewatch"
ENV = dict(os.environ, COLUMNS="160", PYTHONUNBUFFERED="1")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\r")


class Result:
    def __init__(self, rc: int, out: str, err: str) -> None:
        self.rc, self.out, self.err = rc, out, err

    def __repr__(self) -> str:
        return f"rc={self.rc}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def _png_size(path: Path) -> tuple:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    r = train_run(str(root / "run"))
    os.remove(os.path.join(r["tb"], "scale_history.png"))  # the callback's; the CLI must write its own
    # a run that kept only TensorBoard events, one that kept only a metrics.csv
    tb_only = root / "tb_only"
    tb_only.mkdir()
    for name in os.listdir(r["tb"]):
        if name.startswith("events.out.tfevents"):
            shutil.copy(os.path.join(r["tb"], name), tb_only / name)
    csv_only = root / "csv_only"
    csv_only.mkdir()
    shutil.copy(os.path.join(r["csv"], "metrics.csv"), csv_only / "metrics.csv")
    # a run killed mid-write: the last line stops half way
    torn = root / "torn"
    torn.mkdir()
    text = Path(r["history"]).read_text()
    (torn / HISTORY_FILENAME).write_text(text + '{"step": 999, "name": "head.attention_bias_gen')
    empty = root / "empty_history"
    empty.mkdir()
    (empty / HISTORY_FILENAME).write_text("")
    (root / "no_history").mkdir()
    r.update(tb_only=str(tb_only), csv_only=str(csv_only), torn=str(torn), empty=str(empty),
             no_history=str(root / "no_history"), missing=str(root / "missing"), out=str(root / "out"))
    os.mkdir(r["out"])
    return r


@pytest.fixture(scope="module")
def results(run) -> Dict[str, Result]:
    """Every one-shot command, started at once, waited for together."""
    out = run["out"]
    commands: Dict[str, List[str]] = {
        "plot": CLI + ["plot", run["root"]],
        "plot_tb": CLI + ["plot", run["tb_only"], "-o", os.path.join(out, "from_tb.png")],
        "plot_csv": CLI + ["plot", os.path.join(run["csv_only"], "metrics.csv"),
                           "-o", os.path.join(out, "from_csv.png")],
        "report": ([str(SCRIPT)] if SCRIPT.exists() else CLI) + ["report", run["root"]],  # the console script
        "report_json": CLI + ["report", run["root"], "--json"],
        "torn": CLI + ["report", run["torn"], "--json"],
        "missing": CLI + ["report", run["missing"]],
        "watch_once": CLI + ["watch", run["root"], "--once"],
        "layering": [sys.executable, "-c",
                     "import sys, scalewatch.dashboards.cli, scalewatch.dashboards.sources, "
                     "scalewatch.dashboards.report, scalewatch.dashboards.watch, scalewatch.dashboards.plot, "
                     "scalewatch.dashboards.compare, scalewatch.dashboards.history_columns; "
                     "bad = [m for m in sys.modules if m.startswith(('scalewatch.callbacks', 'pytorch_lightning'))]; "
                     "assert not bad, bad"],
    }
    procs = {k: subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
             for k, c in commands.items()}
    done = {}
    for k, p in procs.items():
        o, e = p.communicate(timeout=300)  # nine interpreters starting at once on a small machine
        done[k] = Result(p.returncode, o, e)
    return done


def in_process(capsys, *argv: str) -> Result:
    """``main(argv)`` in this process: the same code path, without another start-up."""
    try:
        rc = main(list(argv))
    except SystemExit as stop:  # argparse on bad usage
        rc = int(stop.code or 0)
    captured = capsys.readouterr()
    return Result(rc, captured.out, captured.err)


def _history(run) -> List[dict]:
    return list(iter_history(run["history"]))


def _no_traceback(res: Result) -> None:
    assert "Traceback" not in res.err and "Traceback" not in res.out, res


def test_plot_writes_a_readable_png_next_to_the_history(run, results):
    res = results["plot"]
    assert res.rc == 0, res
    png = Path(run["tb"]) / "scale_history.png"
    assert f"wrote {png}" in res.out
    assert run["history"] in res.err  # says which history it used
    w, h = _png_size(png)
    assert 600 <= w <= 4000 and 300 <= h <= 4000, (w, h)  # two panels, one per scale


@pytest.mark.parametrize("key,name", [("plot_tb", "from_tb.png"), ("plot_csv", "from_csv.png")])
def test_plot_from_tensorboard_events_or_metrics_csv(run, results, key, name):
    res = results[key]
    assert res.rc == 0, res
    assert "alerts recomputed" in res.err
    w, h = _png_size(Path(run["out"]) / name)
    assert 600 <= w <= 4000 and 300 <= h <= 4000, (w, h)


def test_report_text_has_the_history_numbers(run, results):
    res = results["report"]
    assert res.rc == 0, res
    hist = _history(run)
    for name in (UP, DOWN):
        values = [r["scale"] for r in hist if r["name"] == name]
        row = next(line for line in res.out.splitlines() if line.startswith(name + " "))
        cells = row.split()
        assert cells[1] == str(len(values))
        assert [float(c) for c in cells[2:5]] == pytest.approx([values[-1], min(values), max(values)], rel=1e-3)
    for r in hist:
        for kind in r["alerts"]:
            assert re.search(rf"step +{r['step']}  {kind} +{re.escape(r['name'])} ", res.out), (r, res.out)


def test_report_json_parses_and_matches_the_history(run, results):
    res = results["report_json"]
    assert res.rc == 0, res
    data = json.loads(res.out)
    hist = _history(run)
    assert data["source"]["path"] == run["history"] and data["readings"] == len(hist)
    scales = {s["name"]: s for s in data["scales"]}
    for name in (UP, DOWN):
        mine = [r for r in hist if r["name"] == name]
        values = [r["scale"] for r in mine]
        s = scales[name]
        assert s["last"] == {"step": mine[-1]["step"], "scale": values[-1], "raw": mine[-1]["raw"],
                             "grad": mine[-1]["grad"]}
        assert (s["scale_min"], s["scale_max"]) == (min(values), max(values))
        assert s["near_bound"]["upper"] == sum(v > 0.9 * 5.0 for v in values)
        assert s["near_bound"]["lower"] == sum(v < 0.5 + 0.1 * 4.5 for v in values)
        assert s["alerts"] == [{"step": r["step"], "kind": k, "scale": r["scale"]} for r in mine for k in r["alerts"]]
    assert scales[UP]["near_bound"]["upper"] > 0 and scales[DOWN]["near_bound"]["lower"] > 0


def test_report_from_metrics_csv_agrees_with_the_history(run, results, capsys):
    hist = json.loads(results["report_json"].out)
    res = in_process(capsys, "report", run["root"], "--from", "csv", "--json")
    assert res.rc == 0, res
    csv = json.loads(res.out)
    assert csv["source"]["kind"] == "csv" and csv["readings"] == hist["readings"]
    for a, b in zip(hist["scales"], csv["scales"]):
        for key in ("name", "readings", "near_bound", "last_step", "alerts"):
            assert a[key] == b[key], key
        assert a["scale_max"] == pytest.approx(b["scale_max"]) and a["scale_min"] == pytest.approx(b["scale_min"])


def test_a_torn_last_line_is_a_warning_and_the_rest_is_used(run, results, capsys):
    res = results["torn"]
    assert res.rc == 0, res
    assert json.loads(res.out)["readings"] == len(_history(run))
    warnings = [line for line in res.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "last line is incomplete" in warnings[0]
    _no_traceback(res)
    plot = in_process(capsys, "plot", run["torn"], "-o", run["out"])  # a directory: the default name inside
    assert plot.rc == 0 and "last line is incomplete" in plot.err, plot
    _png_size(Path(run["out"]) / "scale_history.png")


def test_a_missing_directory_is_one_line_and_exit_1(results):
    res = results["missing"]
    assert res.rc == 1 and res.err.strip() == f"scalewatch: error: {res.err.split('error: ')[1].strip()}", res
    assert len(res.err.strip().splitlines()) == 1 and "no such file or directory" in res.err, res
    _no_traceback(res)


@pytest.mark.parametrize("command,where,message", [
    ("plot", "no_history", "no scalewatch history found"),
    ("report", "empty", "no readings"),
    ("watch", "missing", "no such file or directory"),
    ("watch", "no_history", "use --wait"),
])
def test_errors_are_one_line_and_a_non_zero_exit(run, capsys, command, where, message):
    res = in_process(capsys, command, run[where])
    assert res.rc == 1, res
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scalewatch: error: ") and message in lines[0], res


def test_bad_option_is_a_usage_error(run, capsys):
    res = in_process(capsys, "plot", run["root"], "--max-panels", "-3")
    assert res.rc == 2 and "--max-panels" in res.err, res


def test_layering_dashboards_never_import_callbacks(results):
    assert results["layering"].rc == 0, results["layering"]


def test_watch_once_shows_the_current_state(run, results):
    res = results["watch_once"]
    assert res.rc == 0, res
    hist = _history(run)
    for name in (UP, DOWN):
        last = [r for r in hist if r["name"] == name][-1]
        assert f"step {last['step']}  {name}  scale={last['scale']:.4g}  raw={last['raw']:.4g}" in res.out, res
    assert "PINNED" in res.out and "ALERT step" in res.out


# ---- watch against a file that grows ------------------------------------------------------


class GrowingHistory(threading.Thread):
    """Appends real records to a history file in steps, one of them split by a pause mid-line."""

    def __init__(self, path: Path, records: List[dict], pause: float) -> None:
        super().__init__(daemon=True)
        self.path, self.records, self.pause = path, records, pause
        self.torn: Optional[dict] = None

    def run(self) -> None:
        chunks = [self.records[i:i + 6] for i in range(0, len(self.records), 6)]
        with open(self.path, "a") as f:
            for n, chunk in enumerate(chunks):
                for i, rec in enumerate(chunk):
                    line = json.dumps(rec) + "\n"
                    if n == 1 and i == len(chunk) - 1:  # a write caught half way: the rest comes later
                        self.torn = rec
                        f.write(line[:25])
                        f.flush()
                        time.sleep(self.pause * 3)
                        f.write(line[25:])
                    else:
                        f.write(line)
                f.flush()
                time.sleep(self.pause)


def _start_file(run, tmp_path: Path, first: int) -> tuple:
    hist = _history(run)
    path = tmp_path / HISTORY_FILENAME
    path.write_text("".join(json.dumps(r) + "\n" for r in hist[:first]))
    return path, hist[first:]


def _reader(stream) -> "queue.Queue[str]":
    q: "queue.Queue[str]" = queue.Queue()

    def pump() -> None:
        for line in stream:
            q.put(line)
        q.put("")
    threading.Thread(target=pump, daemon=True).start()
    return q


def _lines_until(lines: "queue.Queue[str]", seen: List[str], seconds: float, on_line) -> None:
    """Collect output lines into ``seen`` until ``on_line(line)`` is true, the stream ends or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if not line:
            return
        seen.append(line.rstrip("\n"))
        if on_line(line):
            return


def test_watch_follows_a_growing_history_in_plain_lines(run, tmp_path):
    path, rest = _start_file(run, tmp_path, first=2)  # step 1 of both scales; every alert is still to come
    expected_alerts = [(r["step"], k, r["name"]) for r in rest for k in r["alerts"]]
    assert expected_alerts
    last = rest[-1]
    proc = subprocess.Popen(CLI + ["watch", str(tmp_path), "--interval", "0.1", "--duration", "600"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    lines = _reader(proc.stdout)
    seen: List[str] = []
    writer = None

    def on_line(line: str) -> bool:
        nonlocal writer
        if writer is None and line.startswith("scalewatch watch: following"):
            writer = GrowingHistory(path, rest, pause=0.15)
            writer.start()
        return line.startswith(f"step {last['step']}  {last['name']}  ")

    try:
        _lines_until(lines, seen, 240, on_line)  # generous: it returns as soon as the line is there
        proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "\n".join(seen)
    assert proc.returncode == 0, (out, err)
    assert "Traceback" not in err and "unreadable" not in err and "incomplete" not in err, err
    for step, kind, name in expected_alerts:
        assert f"ALERT step {step}  {kind}  {name}" in out, (step, kind, out)
    for r in rest:  # every new reading shown once, the torn one whole
        hits = [s for s in seen if s.startswith(f"step {r['step']}  {r['name']}  scale={r['scale']:.4g}  ")]
        assert len(hits) == 1, (r, out)
    assert writer is not None and writer.torn is not None


def test_watch_draws_the_live_view_on_a_terminal(run, tmp_path):
    """On a real terminal (a pty) watch redraws a rich view: the new values and the alert appear."""
    pty = pytest.importorskip("pty")
    import fcntl
    import termios

    path, rest = _start_file(run, tmp_path, first=2)
    fired = [(r["step"], k, r["name"]) for r in rest for k in r["alerts"]]
    assert 0 < len(fired) <= 8  # all of them fit the alerts panel
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 150, 0, 0))
    env = dict(ENV, TERM="xterm-256color")
    env.pop("COLUMNS", None)
    proc = subprocess.Popen(CLI + ["watch", str(path), "--interval", "0.1", "--duration", "600"],
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    writer = GrowingHistory(path, rest, pause=0.1)
    raw = b""
    deadline = time.monotonic() + 240  # generous: the loop ends as soon as the last redraw shows everything
    want = f"{rest[-1]['scale']:.4g}".encode()

    def drain(wait: float) -> bool:
        nonlocal raw
        try:
            while select.select([master], [], [], wait)[0]:
                raw += os.read(master, 65536)
                wait = 0.05
        except OSError:  # the child closed the terminal
            return False
        return True

    def last_redraw() -> str:
        text = ANSI.sub("", raw.decode("utf-8", errors="replace"))
        return text[text.rfind("scalewatch watch"):]

    def check(final: str) -> None:
        """What the view must show once every record is in: the last values and every alert."""
        lines = final.splitlines()
        for name in (UP, DOWN):
            r = [x for x in rest if x["name"] == name][-1]
            i = next((i for i, line in enumerate(lines) if line.lstrip().startswith(name)), None)
            assert i is not None, f"{name} is not in the view"
            row = lines[i]
            assert str(r["step"]) in row and f"{r['scale']:.4g}" in row and f"{r['raw']:.4g}" in row, row
            # the state column wraps: near max / pinned
            assert "●" in row and len(lines) > i + 1 and "pinned" in lines[i + 1], lines[i:i + 2]
        assert "alerts (" in final
        for step, kind, name in fired:
            assert re.search(rf"step +{step} +{kind} +{re.escape(name)} +scale=", final), (step, kind, final)

    def shows_everything() -> bool:
        try:
            check(last_redraw())
            return True
        except AssertionError:
            return False

    try:
        while time.monotonic() < deadline and drain(0.3):
            if not writer.ident and b"scalewatch watch" in raw:
                writer.start()  # the view is up: now the file grows
            if writer.ident and not writer.is_alive() and shows_everything():
                break  # a redraw after the last record: no fixed wait for it
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    err = proc.stderr.read().decode() if proc.stderr else ""
    text = ANSI.sub("", raw.decode("utf-8", errors="replace"))
    assert proc.returncode == 0, (text[-3000:], err)
    assert "Traceback" not in err, err
    assert "\x1b[" in raw.decode("utf-8", errors="replace")  # drawn in place, not plain lines
    assert writer.ident and not writer.is_alive(), "the history never finished growing"
    check(last_redraw())
    assert writer.torn is not None and want in raw


def test_watch_on_a_folder_switches_to_a_run_that_starts_later(run, tmp_path):
    """`watch RUN_DIR --wait` started before a new run follows the new run, not the finished one."""
    records = _history(run)
    old = tmp_path / "version_0" / HISTORY_FILENAME
    old.parent.mkdir()
    old.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.utime(old, (time.time() - 60, time.time() - 60))
    proc = subprocess.Popen(CLI + ["watch", str(tmp_path), "--interval", "0.1", "--duration", "600"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    lines = _reader(proc.stdout)
    seen: List[str] = []
    new = tmp_path / "version_1" / HISTORY_FILENAME

    def on_line(line: str) -> bool:
        if line.startswith("scalewatch watch: following") and not new.exists():
            new.parent.mkdir()
            new.write_text(json.dumps(dict(records[0], step=123456)) + "\n")
        return line.startswith("step 123456  ")

    try:
        _lines_until(lines, seen, 240, on_line)  # generous: it returns as soon as the line is there
        proc.send_signal(signal.SIGTERM)  # `timeout`/`kill` end it as cleanly as Ctrl-C
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "\n".join(seen)
    assert f"a newer run appeared; following {new}" in out, out
    assert any(s.startswith("step 123456  ") for s in seen), out
    assert proc.returncode == 0 and "Traceback" not in err, err
