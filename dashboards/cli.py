"""The ``scalewatch`` command line: plot, report, compare and watch runs' scales.

    scalewatch plot    RUN_DIR [-o FILE]          # scale_history.png from the run's history
    scalewatch report  RUN_DIR [--json]           # last/min/max, time near a bound, alerts
    scalewatch compare RUN RUN ... [-o FILE]      # runs side by side: table (or --json), figure
    scalewatch watch   RUN_DIR                    # live view while training writes the history

RUN_DIR is a run's log directory or any folder above it (the newest history
file below it is used), or a file: a history ``.jsonl``, a TensorBoard event
file or a CSVLogger ``metrics.csv``; or an MLflow run, ``runs:/RUN_ID`` (with
``--tracking-uri`` or ``MLFLOW_TRACKING_URI``). Problems are one line on stderr and a
non-zero exit code; a torn last line is a warning and the rest is still used.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Any, Callable, Iterator, Optional, Sequence

from scalewatch.dashboards.sources import (CSV, DEFAULT_PATIENCE, DEFAULT_WARN_FRACTION, HISTORY, KINDS, MLFLOW,
                                           SOURCE_KINDS, TENSORBOARD, Source, SourceError, find_history, find_source,
                                           has_records, torn_tail)
from scalewatch.monitor.history import HISTORY_FILENAME
from scalewatch.dashboards.filenames import COMPARE_FILENAME, PLOT_FILENAME
from scalewatch.monitor.rules import DEFAULT_MAX_PLOT_PANELS

PROG = "scalewatch"


class UsageError(Exception):
    """The arguments cannot work together; exit 2 like argparse."""


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _warn_problems(source: Source) -> None:
    if source.problems.torn_last_line or source.problems.bad_count:
        _warn(f"{source.path}: {source.problems.describe()}")


def _source(args: argparse.Namespace) -> Source:
    return find_source(args.run_dir, kind=args.source, warn_fraction=args.warn_fraction, patience=args.patience)


# ---- commands ---------------------------------------------------------------------------


def cmd_plot(args: argparse.Namespace) -> int:
    """Draw the run's scales against their bounds into a PNG."""
    from scalewatch.dashboards.plot import save_plot  # matplotlib only for this command

    src = _source(args)
    if not args.quiet:
        print(f"{PROG}: reading {src.describe()}", file=sys.stderr)
    data: Any
    if src.kind == HISTORY:
        if not has_records(src):
            raise SourceError(f"{src.path}: no readings in it yet")
        if torn_tail(src.path):
            src.problems.torn_last_line = True
        data = src.path  # plot streams the file itself; the record is never loaded whole
    else:
        data = list(src.records())
        if not data:
            raise SourceError(f"{src.path}: no scalewatch readings in it")
    _warn_problems(src)
    out = args.output or os.path.join(src.directory, PLOT_FILENAME)
    if os.path.isdir(out):
        out = os.path.join(out, PLOT_FILENAME)
    title = args.title or f"scalewatch: scale against its bounds   ({src.origin or _short(src.directory)})"
    save_plot(data, out, max_panels=None if args.max_panels == 0 else args.max_panels, title=title)
    print(f"wrote {out}")
    return 0


def _short(path: str, parts: int = 3) -> str:
    pieces = os.path.abspath(path).split(os.sep)
    return os.sep.join(pieces[-parts:])


def cmd_report(args: argparse.Namespace) -> int:
    """Print per scale the last/min/max values, readings near a bound, and the alerts."""
    from scalewatch.dashboards.advice_view import history_series_and_advice, records_series_and_advice
    from scalewatch.dashboards.report import ScaleSummary, report_json, report_text, source_json

    src = _source(args)
    # a history file through the column reader, once for the table and the advice: a per-head run's
    # millions of lines in seconds (gradients only of the scales where a rule held)
    series, advice = (history_series_and_advice(src.path, src.problems) if src.kind == HISTORY
                      else records_series_and_advice(src.records()))
    summaries = [ScaleSummary.of(s) for s in series.values()]
    if not summaries:
        _warn_problems(src)
        raise SourceError(f"{src.path}: no readings in it yet")
    if args.json:
        print(json.dumps(report_json(summaries, source_json(src), advice), indent=2))
    else:
        print(report_text(summaries, src.describe(), advice))
    _warn_problems(src)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Put several runs side by side: a table (or JSON) per scale, and with -o a figure."""
    from scalewatch.dashboards.compare import compare_runs, comparison_json, comparison_text

    if len(args.runs) < 2:
        raise UsageError("compare needs at least two runs (for one run: scalewatch report / plot)")
    comparison = compare_runs(args.runs, keep_going=args.keep_going, metric=args.metric, kind=args.source,
                              warn_fraction=args.warn_fraction, patience=args.patience,
                              gradient=args.gradient and args.output is not None, workers=os.cpu_count() or 1)
    for _, why in comparison.skipped:
        _warn(f"skipped {why}")
    for run in comparison.runs:
        _warn_problems(run.source)
    if args.json:
        print(json.dumps(comparison_json(comparison), indent=2))
    else:
        print(comparison_text(comparison))
    if args.output:
        from scalewatch.dashboards.plot import save_compare  # matplotlib only when drawing

        if not comparison.shared:
            raise SourceError("the runs share no scale name, so there is nothing to draw side by side")
        out = os.path.join(args.output, COMPARE_FILENAME) if os.path.isdir(args.output) else args.output
        save_compare(comparison, out, normalise=args.normalise, gradient=args.gradient,
                     max_panels=None if args.max_panels == 0 else args.max_panels, title=args.title)
        print(f"wrote {out}", file=sys.stderr if args.json else sys.stdout)
    return 1 if comparison.skipped else 0


def cmd_watch(args: argparse.Namespace) -> int:
    """Follow the run's history file in the terminal until Ctrl-C (or --duration)."""
    from scalewatch.dashboards.watch import WatchOptions, wait_for_history, watch

    mode = "plain" if args.plain else "live" if args.live else "auto"
    options = WatchOptions(interval=args.interval, once=args.once, duration=args.duration, mode=mode)
    if os.path.isdir(args.run_dir):
        # Follow the newest run under the folder, also one that starts after watch did.
        options.rediscover = lambda: find_history(args.run_dir)
    if os.path.isfile(args.run_dir) and not args.run_dir.endswith(".jsonl"):
        raise SourceError(f"{args.run_dir}: watch follows a history file ({HISTORY_FILENAME}), not this one")
    started = time.monotonic()
    if args.wait and find_history(args.run_dir) is None:
        if not args.quiet:
            print(f"{PROG}: waiting for {HISTORY_FILENAME} to appear under {args.run_dir} ...", file=sys.stderr)
        path = wait_for_history(args.run_dir, find_history, options)
        if path is None:
            raise SourceError(f"{args.run_dir}: no {HISTORY_FILENAME} appeared"
                              + (f" within {args.duration:g}s" if args.duration is not None else ""))
        if options.duration is not None:
            options.duration = max(0.0, options.duration - (time.monotonic() - started))
    else:
        try:
            src = find_source(args.run_dir, kind=HISTORY)
        except SourceError as err:
            if os.path.isdir(args.run_dir):
                raise SourceError(f"{err}; watch follows the file ScaleMonitor writes while training "
                                  "(use --wait to wait for it)") from err
            raise
        path = src.path
        if src.note and not args.quiet:
            print(f"{PROG}: following {src.describe()}", file=sys.stderr)
    return watch(path, options)


# ---- arguments --------------------------------------------------------------------------


def _bounded(kind: Callable[[str], Any], low: float, what: str, inclusive: bool = True,
             high: Optional[float] = None) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < low or (not inclusive and value == low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The ``scalewatch`` argument parser with its four subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Plot, report, compare and watch the learnable, clamped scales runs recorded "
                               "with ScaleMonitor.",
        epilog="RUN_DIR: a run's log directory or a folder above it (the newest history file below it is used), "
               "or one file: a history .jsonl, a TensorBoard event file, a CSVLogger metrics.csv; or an MLflow "
               "run, runs:/RUN_ID (its history artifact, else its scalewatch/* metrics).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("run_dir", metavar="RUN_DIR",
                        help="run log directory (or a parent), or a history/event/csv file")
    common.add_argument("-q", "--quiet", action="store_true", help="no informational lines on stderr")

    reading = argparse.ArgumentParser(add_help=False)
    reading.add_argument("--from", dest="source", choices=SOURCE_KINDS, default=None,
                         help=f"read only this kind of source (default: the first found of {', '.join(KINDS)}; "
                              f"{MLFLOW}: RUN is an MLflow run id)")
    reading.add_argument("--tracking-uri", metavar="URI", default=None,
                         help="the MLflow tracking URI of runs:/RUN_ID runs (default: MLFLOW_TRACKING_URI)")
    reading.add_argument("--warn-fraction", type=_bounded(float, 0.0, "a number in (0, 1]", False, 1.0),
                         default=DEFAULT_WARN_FRACTION, metavar="W",
                         help=f"for {TENSORBOARD}/{CSV}/{MLFLOW} metrics, which keep no alerts: recompute them with "
                              f"this warn_fraction (default {DEFAULT_WARN_FRACTION})")
    reading.add_argument("--patience", type=_bounded(int, 1, "an integer >= 1"), default=DEFAULT_PATIENCE,
                         help=f"... and this pinned patience (default {DEFAULT_PATIENCE})")

    drawing = argparse.ArgumentParser(add_help=False)
    drawing.add_argument("--max-panels", type=_bounded(int, 0, "an integer >= 0"), default=DEFAULT_MAX_PLOT_PANELS,
                         metavar="N", help="draw at most N scales, those closest to a bound or alerted "
                                           f"(0: all; default {DEFAULT_MAX_PLOT_PANELS})")
    drawing.add_argument("--title", help="figure title")

    p = sub.add_parser("plot", parents=[common, reading, drawing], help="draw the scales against their bounds (PNG)",
                       description="Draw each scale over the steps against its min/max and warning lines, alerts "
                                   "marked; from the history file, TensorBoard events or a CSVLogger metrics.csv.")
    p.add_argument("-o", "--output", metavar="FILE",
                   help=f"where to write (default: {PLOT_FILENAME} next to the source; a directory: inside it)")
    p.set_defaults(handler=cmd_plot)

    r = sub.add_parser("report", parents=[common, reading], help="last/min/max, time near a bound, alerts",
                       description="Per scale: last, min and max value, readings beyond the warning lines, "
                                   "and every alert with its step.")
    r.add_argument("--json", action="store_true", help="print JSON instead of a table (non-finite numbers as null)")
    r.set_defaults(handler=cmd_report)

    c = sub.add_parser("compare", parents=[reading, drawing], help="several runs side by side: table, JSON, figure",
                       description="Put runs side by side (presets, learning rates, seeds): per scale and run the "
                                   "bounds, last/min/max scale, readings near a bound, alerts and a final metric; "
                                   "with -o, a figure with one panel per scale the runs share, each run in its own "
                                   "colour against its own bounds. Runs are named by the shortest unique end of "
                                   "their directory.",
                       epilog="Exit status: 0 compared; 1 a run could not be read (with --keep-going, after "
                              "comparing the others); 2 bad usage.")
    c.add_argument("runs", nargs="+", metavar="RUN", help="a run as report reads it: a log directory (or a folder "
                                                          "above one), a history .jsonl, an event file, a metrics.csv, "
                                                          "runs:/RUN_ID")
    c.add_argument("-o", "--output", metavar="FILE",
                   help=f"also draw the comparison into FILE (PNG; a directory: {COMPARE_FILENAME} in it)")
    c.add_argument("--json", action="store_true", help="print JSON instead of the table (non-finite numbers as null)")
    c.add_argument("--metric", default="val/loss", metavar="NAME",
                   help="the metric whose last value each run's metrics.csv or TensorBoard events give "
                        "(default val/loss)")
    c.add_argument("--normalise", "--normalize", dest="normalise", action="store_true",
                   help="draw each run as (scale - min) / (max - min), so runs with different bounds compare "
                        "fairly (0 = at min, 1 = at max)")
    c.add_argument("--gradient", action="store_true",
                   help="draw each run's gradient in a strip under each panel (symlog), shading where its raw "
                        "parameter is outside the bounds")
    c.add_argument("--keep-going", action="store_true",
                   help="skip runs that cannot be read (one warning each) and compare the others")
    c.set_defaults(handler=cmd_compare)

    w = sub.add_parser("watch", parents=[common], help="live view of a run while it trains",
                       description="Follow the run's history file as training appends to it: per scale the value, "
                                   "raw parameter, gradient, where it stands between min and max, recent values, "
                                   "and alerts as they arrive. Plain lines when not on a terminal.")
    w.add_argument("--interval", type=_bounded(float, 0.0, "a number of seconds > 0", False), default=1.0,
                   metavar="SECONDS", help="refresh interval (default 1)")
    w.add_argument("--once", action="store_true", help="show the current state once and exit")
    w.add_argument("--duration", "--timeout", dest="duration", type=_bounded(float, 0.0, "a number of seconds >= 0"),
                   default=None, metavar="SECONDS", help="stop after this long (default: until Ctrl-C)")
    w.add_argument("--wait", action="store_true",
                   help="wait for the history file to appear (start watch before the run)")
    style = w.add_mutually_exclusive_group()
    style.add_argument("--plain", action="store_true", help="plain lines even on a terminal (logs, grep)")
    style.add_argument("--live", action="store_true", help="the redrawn view even when not on a terminal")
    w.set_defaults(handler=cmd_watch)
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("scalewatch")
    except Exception:
        return "unknown"


@contextlib.contextmanager
def _tracking_uri(uri: Optional[str]) -> Iterator[None]:
    """``--tracking-uri`` as ``MLFLOW_TRACKING_URI`` while the command runs (compare's runs read it too)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield
    finally:
        if uri and before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        elif uri:
            os.environ["MLFLOW_TRACKING_URI"] = before


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 a problem with the run's data, 2 bad usage)."""
    args = build_parser().parse_args(argv)
    try:
        with _tracking_uri(getattr(args, "tracking_uri", None)):
            return int(args.handler(args))
    except SourceError as err:
        _error(str(err))
        return 1
    except UsageError as err:
        _error(str(err))
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `scalewatch report RUN | head`
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        _error(f"{where}{err.strerror or err}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
