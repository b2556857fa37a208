"""Run every scalewatch benchmark, print the tables, write JSON (and the tables as Markdown).

    python -m benchmarks.run                 # what `make bench` runs (a few minutes)
    python -m benchmarks.run --quick         # seconds: checks the harness, numbers mean little
    python -m benchmarks.run --only scaling  # any of: overhead, plain_loop, sharded, scaling, per_head, memory, attention, hf, mmengine
    python -m benchmarks.run --only overhead --baseline-ref c093679   # + the Lightning rows of an earlier commit

Results go to ``benchmarks/results/`` (git-ignored): ``bench-<time>.json``, and
``latest.json`` / ``latest.md`` next to it. Targets are printed with the tables;
``--strict`` makes a missed target the exit status (1). The ``hf`` and ``mmengine``
parts run where their benchmark module and their framework are installed, and are
skipped with a note elsewhere.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import time
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional

import torch

from benchmarks import (bench_memory, bench_overhead, bench_per_head, bench_plain_loop, bench_scaling, bench_sharded,
                        compare_refs)
from benchmarks.common import describe_machine, machine, quiet, timestamp

HERE = os.path.dirname(os.path.abspath(__file__))
PARTS = ("overhead", "plain_loop", "sharded", "scaling", "per_head", "memory", "attention", "hf", "mmengine")
#: parts written elsewhere, loaded only when asked for: part -> (module, framework it needs, extra that installs it)
OPTIONAL_PARTS = {"attention": ("benchmarks.bench_attention", "timm", "timm"),
                  "hf": ("benchmarks.bench_hf", "transformers", "transformers"),
                  "mmengine": ("benchmarks.bench_mmengine", "mmengine", "mmengine")}
#: the Markdown's sections in order: result key -> heading (from the result)
HEADINGS: Dict[str, Callable[[Dict[str, Any]], str]] = {
    "overhead": lambda r: ("**Overhead per optimizer step** (ratio to no monitoring; "
                           f"{r['config']['model']}; loggers {r['config']['loggers']})"),
    "plain_loop": lambda r: ("**A plain PyTorch loop: ScaleWatcher per optimizer step** (ratio to the same loop "
                             f"without it; loggers: {r['config']['loggers']})"),
    "sharded": lambda r: ("**FSDP2, 2 gloo processes: ScaleWatcher per optimizer step** (ratio to the same loop "
                          "without it, per rank; then the check step's time beside one process's)"),
    "hf": lambda r: f"**HF Transformers Trainer** (ratio to no callback; loggers: {r['config'].get('loggers')})",
    "mmengine": lambda r: f"**mmengine Runner** (ratio to no hook; loggers: {r['config'].get('loggers')})",
    "compare_refs": lambda r: (f"**Lightning rows, {r['config']['ref']} against the working tree** (ratio to no "
                               "monitoring, each side against its own baseline blocks)"),
    "scaling": lambda r: f"**One check step vs K watched scales** (loggers: {r['config']['loggers']})",
    "scaling_tb": lambda r: f"**The same with a TensorBoardLogger** (loggers: {r['config']['loggers']})",
    "per_head": lambda r: "**One check step with per-head scales** (ScaleWatcher, SummaryWriter, a check every 100 ms)",
    "memory": lambda r: f"**Memory, {r['config']['steps']:,} steps at every_n_steps=1**",
    "attention": lambda r: ("**attention=True: ViT-tiny and BERT-tiny steps** (ratio to the same loop without it; "
                            "the check step's extra cost and memory)"),
}


def optional_part(part: str) -> Optional[ModuleType]:
    """The benchmark module of an optional part, or ``None`` (with a note) when it or its framework is missing."""
    module, framework, extra = OPTIONAL_PARTS[part]
    if importlib.util.find_spec(module) is None:
        print(f"\n[{part}] skipped: {module.replace('.', '/')}.py is not there")
        return None
    if importlib.util.find_spec(framework) is None:
        print(f"\n[{part}] skipped: {framework} is not installed (pip install 'scalewatch[{extra}]')")
        return None
    return importlib.import_module(module)


def _markdown(results: Dict[str, Any], tables: Dict[str, Callable[[Dict[str, Any]], str]]) -> str:
    out: List[str] = [f"Machine: {describe_machine(results['machine'])}.", ""]
    for key, heading in HEADINGS.items():
        if key in results:
            out += [heading(results[key]), "", tables[key](results[key]), ""]
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
    p.add_argument("--baseline-ref", metavar="GIT_REF",
                   help="also run the overhead benchmark's Lightning rows for the code at GIT_REF and for the working "
                        "tree, alternating whole runs, and print them side by side (e.g. c093679)")
    p.add_argument("--baseline-runs", type=int, default=3, help="runs per side for --baseline-ref")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet()
    started = time.perf_counter()
    results: Dict[str, Any] = {"machine": machine(), "started": timestamp(), "quick": args.quick}
    tables: Dict[str, Callable[[Dict[str, Any]], str]] = {}
    print(f"scalewatch benchmarks on {describe_machine(results['machine'])}")

    def part(key: str, module: ModuleType, what: str, **kw: Any) -> None:
        print(f"\n[{key}] {what}")
        results[key] = module.run(**kw)
        tables[key] = module.format_table
        print("\n" + module.format_table(results[key]))

    quick = args.quick
    if "overhead" in args.only:
        part("overhead", bench_overhead, "interleaved A/B against no monitoring", accelerator=args.accelerator,
             **(dict(rounds=2, fit_rounds=1, fit_blocks=1) if quick else {}))
    if "plain_loop" in args.only:
        part("plain_loop", bench_plain_loop, "ScaleWatcher in a plain PyTorch loop, interleaved A/B",
             accelerator=args.accelerator, **(dict(rounds=2) if quick else {}))
    if "sharded" in args.only:
        part("sharded", bench_sharded, "ScaleWatcher in a 2-process FSDP2 plain loop (gloo), interleaved A/B",
             **(dict(rounds=1) if quick else {}))
    for key in ("hf", "mmengine"):
        module = optional_part(key) if key in args.only else None
        if module is not None:
            part(key, module, f"the {key} front door, interleaved A/B", **(dict(rounds=1) if quick else {}))
    if args.baseline_ref:
        part("compare_refs", compare_refs, f"Lightning rows: {args.baseline_ref} against the working tree",
             ref=args.baseline_ref, threads=args.threads, accelerator=args.accelerator,
             **(dict(runs=1, rounds=1) if quick else dict(runs=args.baseline_runs)))
    if "scaling" in args.only:
        kw = dict(checks=3) if quick else {}
        part("scaling", bench_scaling, "one check step vs K watched scales (CSVLogger)", loggers="csv",
             accelerator=args.accelerator, **kw)
        if not args.no_tensorboard_scaling:
            part("scaling_tb", bench_scaling, "the same with a TensorBoardLogger", ks=(1, 100, 1000), loggers="tb",
                 accelerator=args.accelerator, **kw)
    if "per_head" in args.only:
        part("per_head", bench_per_head, "one check step with per-head scales", **(dict(checks=3) if quick else {}))
    if "memory" in args.only:
        part("memory", bench_memory, "ScaleMonitor(every_n_steps=1), RSS over a long run", accelerator=args.accelerator,
             **(dict(steps=4000, sample_every=500, warmup=1000, control_steps=2000) if quick else {}))

    if "attention" in args.only and optional_part("attention") is not None:
        part("attention", importlib.import_module("benchmarks.bench_attention"),
             "attention=True on ViT-tiny (64x64 and 224x224) and BERT-tiny, interleaved A/B; the check step's "
             "extra cost",
             accelerator=args.accelerator, **(dict(rounds=1, reps=3) if quick else {}))

    results["targets"] = [t for k in HEADINGS if k in results
                          for t in ([results[k]["target"]] if "target" in results[k] else [])
                          + results[k].get("extra_targets", [])]
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
        f.write(_markdown(results, tables))
    print(f"\nwrote {stem}.json and latest.json / latest.md in {args.out} ({results['wall_s']:.0f} s in all)")
    missed = [t for t in results["targets"] if not t["met"]]
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
