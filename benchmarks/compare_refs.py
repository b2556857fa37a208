"""The overhead benchmark's Lightning rows for the code at an earlier git commit and for the working tree, side by side.

    python -m benchmarks.compare_refs --ref c093679            # the last commit before the engine refactor
    python -m benchmarks.compare_refs --ref c093679 --runs 3 --rounds 24

Method. Each side runs ``bench_overhead`` (comparison 1: one fit, the monitor
switched per 50-step block against interleaved baseline blocks) in a fresh
process, with that side's own ``scalewatch`` and that side's own ``benchmarks``
(a harness reaches into its monitor, so each is measured by the harness written
for it; the method is the same). The two implementations share every module
name, so they cannot be interleaved inside one process; whole runs alternate
instead, ``old new new old old new ...`` (ABBA, so a slow drift of the machine's
load weighs on both sides alike), ``--runs`` of each. Each run's ratios are
already against its own neighbouring baseline blocks; the table pools them per
side and gives min / median / max and a bootstrap 95% interval of the median,
the baseline step time of each side, and each side's in-hook account.

How a side is imported. The earlier commit's ``monitor/``, ``callbacks/``,
``dashboards/`` and ``benchmarks/`` are extracted with ``git archive`` into a
temporary folder; for each side a second folder holds ``scalewatch/{monitor,
callbacks,dashboards}`` and ``benchmarks`` as symlinks to that side's tree, and
the run starts there with ``PYTHONPATH`` pointing at it. The editable install's
finder comes after the path finder on ``sys.meta_path``, so the side's files win;
a probe in the same environment prints where ``scalewatch.callbacks.scale_monitor``
and ``benchmarks.bench_overhead`` came from, and the run stops unless both are
the side's own. Nothing is left in the repository (no worktree).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from benchmarks.bench_overhead import IN_FIT, LABELS
from benchmarks.common import METRICS, quiet, report, spread

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
#: the scalewatch subpackages and the harness, as folders of the repository
TREE = ("monitor", "callbacks", "dashboards", "benchmarks")
#: the overhead benchmark's Lightning rows: ScaleMonitor's own
LIGHTNING_ROWS = ("monitor_n50", "monitor_n1")
#: the last commit before ScaleMonitor became a front door over ScaleWatcher
DEFAULT_REF = "c093679"
PROBE = ("import json, scalewatch.callbacks.scale_monitor as m, benchmarks.bench_overhead as b; "
         "print(json.dumps({'scale_monitor': m.__file__, 'bench_overhead': b.__file__}))")


def _git(*args: str) -> bytes:
    return subprocess.run(["git", "-C", REPO, *args], check=True, capture_output=True).stdout


def extract(ref: str, into: str) -> str:
    """The tree of ``ref`` (its scalewatch folders and harness) under ``into``; returns the full commit."""
    commit = _git("rev-parse", "--verify", f"{ref}^{{commit}}").decode().strip()
    with tarfile.open(fileobj=io.BytesIO(_git("archive", "--format=tar", commit, *TREE))) as tar:
        tar.extractall(into, filter="data")
    missing = [d for d in TREE if not os.path.isdir(os.path.join(into, d))]
    if missing:
        raise SystemExit(f"{ref} ({commit[:10]}) has no {', '.join(missing)}: cannot run its overhead benchmark")
    return commit


def import_root(tree: str, into: str) -> str:
    """A folder from which ``scalewatch.*`` and ``benchmarks`` import as ``tree``'s files."""
    os.makedirs(os.path.join(into, "scalewatch"))
    for d in TREE[:3]:
        os.symlink(os.path.join(tree, d), os.path.join(into, "scalewatch", d))
    os.symlink(os.path.join(tree, "benchmarks"), os.path.join(into, "benchmarks"))
    return into


def _env(root: str) -> Dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    env.pop("PYTHONSAFEPATH", None)  # the run starts in `root` and imports from there
    return env


def probe(root: str, tree: str) -> Dict[str, str]:
    """Where a process started like the runs imports the monitor and the harness from; fails unless from ``tree``."""
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=root, env=_env(root), check=True,
                         capture_output=True, text=True).stdout
    files = json.loads(out.strip().splitlines()[-1])
    want = os.path.realpath(tree) + os.sep
    wrong = {k: v for k, v in files.items() if not os.path.realpath(v).startswith(want)}
    if wrong:
        raise SystemExit(f"not the code under test ({tree}): {wrong}")
    return files


def run_side(root: str, json_path: str, rounds: int, variants: Sequence[str], threads: int,
             accelerator: str) -> Dict[str, Any]:
    """One overhead run (comparison 1 only) with the side's own code, in a fresh process."""
    cmd = [sys.executable, "-m", "benchmarks.bench_overhead", "--rounds", str(rounds), "--variants", *variants,
           "--threads", str(threads), "--accelerator", accelerator, "--json", json_path]
    done = subprocess.run(cmd, cwd=root, env=_env(root), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} (in {root}) failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    with open(json_path, encoding="utf-8") as f:
        return json.load(f)


def _pooled(runs: List[Dict[str, Any]], variants: Sequence[str]) -> Dict[str, Any]:
    """One side's runs pooled: ratios per clock and variant, baseline ms/step, in-hook accounts."""
    out: Dict[str, Any] = {"primary_metric": runs[0]["primary_metric"], "variants": {}}
    base = [next(r for r in run["rows"] if r["variant"] == "baseline") for run in runs]
    out["baseline_ms"] = {m: statistics.median(b[f"{m}_ms"] for b in base) for m in METRICS}
    for v in variants:
        rows = [next(r for r in run["rows"] if r["variant"] == v) for run in runs]
        out["variants"][v] = {
            **{f"{m}_ratio": spread([x for run in runs for x in run["in_fit"]["ratios"][m][v]]) for m in METRICS},
            "in_hook": statistics.median(r["in_hook"]["ratio"] for r in rows if "in_hook" in r)
            if any("in_hook" in r for r in rows) else None,
        }
    return out


def run(ref: str = DEFAULT_REF, runs: int = 3, rounds: int = 24, variants: Sequence[str] = LIGHTNING_ROWS,
        threads: int = 1, accelerator: str = "auto", log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Alternate whole overhead runs of ``ref`` and the working tree; returns both sides pooled."""
    quiet()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="scalewatch-compare-") as tmp:
        old_tree = os.path.join(tmp, "old-tree")
        commit = extract(ref, old_tree)
        trees = {"old": old_tree, "new": REPO}
        roots = {side: import_root(tree, os.path.join(tmp, f"{side}-root")) for side, tree in trees.items()}
        imported = {side: probe(roots[side], trees[side]) for side in trees}
        for side in trees:
            log(f"  {side}: scalewatch.callbacks.scale_monitor from {imported[side]['scale_monitor']} "
                f"-> {os.path.realpath(imported[side]['scale_monitor'])}")
        results: Dict[str, List[Dict[str, Any]]] = {"old": [], "new": []}
        order = [side for i in range(runs) for side in (("old", "new") if i % 2 == 0 else ("new", "old"))]
        for i, side in enumerate(order):
            path = os.path.join(tmp, f"{side}-{i}.json")
            results[side].append(run_side(roots[side], path, rounds, variants, threads, accelerator))
            log(f"  run {i + 1}/{len(order)} ({side}) done [{time.perf_counter() - started:.0f} s]")
    return {"benchmark": "compare_refs", "method": __doc__.split("Method.", 1)[1].strip(),
            "config": {"ref": ref, "commit": commit, "runs_per_side": runs, "rounds_per_run": rounds,
                       "variants": list(variants), "order": order, "threads": threads, "accelerator": accelerator},
            "imported_from": imported, "old": _pooled(results["old"], variants),
            "new": _pooled(results["new"], variants), "runs": results, "wall_s": time.perf_counter() - started}


def format_table(result: Dict[str, Any]) -> str:
    """Old and new, per Lightning row: the primary clock's ratios, their intervals and the in-hook accounts."""
    c, old, new = result["config"], result["old"], result["new"]
    p = old["primary_metric"]
    lines = [f"| variant | old ({c['commit'][:7]}) {p} ratio min / **median** / max | old 95% CI "
             f"| new (working tree) {p} ratio min / **median** / max | new 95% CI | in-hook old / new |",
             "|---|---:|---:|---:|---:|---:|",
             f"| no monitoring (baseline), {p} ms/step | {old['baseline_ms'][p]:.2f} | | {new['baseline_ms'][p]:.2f} "
             "| | |"]
    for v in c["variants"]:
        cells = []
        for side in (old, new):
            r = side["variants"][v][f"{p}_ratio"]
            lo, hi = r["median_ci95"]
            cells += [f"{r['min']:.3f} / **{r['median']:.3f}** / {r['max']:.3f}", f"{lo:.3f} - {hi:.3f}"]
        hooks = " / ".join("" if s["variants"][v]["in_hook"] is None else f"{s['variants'][v]['in_hook']:.4f}"
                           for s in (old, new))
        lines.append(f"| {LABELS[v]} | " + " | ".join(cells) + f" | {hooks} |")
    lines.append("")
    lines.append(f"{c['runs_per_side']} run(s) a side of {c['rounds_per_run']} round(s), alternating "
                 f"{' '.join(c['order'])}; ratios pooled per side.")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", default=DEFAULT_REF, help=f"the earlier code's git ref (default {DEFAULT_REF})")
    p.add_argument("--runs", type=int, default=3, help="overhead runs per side, alternating")
    p.add_argument("--rounds", type=int, default=24, help="rounds of comparison 1 in each run")
    p.add_argument("--variants", nargs="+", default=list(LIGHTNING_ROWS), choices=IN_FIT)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)  # only for the machine line: the runs get --threads
    result = run(args.ref, args.runs, args.rounds, tuple(args.variants), args.threads, args.accelerator)
    return report(result, f"Lightning rows, {args.ref} against the working tree", format_table(result), args.json)


if __name__ == "__main__":
    sys.exit(main())
