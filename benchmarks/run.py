"""Run every scalewatch benchmark, print the tables, write JSON (and the tables as Markdown).

    python -m benchmarks.run                 # what `make bench` runs (a few minutes)
    python -m benchmarks.run --quick         # seconds: checks the harness, numbers mean little
    python -m benchmarks.run --only scaling  # one of: overhead, scaling, memory

Results go to ``benchmarks/results/`` (git-ignored): ``bench-<time>.json``, and
``latest.json`` / ``latest.md`` next to it. Targets are printed with the tables;
``--strict`` makes a missed target the exit status (1).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List

import torch

from benchmarks import bench_memory, bench_overhead, bench_scaling
from benchmarks.common import describe_machine, machine, quiet, timestamp

HERE = os.path.dirname(os.path.abspath(__file__))
PARTS = ("overhead", "scaling", "memory")


def _markdown(results: Dict[str, Any]) -> str:
    out: List[str] = [f"Machine: {describe_machine(results['machine'])}.", ""]
    if "overhead" in results:
        r = results["overhead"]
        out += ["**Overhead per optimizer step** (ratio to no monitoring; "
                f"{r['config']['model']}; loggers {r['config']['loggers']})", "", bench_overhead.format_table(r), ""]
    if "scaling" in results:
        r = results["scaling"]
        out += [f"**One check step vs K watched scales** (loggers: {r['config']['loggers']})", "",
                bench_scaling.format_table(r), ""]
    if "scaling_tb" in results:
        r = results["scaling_tb"]
        out += [f"**The same with a TensorBoardLogger** (loggers: {r['config']['loggers']})", "",
                bench_scaling.format_table(r), ""]
    if "memory" in results:
        r = results["memory"]
        out += [f"**Memory, {r['config']['steps']:,} steps at every_n_steps=1**", "", bench_memory.format_table(r), ""]
    out += ["**Targets**", ""]
    for t in results["targets"]:
        out.append(f"- {t['what']}: {t['value']:.4g} (limit {t['limit']:g}) - {'met' if t['met'] else 'MISSED'}")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness in seconds")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for the JSON and Markdown")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: steadier on a shared box)")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--no-tensorboard-scaling", action="store_true",
                   help="skip the extra scaling run with a TensorBoardLogger")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet()
    started = time.perf_counter()
    results: Dict[str, Any] = {"machine": machine(), "started": timestamp(), "quick": args.quick}
    print(f"scalewatch benchmarks on {describe_machine(results['machine'])}")
    if "overhead" in args.only:
        print("\n[overhead] interleaved A/B against no monitoring")
        kw = dict(rounds=2, fit_rounds=1, fit_blocks=1) if args.quick else {}
        results["overhead"] = bench_overhead.run(accelerator=args.accelerator, **kw)
        print("\n" + bench_overhead.format_table(results["overhead"]))
    if "scaling" in args.only:
        print("\n[scaling] one check step vs K watched scales (CSVLogger)")
        kw = dict(checks=3) if args.quick else {}
        results["scaling"] = bench_scaling.run(loggers="csv", accelerator=args.accelerator, **kw)
        print("\n" + bench_scaling.format_table(results["scaling"]))
        if not args.no_tensorboard_scaling:
            print("\n[scaling] the same with a TensorBoardLogger")
            results["scaling_tb"] = bench_scaling.run(ks=(1, 100, 1000), loggers="tb", accelerator=args.accelerator,
                                                      **kw)
            print("\n" + bench_scaling.format_table(results["scaling_tb"]))
    if "memory" in args.only:
        print("\n[memory] ScaleMonitor(every_n_steps=1), RSS over a long run")
        kw = dict(steps=4000, sample_every=500, warmup=1000, control_steps=2000) if args.quick else {}
        results["memory"] = bench_memory.run(accelerator=args.accelerator, **kw)
        print("\n" + bench_memory.format_table(results["memory"]))

    results["targets"] = [results[k]["target"] for k in ("overhead", "scaling", "memory")
                          if k in results and "target" in results[k]]
    results["one_transfer_per_check"] = results.get("scaling", {}).get("one_transfer_per_check")
    results["wall_s"] = time.perf_counter() - started
    print("\ntargets:")
    for t in results["targets"]:
        print(f"  {t['what']}: {t['value']:.4g} (limit {t['limit']:g}) -> {'met' if t['met'] else 'MISSED'}")
    if results["one_transfer_per_check"] is not None:
        print(f"  one host transfer per check, none off checks, for every K: {results['one_transfer_per_check']}")

    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"bench-{results['started']}{'-quick' if args.quick else ''}")
    for path in (stem + ".json", os.path.join(args.out, "latest.json")):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    with open(os.path.join(args.out, "latest.md"), "w", encoding="utf-8") as f:
        f.write(_markdown(results))
    print(f"\nwrote {stem}.json and latest.json / latest.md in {args.out} ({results['wall_s']:.0f} s in all)")
    missed = [t for t in results["targets"] if not t["met"]]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
