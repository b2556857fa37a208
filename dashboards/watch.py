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

from scalewatch.dashboards.series import as_float, never_negative, value_name
from scalewatch.monitor.display import IDENTITY, display_value, format_number, format_range
from scalewatch.monitor.history.follower import READ_CHUNK, HistoryFollower  # noqa: F401 (moved; importable here)
from scalewatch.monitor import rules
from scalewatch.monitor.rules import (ALERT_KINDS, NEAR_LOWER, NEAR_UPPER, NON_FINITE, PINNED, lower_warning,
                                      record_closeness, record_conditions, record_warn_fraction, risk_key,
                                      upper_warning)

SPARK_WIDTH = 30
BAR_WIDTH = 24
ALERTS_SHOWN = 8

#: an alert as a history line records it: (step, name, kind, scale); the engine's Alert is monitor.saturation's
SeenAlert = Tuple[int, str, str, float]


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
        self.alerts: Deque[SeenAlert] = deque(maxlen=self.alerts_kept)
        self.alert_count = 0
        self.readings = 0
        self.last_step: Optional[int] = None

    def add(self, record: Dict[str, Any]) -> List[SeenAlert]:
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
    """The conditions that hold at this reading (``pinned``: at this check alone), as the engine judged it.

    A missing (``null``) bound takes no part: a one-sided scale is never ``near`` its missing side.
    """
    return record_conditions(record)


def _display(record: Dict[str, Any]) -> str:
    return record.get("display") or IDENTITY


def _shown(record: Dict[str, Any], value: Any) -> float:
    """A raw-unit value of this record's scale as shown (``exp`` for ``display="exp"``); None as NaN."""
    return as_float(display_value(None if value is None else as_float(value), _display(record)))


# ---- rows: a single-value scale, or a per-head tensor's elements together ---------------


@dataclass
class Row:
    """One row of the view: a scale, or all elements of a per-head tensor.

    ``record`` is the latest reading (a tensor: its most-at-risk element's, whose
    recent values the sparkline shows); ``band`` the elements' smallest and largest
    value, in raw units; ``held`` how many elements hold each condition now.
    """

    name: str
    record: Dict[str, Any]
    recent: List[float]
    elements: int = 1
    band: Optional[Tuple[float, float]] = None
    raw_band: Optional[Tuple[float, float]] = None
    grad_band: Optional[Tuple[float, float]] = None
    held: Dict[str, List[str]] = field(default_factory=dict)  # kind -> the elements holding it

    @property
    def kinds(self) -> List[str]:
        return [k for k in ALERT_KINDS if k in self.held]

    @property
    def risk(self) -> Tuple[int, float, str]:
        """Sort key: rows holding a condition first, then the closest to a bound (the rule book's order)."""
        return risk_key(bool(self.held), record_closeness(self.record), self.name)

    def status(self) -> List[str]:
        """Lines for the state column: ``pinned``; for a tensor ``[5] pinned`` or ``3 pinned``."""
        if self.band is None:
            return [_STATUS_LABEL[k] for k in self.kinds]
        out = []
        for k in self.kinds:
            who = self.held[k]
            out.append(f"{who[0][who[0].rfind('['):]} {_STATUS_LABEL[k]}" if len(who) == 1
                       else f"{len(who)} {_STATUS_LABEL[k]}")
        return out


def rows_of(scales: List[LiveScale]) -> List[Row]:
    """One :class:`Row` per scale, the elements of each per-head tensor in one row, first-seen order."""
    groups: Dict[str, List[LiveScale]] = {}
    for s in scales:
        groups.setdefault(s.last.get("tensor") or s.name, []).append(s)
    rows = []
    for name, members in groups.items():
        if len(members) == 1 and members[0].last.get("tensor") is None:
            s = members[0]
            held = {k: [s.name] for k in holding_now(s.last)}
            rows.append(Row(name=s.name, record=s.last, recent=list(s.recent), held=held))
            continue
        held: Dict[str, List[str]] = {}
        for s in members:
            for k in holding_now(s.last):
                held.setdefault(k, []).append(s.name)
        lead = min(members, key=lambda s: risk_key(any(s.name in v for v in held.values()),
                                                   record_closeness(s.last)))
        rows.append(Row(name=name, record=lead.last, recent=list(lead.recent), elements=len(members),
                        band=_range(s.last.get("scale") for s in members),
                        raw_band=_range(s.last.get("raw") for s in members),
                        grad_band=_range(s.last.get("grad") for s in members), held=held))
    return rows


def _range(numbers: Any) -> Tuple[float, float]:
    finite = [v for v in (as_float(x) for x in numbers) if math.isfinite(v)]
    return (min(finite), max(finite)) if finite else (math.nan, math.nan)


# ---- drawing ---------------------------------------------------------------------------

_SPARK_UNICODE = "▁▂▃▄▅▆▇█"
_SPARK_ASCII = "_.,-=+*#"


def _fmt_pair(pair: Tuple[float, float]) -> str:
    lo, hi = pair
    return format_number(lo) if lo == hi or math.isnan(lo) else f"{format_number(lo)}..{format_number(hi)}"


def _position(value: float, lo: float, hi: float, width: int) -> Optional[int]:
    if not all(math.isfinite(v) for v in (value, lo, hi)) or hi <= lo:
        return None
    return min(width - 1, max(0, int((value - lo) / (hi - lo) * width)))


def bar_range(record: Dict[str, Any], value: Optional[float] = None) -> Tuple[float, float]:
    """The ends of the bar, in shown units: the bounds; a missing one is put so the value sits mid-bar.

    (With ``display="exp"`` a missing lower bound is 0, what exp(-inf) shows as; an attention
    statistic's too: it is never negative.)
    """
    lo, hi = _shown(record, record.get("min")), _shown(record, record.get("max"))
    v = _shown(record, record.get("scale")) if value is None else value
    v = v if math.isfinite(v) else math.nan
    if math.isnan(lo) and not math.isnan(hi):
        lo = 0.0 if _display(record) != IDENTITY or never_negative(record.get("attention")) else \
            min(hi - 1.0, v - (hi - v) if v == v else hi - 1.0)
    elif math.isnan(hi) and not math.isnan(lo):
        hi = max(lo + 1.0, v + (v - lo) if v == v else lo + 1.0)
    return lo, hi


def bar_cells(record: Dict[str, Any], width: int = BAR_WIDTH,
              band: Optional[Tuple[float, float]] = None) -> Tuple[List[str], Optional[int], str]:
    """Cell kinds across ``[min, max]`` (``ok``/``warn``, ``band`` for a tensor's span), the value's cell,
    and raw's side (``<``, ``>`` or ``''``). All in shown units."""
    raw_lo, raw_hi = record.get("min"), record.get("max")
    w = record_warn_fraction(record)
    up, down = _shown(record, upper_warning(raw_hi, w)), _shown(record, lower_warning(raw_lo, raw_hi, w))
    lo, hi = bar_range(record)
    cells = []
    for i in range(width):
        mid = lo + (i + 0.5) * (hi - lo) / width
        cells.append("warn" if (mid > up or mid < down) else "ok")
    at = _position(_shown(record, record.get("scale")), lo, hi, width)
    if band is not None:
        ends = [_position(_shown(record, v), lo, hi, width) for v in band]
        if None not in ends:
            for i in range(ends[0], ends[1] + 1):
                cells[i] = "band-" + cells[i]
            at = None
    return cells, at, raw_side(record)


def raw_side(record: Dict[str, Any]) -> str:
    """``>`` when the raw parameter is beyond a hard upper bound, ``<`` below a hard lower one, else ``''``."""
    return rules.raw_side(as_float(record.get("raw")), record.get("min"), record.get("max"),
                          str(record.get("bound") or "hard"))


def _end_labels(record: Dict[str, Any]) -> Tuple[str, str]:
    """The bar's end labels, as shown; a missing bound as format_range shows it open (``-inf``, exp: ``0``)."""
    lo, hi = record.get("min"), record.get("max")
    open_lo, open_hi = format_range(None, None, _display(record))[1:-1].split(", ")
    if never_negative(record.get("attention")):  # its bar starts at 0 (bar_range)
        open_lo = "0"
    return (open_lo if lo is None else format_number(_shown(record, lo))), (open_hi if hi is None else format_number(_shown(record, hi)))


def bar_text(record: Dict[str, Any], width: int = BAR_WIDTH, unicode: bool = True,
             band: Optional[Tuple[float, float]] = None) -> Text:
    """Where the value (a tensor: its elements' span) stands between min and max, warning zones marked,
    raw beyond a bound flagged."""
    cells, at, side = bar_cells(record, width, band)
    line, mark, span = ("─", "●", "━") if unicode else ("-", "*", "=")
    left, right = _end_labels(record)
    text = Text(f"{left} ", style="dim")
    text.append("◀" if side == "<" and unicode else "<" if side == "<" else " ", style="bold red")
    for i, kind in enumerate(cells):
        if i == at:
            text.append(mark, style="bold " + ("red" if kind == "warn" else "green"))
        elif kind.startswith("band-"):
            text.append(span, style="bold " + ("red" if kind == "band-warn" else "green"))
        else:
            text.append(line, style="yellow" if kind == "warn" else "grey50")
    text.append("▶" if side == ">" and unicode else ">" if side == ">" else " ", style="bold red")
    text.append(f" {right}", style="dim")
    return text


def bar_ascii(record: Dict[str, Any], width: int = 20, band: Optional[Tuple[float, float]] = None) -> str:
    """The bar in plain ASCII: ``0.5 [------~~*] 5 >`` (``~`` warning zone, ``*`` the value, ``=`` a band)."""
    cells, at, side = bar_cells(record, width, band)
    inner = "".join("*" if i == at else "=" if k.startswith("band-") else "~" if k == "warn" else "-"
                    for i, k in enumerate(cells))
    raw = {"<": " raw<min", ">": " raw>max"}.get(side, "")
    left, right = _end_labels(record)
    return f"{left} [{inner}] {right}{raw}"


def _recent_span(values: List[float], floor: Optional[float] = None) -> Tuple[float, float]:
    """The finite values' smallest and largest (from ``floor`` when given), a flat run given room."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    lo, hi = min(finite), max(finite)
    if floor is not None:
        lo = min(lo, floor)
    return lo, hi if hi > lo else lo + 1.0


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
_STATUS_LABEL = {NEAR_UPPER: "near max", NEAR_LOWER: "near min", PINNED: "pinned", NON_FINITE: "not finite"}


def _status(row: Row) -> Text:
    if not row.held:
        return Text("ok", style="green")
    return Text("\n".join(row.status()), style=_STATUS_STYLE[row.kinds[-1]])


def _left_cut(text: str, width: int, unicode: bool = True) -> str:
    """Keep the end of a long module path, where scales differ (``...layers.3.attn.bias``)."""
    dots = "…" if unicode else "..."
    return text if len(text) <= width else dots + text[-(width - len(dots)):]


def _row_name(row: Row, unicode: bool = True) -> str:
    """``NAME``; a tensor ``NAME ×16``; a display transform ``(exp)`` after it."""
    name = row.name if row.band is None else f"{row.name} {'×' if unicode else 'x'}{row.elements}"
    display = _display(row.record)
    return name if display == IDENTITY else f"{name} ({display})"


def _row_cells(row: Row) -> List[str]:
    """step, value (shown), raw, grad: a tensor's as ranges across its elements."""
    r = row.record
    if row.band is None:
        return [str(r.get("step")), format_number(_shown(r, r.get("scale"))), format_number(r.get("raw")), format_number(r.get("grad"))]
    shown = (_shown(r, row.band[0]), _shown(r, row.band[1]))
    return [str(r.get("step")), _fmt_pair(shown), _fmt_pair(row.raw_band or (math.nan, math.nan)),
            _fmt_pair(row.grad_band or (math.nan, math.nan))]


def scale_table(rows: List[Row], width: int, unicode: bool = True) -> Table:
    """One row per scale (per tensor), its columns sized to ``width``: the sparkline goes first when space is short."""
    cells = [_row_cells(row) for row in rows]
    fixed = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(("step", "value", "raw", "grad"))]
    now_w = max([3] + [len(line) for row in rows for line in row.status()] + [2])
    labels = max([0] + [sum(len(x) for x in _end_labels(row.record)) for row in rows]) + 4
    gap = 3  # column divider and padding
    show_step = show_now = True
    rest = width - sum(fixed) - now_w - 7 * gap - 1
    if rest < 45:  # a narrow terminal: the header has the step, the value's colour the state
        show_step, rest = False, rest + fixed[0] + gap
    if rest < 45:
        show_now, rest = False, rest + now_w + gap
    names = [_row_name(row, unicode) for row in rows]
    name_need = max([5] + [len(n) for n in names])
    name_w = min(name_need, 40, max(16, rest - 10 - labels))
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
    for row, name, (step, value, raw_text, grad) in zip(rows, names, cells):
        r = row.record
        raw_style = "bold red" if raw_side(r) else ""
        value_style = _STATUS_STYLE.get(row.kinds[-1], "") if row.held else "bold green"
        line = [Text(_left_cut(name, name_w, unicode))] + ([step] if show_step else [])
        line += [Text(value, style=value_style), Text(raw_text, style=raw_style), grad,
                 bar_text(r, bar_w, unicode, row.band)]
        if spark_w:
            lo, hi = bar_range(r)
            recent = [_shown(r, v) for v in row.recent[-spark_w:]]
            if not (math.isfinite(lo) and math.isfinite(hi)):  # no bound at all: the recent values' own span
                lo, hi = _recent_span(recent, 0.0 if never_negative(r.get("attention")) else None)
            line.append(Text(sparkline(recent, lo, hi, unicode), style="cyan"))
        if show_now:
            line.append(_status(row))
        table.add_row(*line)
    return table


def _fitting(rows: List[Row], room: int) -> List[Row]:
    """All rows in their order if they fit ``room`` lines, else the most at risk that do."""
    lines = {row.name: max(1, len(row.status())) for row in rows}  # the state column wraps
    if sum(lines.values()) <= room:
        return rows
    shown, used = [], 0
    for row in sorted(rows, key=lambda r: r.risk):
        if used + lines[row.name] > room:
            break
        shown.append(row)
        used += lines[row.name]
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
    """The whole view: header, one row per scale or tensor (the most at risk when they do not fit), alerts."""
    dot = " · " if unicode else " | "
    head = Text(f"scalewatch watch  {follower.path}", style="bold")
    info = Text()
    rows = rows_of(list(state.scales.values()))
    if state.readings == 0:
        info.append("waiting for the first reading...", style="dim")
    else:
        what = f"{len(state.scales)} scale(s)" if len(rows) == len(state.scales) else \
            f"{len(state.scales)} value(s) in {len(rows)} scale(s)"
        info.append(f"{state.readings} reading(s) of {what}{dot}last step {state.last_step}", style="dim")
        if follower.mtime is not None:
            info.append(f"{dot}file written {_ago(time.time() - follower.mtime)} ago", style="dim")
    if follower.waiting_for_rest:
        info.append(f"{dot}a partial last line is waiting for the rest", style="yellow")
    if follower.bad_lines:
        info.append(f"{dot}{follower.bad_lines} unreadable line(s) skipped", style="yellow")

    alerts = list(state.alerts)[-ALERTS_SHOWN:]
    # header 2, table head 2, alerts panel, "... more" line, footer, 1 spare
    room = max(3, height - 2 - 2 - (max(1, len(alerts)) + 2) - 1 - 1 - 1)
    shown = _fitting(rows, room)
    table = scale_table(shown, width, unicode)
    parts: List[RenderableType] = [head, info, table]
    if len(shown) < len(rows):
        parts.append(Text(f"... {len(rows) - len(shown)} more scale(s); showing the {len(shown)} closest to a bound",
                          style="dim"))
    body = Text()
    for i, (step, name, kind, value) in enumerate(alerts):
        body.append(("\n" if i else "") + f"step {step:>7}  ", style="dim")
        body.append(f"{kind:<10}", style=_STATUS_STYLE.get(kind, "bold red"))
        record = state.scales[name].last if name in state.scales else {}
        body.append(f"  {name}  {value_name(record.get('attention'))}={_alert_value(record, value)}")
    if not alerts:
        body.append("none yet", style="green")
    earlier = state.alert_count - len(alerts)
    title = f"alerts ({state.alert_count})" + (f", last {len(alerts)} shown" if earlier > 0 else "")
    parts.append(Panel(body, title=title, title_align="left", border_style="red" if alerts else "green", expand=False))
    if interval is not None:
        parts.append(Text(f"refresh every {interval:g}s{dot}Ctrl-C to quit", style="dim"))
    return Group(*parts)


def _alert_value(record: Dict[str, Any], value: float) -> str:
    """An alert's scale as its scale's record shows it, with its raw value after it under a display transform."""
    if _display(record) == IDENTITY:
        return format_number(value)
    return f"{format_number(_shown(record, value))} (raw {format_number(value)})"


def plain_line(record: Dict[str, Any]) -> str:
    """One reading as one ASCII line, for logs and grep."""
    held = holding_now(record)
    status = " ".join(k.upper() for k in held) or "ok"
    if record.get("attention"):
        return _plain_attention(record, record.get("name"), format_number(record.get("scale")), status)
    display = _display(record)
    scale = format_number(_shown(record, record.get("scale"))) + ("" if display == IDENTITY else f" ({display})")
    return (f"step {record.get('step')}  {record.get('name')}  scale={scale}  "
            f"raw={format_number(record.get('raw'))}  grad={format_number(record.get('grad'))}  {bar_ascii(record)}  {status}")


def plain_tensor_line(row: Row) -> str:
    """A per-head tensor at one check as one ASCII line: ranges across its elements, who holds what."""
    r = row.record
    display = _display(r)
    step, value, raw, grad = _row_cells(row)
    status = " ".join(line.upper() for line in row.status()) or "ok"
    if r.get("attention"):
        return _plain_attention(r, f"{row.name} ({row.elements} heads)", value, status)
    shown = "" if display == IDENTITY else f" ({display})"
    return (f"step {step}  {row.name} ({row.elements} elements)  scale={value}{shown}  raw={raw}  grad={grad}  "
            f"{bar_ascii(r, band=row.band)}  {status}")


def _threshold(record: Dict[str, Any]) -> str:
    """An attention record's ``  threshold X`` (max_logit's), ``""`` for a statistic without one."""
    top = as_float(record.get("max"))
    return "" if top != top else f"  threshold {format_number(top)}"


def _plain_attention(record: Dict[str, Any], name: Any, value: str, status: str) -> str:
    """An attention statistic's line: what it is and its value, its threshold if it has one (no gradient, no range)."""
    return f"step {record.get('step')}  {name}  {value_name(record['attention'])}={value}{_threshold(record)}  {status}"


def plain_alert(alert: SeenAlert, record: Optional[Dict[str, Any]] = None) -> str:
    step, name, kind, value = alert
    record = record or {}
    where = ""
    if record.get("attention"):
        where = _threshold(record)
    elif record:
        where = f"  range {format_range(record.get('min'), record.get('max'), _display(record), '.4g')}"
    shown = _alert_value(record, value)
    return f"ALERT step {step}  {kind}  {name}  {value_name(record.get('attention'))}={shown}{where}"


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

    def catch_up() -> List[SeenAlert]:
        _follow_newest(follower, options)
        if follower.check():
            state.reset()
        fired: List[SeenAlert] = []
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
    for row in rows_of(list(state.scales.values())):
        print(plain_line(row.record) if row.band is None else plain_tensor_line(row), file=out)
    alerts = list(state.alerts)[-ALERTS_SHOWN:]
    if state.alert_count > len(alerts):
        print(f"({state.alert_count - len(alerts)} earlier alert(s) not shown)", file=out)
    for a in alerts:
        print(plain_alert(a, state.scales[a[1]].last if a[1] in state.scales else None), file=out)
    out.flush()


class _TensorLines:
    """Plain output of new readings: a line per single-value reading, one per tensor per check for elements.

    A tensor's elements arrive one after another; their line is printed when a
    reading of another tensor or check comes, or at the end of what was read.
    """

    def __init__(self, state: LiveState, out: TextIO) -> None:
        self.state, self.out = state, out
        self._key: Optional[Tuple[str, Any]] = None
        self._names: List[str] = []
        self._alerts: List[Tuple[SeenAlert, Dict[str, Any]]] = []

    def add(self, record: Dict[str, Any], fired: List[SeenAlert]) -> None:
        tensor = record.get("tensor")
        key = None if tensor is None else (tensor, record.get("step"))
        if key != self._key:
            self.flush()
        if key is None:
            print(plain_line(record), file=self.out)
            for a in fired:
                print(plain_alert(a, record), file=self.out)
            return
        self._key = key
        self._names.append(str(record["name"]))
        self._alerts += [(a, record) for a in fired]

    def flush(self) -> None:
        if self._key is not None:
            (row,) = rows_of([self.state.scales[n] for n in self._names])
            print(plain_tensor_line(row), file=self.out)
            for a, record in self._alerts:
                print(plain_alert(a, record), file=self.out)
        self._key, self._names, self._alerts = None, [], []


def _follow_plain(out: TextIO, state: LiveState, follower: HistoryFollower, options: WatchOptions,
                  deadline: Optional[float]) -> None:
    print(f"scalewatch watch: following {follower.path} ({state.readings} reading(s) so far)", file=out)
    _print_snapshot(state, out)
    lines = _TensorLines(state, out)
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
            lines.add(record, state.add(record))
        lines.flush()
        out.flush()
