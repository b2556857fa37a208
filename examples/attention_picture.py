"""The softmax while the scale pins: a run's bias scale, max |logit|, saturated rows and entropy, one figure.

    python examples/attention_picture.py demo_runs/fast-scale-lr -o examples/images/attention_fast_scale_lr.png

Reads the history of a run recorded with ``ScaleMonitor(attention=True)`` (``make demo``'s
fast-scale-lr run has it) and draws, against the optimizer step: the bias scale with its
bounds and where it pinned, and per attention head the largest |logit|, the share of rows
whose top probability exceeds 0.99 (where the softmax gradient ``p(1 - p)`` is below 0.01)
and the mean row entropy. It also prints the numbers as a table: DESIGN.md's sensitivity
table, measured on the live model.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from typing import Dict, List, Optional

from scalewatch.dashboards.sources import find_history
from scalewatch.monitor.history import iter_history

STATISTICS = ("max_logit", "saturated", "entropy")
LABELS = {"max_logit": "max |logit| per head", "saturated": "rows with top p > 0.99 (share)",
          "entropy": "mean row entropy (nats)"}


def load(path: str) -> Dict[str, Dict[str, Dict[int, float]]]:
    """``{"scale": {name: {step: value}}, "raw": ..., STATISTIC: {"MODULE[h]": {step: value}}}``."""
    out: Dict[str, Dict[str, Dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in iter_history(path):
        statistic = r.get("attention")
        if statistic:
            out[statistic][r["name"].replace(f".{statistic}", "")][r["step"]] = r["scale"]
        else:
            out["scale"][r["name"]][r["step"]] = r["scale"]
            out["raw"][r["name"]][r["step"]] = r["raw"]
            for kind in r.get("alerts") or ():
                out[f"alert:{kind}"][r["name"]][r["step"]] = r["scale"]
            out["bounds"][r["name"]] = {0: r["min"], 1: r["max"]}
    return out


def table(data: Dict[str, Dict[str, Dict[int, float]]]) -> str:
    scale = next(iter(data["scale"].values()))
    lines = ["| step | scale | raw | " + " | ".join(f"{s} (heads)" for s in STATISTICS) + " |",
             "|---:|---:|---:|" + "---:|" * len(STATISTICS)]
    for step in sorted(scale):
        cells = [" / ".join(f"{v[step]:.3g}" for v in data[s].values() if step in v) for s in STATISTICS]
        lines.append(f"| {step} | {scale[step]:.3g} | {next(iter(data['raw'].values()))[step]:.3g} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw(data: Dict[str, Dict[str, Dict[int, float]]], out: str, title: Optional[str] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True, gridspec_kw=dict(height_ratios=[1.2, 1, 1, 1]))
    name, scale = next(iter(data["scale"].items()))
    steps = sorted(scale)
    lo, hi = data["bounds"][name][0], data["bounds"][name][1]
    ax = axes[0]
    ax.plot(steps, [scale[s] for s in steps], color="tab:blue", label="scale (effective)")
    ax.plot(steps, [data["raw"][name][s] for s in steps], color="tab:orange", alpha=0.7, label="raw parameter")
    for bound, style in ((hi, "--"), (lo, "--")):
        if bound is not None:
            ax.axhline(bound, color="tab:red", linestyle=style, linewidth=1)
    pinned = sorted(data.get("alert:pinned", {}).get(name, {}))
    near = sorted(data.get("alert:near_upper", {}).get(name, {}))
    if near:
        ax.plot(near, [scale[s] for s in near], "^", color="tab:red", label="alert: near_upper")
    if pinned:
        ax.plot(pinned, [scale[s] for s in pinned], "X", color="black", label="alert: pinned")
    ax.set_ylabel("bias scale")
    ax.set_title(f"{name}: bounds [{lo:g}, {hi:g}]", fontsize=9, loc="left")
    ax.legend(fontsize=7, loc="lower right")
    first_at_bound = next((s for s in steps if hi is not None and scale[s] >= hi - 1e-6), None)
    for ax, statistic in zip(axes[1:], STATISTICS):
        for head, series in sorted(data[statistic].items()):
            xs = sorted(series)
            ax.plot(xs, [series[x] for x in xs], marker=".", label=head)
        ax.set_ylabel(LABELS[statistic], fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes:
        ax.grid(alpha=0.3)
        if first_at_bound is not None:
            ax.axvline(first_at_bound, color="grey", linestyle=":", linewidth=1)
    axes[-1].set_xlabel("optimizer step (dotted: the scale reaches its upper bound)")
    fig.suptitle(title or "the attention softmax while the bias scale pins", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run directory (or a folder above it) or its history .jsonl")
    p.add_argument("-o", "--out", default="attention_history.png")
    p.add_argument("--title")
    args = p.parse_args(argv)
    path = args.run if os.path.isfile(args.run) else find_history(args.run)
    data = load(path)
    if not any(data[s] for s in STATISTICS):
        print(f"{path} holds no attention statistics: record the run with ScaleMonitor(attention=True)",
              file=sys.stderr)
        return 1
    print(table(data))
    draw(data, args.out, args.title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
