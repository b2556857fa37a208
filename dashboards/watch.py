"""The live terminal view: follow a history file while training appends to it.

It replaces ``tail -f log | grep "Bias scale"``. On a terminal it draws, with
``rich``, one row per scale (current value, raw parameter, gradient, a bar of
where the value stands between min and max, a sparkline of recent values, what
holds now) and the alerts as they arrive, redrawn in place. Anywhere else (a
pipe, a log file, a dumb terminal) it prints plain ASCII lines instead: a
snapshot, then one line per new reading and one per alert.

The file is tailed by byte offset, so each refresh reads only what was
appended; a line without its newline yet is held back until the rest arrives.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, TextIO, Tuple

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from scalewatch.dashboards.series import DEFAULT_WARN_FRACTION, as_float, closeness_to_bound
from scalewatch.monitor.history import parse_record
from scalewatch.monitor.reading import Reading
from scalewatch.monitor.saturation import (NEAR_LOWER, NEAR_UPPER, NON_FINITE, PINNED, is_pinned, lower_warning,
                                           upper_warning)

SPARK_WIDTH = 30
BAR_WIDTH = 24
ALERTS_SHOWN = 8
READ_CHUNK = 1 << 20

Alert = Tuple[int, str, str, float]  # (step, name, kind, scale)


# ---- following the file ----------------------------------------------------------------


class HistoryFollower:
    """Reads the complete lines appended to a history file since the last read.

    Call :meth:`check` (``True``: the file was replaced or cut back, e.g. on a
    resume, and is read again from the start), then iterate :meth:`read`.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.bad_lines = 0
        self._switched = False
        self._pos = 0
        self._partial = b""
        self._ident: Optional[Tuple[int, int]] = None
        #: when the file was last written (``None`` before it exists)
        self.mtime: Optional[float] = None

    @property
    def waiting_for_rest(self) -> bool:
        """A line was started but not finished (a write in progress, or a run killed mid-write)."""
        return bool(self._partial.strip())

    def retarget(self, path: str) -> None:
        """Follow another file from its start (a newer run appeared); :meth:`check` says so."""
        self.path, self._pos, self._partial, self._ident, self._switched = path, 0, b"", None, True

    def check(self) -> bool:
        """Look at the file; ``True`` if what was read before no longer stands."""
        if self._switched:
            self._switched = False
            return True
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        ident = (st.st_dev, st.st_ino)
        self.mtime = st.st_mtime
        start_over = self._ident is not None and ident != self._ident
        if not start_over and st.st_size < self._pos:
            complete = self._pos - len(self._partial)
            if st.st_size == complete:  # the writer cut off a torn last line: nothing read is lost
                self._pos, self._partial = complete, b""
            else:
                start_over = True
        self._ident = ident
        if start_over:
            self._pos, self._partial = 0, b""
        return start_over

    def read(self) -> Iterator[Dict[str, Any]]:
        """The records of the lines completed since the last read, in chunks (memory stays flat)."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        with f:
            f.seek(self._pos)
            while True:
                data = f.read(READ_CHUNK)
                if not data:
                    return
                self._pos += len(data)
                lines = (self._partial + data).split(b"\n")
                self._partial = lines.pop()
                for line in lines:
                    record = self._parse(line)
                    if record is not None:
                        yield record

    def _parse(self, line: bytes) -> Optional[Dict[str, Any]]:
        if not line.strip():
            return None
        record = parse_record(line)
        if record is None:
            self.bad_lines += 1
        return record


# ---- what is known so far --------------------------------------------------------------


@dataclass
class LiveScale:
    """One scale: its latest record and its recent values."""

    name: str
    last: Dict[str, Any]
    recent: Deque[float] = field(default_factory=lambda: deque(maxlen=SPARK_WIDTH))
    readings: int = 0


class LiveState:
    """Per scale the latest reading and recent values, plus the alerts seen, in bounded memory."""

    def __init__(self, alerts_kept: int = 200) -> None:
        self.alerts_kept = alerts_kept
        self.reset()

    def reset(self) -> None:
        """Forget everything (the file was replaced or cut back)."""
        self.scales: Dict[str, LiveScale] = {}
        self.alerts: Deque[Alert] = deque(maxlen=self.alerts_kept)
        self.alert_count = 0
        self.readings = 0
        self.last_step: Optional[int] = None

    def add(self, record: Dict[str, Any]) -> List[Alert]:
        """Take one reading in; return the alerts it carries."""
        name = str(record["name"])
        scale = self.scales.get(name)
        if scale is None:
            scale = self.scales[name] = LiveScale(name, record)
        scale.last = record
        scale.recent.append(as_float(record.get("scale")))
        scale.readings += 1
        self.readings += 1
        step = int(record["step"])
        self.last_step = step if self.last_step is None else max(self.last_step, step)
        fired = [(step, name, str(kind), as_float(record.get("scale"))) for kind in record.get("alerts") or ()]
        self.alerts.extend(fired)
        self.alert_count += len(fired)
        return fired


def holding_now(record: Dict[str, Any]) -> List[str]:
    """The saturation conditions that hold at this reading (``pinned``: at this check alone)."""
    scale, raw, lo, hi = (as_float(record.get(k)) for k in ("scale", "raw", "min", "max"))
    grad = None if record.get("grad") is None else as_float(record.get("grad"))
    w = as_float(record.get("warn_fraction"))
    w = DEFAULT_WARN_FRACTION if not math.isfinite(w) else w
    if not (math.isfinite(scale) and math.isfinite(raw)) or (grad is not None and not math.isfinite(grad)):
        return [NON_FINITE]
    held = []
    if scale > upper_warning(hi, w):
        held.append(NEAR_UPPER)
    if scale < lower_warning(lo, hi, w):
        held.append(NEAR_LOWER)
    reading = Reading(step=int(record["step"]), name=str(record["name"]), scale=scale, raw=raw, grad=grad,
                      min=lo, max=hi, bound=str(record.get("bound") or "hard"))
    if is_pinned(reading):
        held.append(PINNED)
    return held


# ---- drawing ---------------------------------------------------------------------------

_SPARK_UNICODE = "▁▂▃▄▅▆▇█"
_SPARK_ASCII = "_.,-=+*#"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    v = as_float(value)
    return "nan" if math.isnan(v) else f"{v:.4g}"


def _position(value: float, lo: float, hi: float, width: int) -> Optional[int]:
    if not all(math.isfinite(v) for v in (value, lo, hi)) or hi <= lo:
        return None
    return min(width - 1, max(0, int((value - lo) / (hi - lo) * width)))


def bar_cells(record: Dict[str, Any], width: int = BAR_WIDTH) -> Tuple[List[str], Optional[int], str]:
    """Cell kinds across ``[min, max]`` (``ok``/``warn``), the value's cell, and raw's side (``<``, ``>`` or ``''``)."""
    lo, hi, scale, raw = (as_float(record.get(k)) for k in ("min", "max", "scale", "raw"))
    w = as_float(record.get("warn_fraction"))
    w = DEFAULT_WARN_FRACTION if not math.isfinite(w) else w
    up, down = upper_warning(hi, w), lower_warning(lo, hi, w)
    cells = []
    for i in range(width):
        mid = lo + (i + 0.5) * (hi - lo) / width
        cells.append("warn" if (mid > up or mid < down) else "ok")
    side = ""
    if record.get("bound", "hard") == "hard" and math.isfinite(raw):
        side = ">" if raw > hi else "<" if raw < lo else ""
    return cells, _position(scale, lo, hi, width), side


def bar_text(record: Dict[str, Any], width: int = BAR_WIDTH, unicode: bool = True) -> Text:
    """Where the value stands between min and max, warning zones marked, raw beyond a bound flagged."""
    cells, at, side = bar_cells(record, width)
    line, mark = ("─", "●") if unicode else ("-", "*")
    text = Text(f"{_fmt(record.get('min'))} ", style="dim")
    text.append("◀" if side == "<" and unicode else "<" if side == "<" else " ", style="bold red")
    for i, kind in enumerate(cells):
        if i == at:
            text.append(mark, style="bold " + ("red" if kind == "warn" else "green"))
        else:
            text.append(line, style="yellow" if kind == "warn" else "grey50")
    text.append("▶" if side == ">" and unicode else ">" if side == ">" else " ", style="bold red")
    text.append(f" {_fmt(record.get('max'))}", style="dim")
    return text


def bar_ascii(record: Dict[str, Any], width: int = 20) -> str:
    """The bar in plain ASCII: ``0.5 [------~~*] 5 >`` (``~`` warning zone, ``*`` the value)."""
    cells, at, side = bar_cells(record, width)
    inner = "".join("*" if i == at else "~" if k == "warn" else "-" for i, k in enumerate(cells))
    raw = {"<": " raw<min", ">": " raw>max"}.get(side, "")
    return f"{_fmt(record.get('min'))} [{inner}] {_fmt(record.get('max'))}{raw}"


def sparkline(values: Any, lo: float, hi: float, unicode: bool = True) -> str:
    """Recent values on the fixed ``[lo, hi]`` scale, so a full block means at the top bound."""
    ramp = _SPARK_UNICODE if unicode else _SPARK_ASCII
    out = []
    for v in values:
        pos = _position(v, lo, hi, len(ramp)) if math.isfinite(lo) and math.isfinite(hi) else None
        if pos is None:
            out.append("×" if unicode else "!")
        else:
            out.append(ramp[len(ramp) - 1] if v >= hi else ramp[pos])
    return "".join(out)


_STATUS_STYLE = {NEAR_UPPER: "bold yellow", NEAR_LOWER: "bold yellow", PINNED: "bold red", NON_FINITE: "bold red"}


def _status(held: List[str]) -> Text:
    if not held:
        return Text("ok", style="green")
    return Text("\n".join(_STATUS_LABEL[k] for k in held), style=_STATUS_STYLE[held[-1]])


_STATUS_LABEL = {NEAR_UPPER: "near max", NEAR_LOWER: "near min", PINNED: "pinned", NON_FINITE: "not finite"}


def _left_cut(text: str, width: int, unicode: bool = True) -> str:
    """Keep the end of a long module path, where scales differ (``...layers.3.attn.bias``)."""
    dots = "…" if unicode else "..."
    return text if len(text) <= width else dots + text[-(width - len(dots)):]


def scale_table(shown: List[LiveScale], width: int, unicode: bool = True) -> Table:
    """One row per scale, its columns sized to ``width``: the sparkline goes first when space is short."""
    rows = []
    for s in shown:
        r = s.last
        held = holding_now(r)
        lo, hi, raw = as_float(r.get("min")), as_float(r.get("max")), as_float(r.get("raw"))
        rows.append((s, r, held, lo, hi, raw))
    cells = [[str(r.get("step")), _fmt(r.get("scale")), _fmt(r.get("raw")), _fmt(r.get("grad"))] for _, r, *_ in rows]
    fixed = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(("step", "value", "raw", "grad"))]
    now_w = max([3] + [len(_STATUS_LABEL[k]) for *_, held, _lo, _hi, _raw in rows for k in held] + [2])
    labels = max([0] + [len(_fmt(r.get("min"))) + len(_fmt(r.get("max"))) for _, r, *_ in rows]) + 4
    gap = 3  # column divider and padding
    show_step = show_now = True
    rest = width - sum(fixed) - now_w - 7 * gap - 1
    if rest < 45:  # a narrow terminal: the header has the step, the value's colour the state
        show_step, rest = False, rest + fixed[0] + gap
    if rest < 45:
        show_now, rest = False, rest + now_w + gap
    name_need = max([5] + [len(s.name) for s in shown])
    name_w = min(name_need, 40, max(10, rest - 10 - labels))
    left = rest - name_w - 10 - labels
    spark_w = min(20, left - gap) if left - gap >= 10 else 0
    left -= spark_w + gap if spark_w else 0
    bar_w = 10 + max(0, min(BAR_WIDTH - 10, left))
    left -= bar_w - 10
    if spark_w:
        grow = max(0, min(SPARK_WIDTH - spark_w, left))
        spark_w, left = spark_w + grow, left - grow
    name_w += max(0, min(left, name_need - name_w))

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold", expand=False)
    table.add_column(Text("scale"), width=name_w, no_wrap=True)
    for head, w in zip(("step", "value", "raw", "grad"), fixed):
        if head != "step" or show_step:
            table.add_column(Text(head), justify="right", width=w, no_wrap=True)
    table.add_column(Text("in [min, max]"), width=bar_w + labels, no_wrap=True)  # Text: not markup
    if spark_w:
        table.add_column(Text("recent"), width=spark_w, no_wrap=True)
    if show_now:
        table.add_column(Text("now"), width=now_w)
    for (s, r, held, lo, hi, raw), (step, value, raw_text, grad) in zip(rows, cells):
        raw_style = "bold red" if r.get("bound", "hard") == "hard" and (raw > hi or raw < lo) else ""
        value_style = _STATUS_STYLE.get(held[-1], "") if held else "bold green"
        row = [Text(_left_cut(s.name, name_w, unicode))] + ([step] if show_step else [])
        row += [Text(value, style=value_style), Text(raw_text, style=raw_style), grad, bar_text(r, bar_w, unicode)]
        if spark_w:
            row.append(Text(sparkline(list(s.recent)[-spark_w:], lo, hi, unicode), style="cyan"))
        if show_now:
            row.append(_status(held))
        table.add_row(*row)
    return table


def _fitting(scales: List[LiveScale], room: int) -> List[LiveScale]:
    """All scales in their order if their rows fit ``room`` lines, else the most at risk that do."""
    lines = {s.name: max(1, len(holding_now(s.last))) for s in scales}  # the state column wraps
    if sum(lines.values()) <= room:
        return scales
    ordered = sorted(scales, key=lambda s: (not holding_now(s.last), closeness_to_bound(s.last), s.name))
    shown, used = [], 0
    for s in ordered:
        if used + lines[s.name] > room:
            break
        shown.append(s)
        used += lines[s.name]
    return shown


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render(state: LiveState, follower: HistoryFollower, height: int = 40, unicode: bool = True,
           interval: Optional[float] = 1.0, width: int = 120) -> RenderableType:
    """The whole view: header, one row per scale (the most at risk when they do not fit), alerts."""
    dot = " · " if unicode else " | "
    head = Text(f"scalewatch watch  {follower.path}", style="bold")
    info = Text()
    if state.readings == 0:
        info.append("waiting for the first reading...", style="dim")
    else:
        info.append(f"{state.readings} reading(s) of {len(state.scales)} scale(s){dot}last step {state.last_step}",
                    style="dim")
        if follower.mtime is not None:
            info.append(f"{dot}file written {_ago(time.time() - follower.mtime)} ago", style="dim")
    if follower.waiting_for_rest:
        info.append(f"{dot}a partial last line is waiting for the rest", style="yellow")
    if follower.bad_lines:
        info.append(f"{dot}{follower.bad_lines} unreadable line(s) skipped", style="yellow")

    alerts = list(state.alerts)[-ALERTS_SHOWN:]
    # header 2, table head 2, alerts panel, "... more" line, footer, 1 spare
    room = max(3, height - 2 - 2 - (max(1, len(alerts)) + 2) - 1 - 1 - 1)
    scales = list(state.scales.values())
    shown = _fitting(scales, room)
    table = scale_table(shown, width, unicode)
    parts: List[RenderableType] = [head, info, table]
    if len(shown) < len(scales):
        parts.append(Text(f"... {len(scales) - len(shown)} more scale(s); showing the {len(shown)} closest to a bound",
                          style="dim"))
    body = Text()
    for i, (step, name, kind, value) in enumerate(alerts):
        body.append(("\n" if i else "") + f"step {step:>7}  ", style="dim")
        body.append(f"{kind:<10}", style=_STATUS_STYLE.get(kind, "bold red"))
        body.append(f"  {name}  scale={_fmt(value)}")
    if not alerts:
        body.append("none yet", style="green")
    earlier = state.alert_count - len(alerts)
    title = f"alerts ({state.alert_count})" + (f", last {len(alerts)} shown" if earlier > 0 else "")
    parts.append(Panel(body, title=title, title_align="left", border_style="red" if alerts else "green", expand=False))
    if interval is not None:
        parts.append(Text(f"refresh every {interval:g}s{dot}Ctrl-C to quit", style="dim"))
    return Group(*parts)


def plain_line(record: Dict[str, Any]) -> str:
    """One reading as one ASCII line, for logs and grep."""
    held = holding_now(record)
    status = " ".join(k.upper() for k in held) or "ok"
    return (f"step {record.get('step')}  {record.get('name')}  scale={_fmt(record.get('scale'))}  "
            f"raw={_fmt(record.get('raw'))}  grad={_fmt(record.get('grad'))}  {bar_ascii(record)}  {status}")


def plain_alert(alert: Alert, record: Optional[Dict[str, Any]] = None) -> str:
    step, name, kind, value = alert
    where = f"  range [{_fmt(record.get('min'))}, {_fmt(record.get('max'))}]" if record else ""
    return f"ALERT step {step}  {kind}  {name}  scale={_fmt(value)}{where}"


# ---- the loop --------------------------------------------------------------------------


@dataclass
class WatchOptions:
    """How to watch: refresh interval, stop conditions, and the output style."""

    interval: float = 1.0
    once: bool = False
    duration: Optional[float] = None
    mode: str = "auto"  # auto | live | plain
    #: when watching a folder: returns its newest history, so a run started later is followed
    rediscover: Optional[Callable[[], Optional[str]]] = None


def wait_for_history(run_dir: str, find: Any, options: WatchOptions) -> Optional[str]:
    """Poll ``find(run_dir)`` until it returns a path or the duration runs out."""
    deadline = None if options.duration is None else time.monotonic() + options.duration
    while True:
        path = find(run_dir)
        if path is not None:
            return path
        if options.once or (deadline is not None and time.monotonic() >= deadline):
            return None
        left = options.interval if deadline is None else deadline - time.monotonic()
        time.sleep(max(0.0, min(options.interval, left)))


def watch(path: str, options: WatchOptions, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    """Follow ``path`` until interrupted (or for ``options.duration`` seconds); return an exit code.

    With ``options.once``, shows what is there now and returns (1 if there are no readings).
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    console = Console(file=out, force_terminal=True if options.mode == "live" else None, highlight=False)
    live = options.mode == "live" or (options.mode == "auto" and console.is_terminal and not console.is_dumb_terminal)
    unicode = console.encoding.lower().replace("-", "").startswith("utf")
    follower = HistoryFollower(path)
    state = LiveState()
    deadline = None if options.duration is None else time.monotonic() + options.duration

    def catch_up() -> List[Alert]:
        _follow_newest(follower, options)
        if follower.check():
            state.reset()
        fired: List[Alert] = []
        for record in follower.read():
            fired.extend(state.add(record))
        return fired

    previous_term = _sigterm_as_interrupt()
    try:
        catch_up()
        if options.once:
            if state.readings == 0:
                print(f"scalewatch: error: {path}: no readings yet", file=err)
                return 1
            if live:
                console.print(render(state, follower, console.size.height, unicode, None, console.size.width))
            else:
                _print_snapshot(state, out)
        elif live:
            _follow_live(console, state, follower, options, deadline, catch_up, unicode)
        else:
            _follow_plain(out, state, follower, options, deadline)
    except KeyboardInterrupt:
        pass
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    if follower.waiting_for_rest:
        print(f"scalewatch: warning: {path}: the last line is incomplete (a write in progress, or a run killed "
              "mid-write) and was not shown", file=err)
    if follower.bad_lines:
        print(f"scalewatch: warning: {path}: {follower.bad_lines} unreadable line(s) skipped", file=err)
    return 0


def _sigterm_as_interrupt() -> Any:
    """End on SIGTERM (``timeout``, ``kill``) as on Ctrl-C, so the terminal is restored."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        return None


def _follow_newest(follower: HistoryFollower, options: WatchOptions) -> bool:
    """Switch to a newer history under the watched folder; ``True`` if it switched."""
    if options.rediscover is None:
        return False
    newest = options.rediscover()
    if newest is None or os.path.abspath(newest) == os.path.abspath(follower.path):
        return False
    follower.retarget(newest)
    return True


def _sleep_until_next(options: WatchOptions, deadline: Optional[float]) -> bool:
    """Sleep one interval (less near the deadline); ``False`` once the deadline has passed."""
    if deadline is None:
        time.sleep(options.interval)
        return True
    left = deadline - time.monotonic()
    if left <= 0:
        return False
    time.sleep(min(options.interval, left))
    return True


def _follow_live(console: Console, state: LiveState, follower: HistoryFollower, options: WatchOptions,
                 deadline: Optional[float], catch_up: Any, unicode: bool) -> None:
    def view() -> RenderableType:
        return render(state, follower, console.size.height, unicode, options.interval, console.size.width)

    with Live(view(), console=console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False) as live:
        while _sleep_until_next(options, deadline):
            catch_up()
            live.update(view(), refresh=True)


def _print_snapshot(state: LiveState, out: TextIO) -> None:
    for s in state.scales.values():
        print(plain_line(s.last), file=out)
    alerts = list(state.alerts)[-ALERTS_SHOWN:]
    if state.alert_count > len(alerts):
        print(f"({state.alert_count - len(alerts)} earlier alert(s) not shown)", file=out)
    for a in alerts:
        print(plain_alert(a, state.scales[a[1]].last if a[1] in state.scales else None), file=out)
    out.flush()


def _follow_plain(out: TextIO, state: LiveState, follower: HistoryFollower, options: WatchOptions,
                  deadline: Optional[float]) -> None:
    print(f"scalewatch watch: following {follower.path} ({state.readings} reading(s) so far)", file=out)
    _print_snapshot(state, out)
    while _sleep_until_next(options, deadline):
        switched = _follow_newest(follower, options)
        if follower.check():
            state.reset()
            if switched:
                print(f"scalewatch watch: a newer run appeared; following {follower.path}", file=out)
            else:
                print(f"scalewatch watch: {follower.path} was replaced or cut back; read again from the start",
                      file=out)
            for record in follower.read():
                state.add(record)
            _print_snapshot(state, out)
            continue
        for record in follower.read():
            fired = state.add(record)
            print(plain_line(record), file=out)
            for a in fired:
                print(plain_alert(a, record), file=out)
        out.flush()
