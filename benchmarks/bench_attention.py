"""What ``attention=True`` costs: ViT-tiny and BERT-tiny training steps, against the same loop without it.

Models (timm and HF Transformers from configs, no download; AdamW):

    vit-tiny      timm ``vit_tiny_patch16_224``'s architecture (12 blocks, 192 wide, 3 heads) on
                  64x64 images (17 tokens), batch 8, ``F.scaled_dot_product_attention`` (timm's
                  fused path): attention calls so small that per-call and per-check costs dominate
    vit-tiny-224  the same at its own 224x224 input (197 tokens), batch 2
    bert-tiny     HF ``BertForSequenceClassification`` with BERT-tiny's config (2 layers, 128 wide,
                  2 heads, 512 MLP), ``attn_implementation="sdpa"``, 128 tokens, a padding mask, batch 8

Method. Per model, one plain loop runs blocks of 50 steps ``W B W B ... W B`` after an untimed
warm-up block: in ``W`` blocks ``watcher.step(step)`` is called, the watcher being
``ScaleWatcher(model, every_n_steps=50, attention=True)`` with a history file; ``B`` blocks
never call it, so they do no monitoring work of any kind. 50 is the watcher's period: each
``W`` block holds exactly one check, and the step before it (which arms the interception for
the check step's forwards) is in the same block. A block's time is its mean step time (CPU time
of this process on a CPU, wall time on a GPU); a ``W`` block's ratio is over the mean of the two
``B`` blocks on either side; min / median / max over rounds, a bootstrap 95% interval of the median.

The check step's extra cost is taken apart directly, outside the loop, over repeated interleaved
training steps on the same batch (forward, backward, AdamW step): the forward of a check step
(interception armed, each call's inputs kept) less a plain step's forward, plus the engine's
check after the backward, where a loop calls it (the statistics computed in batched passes,
read, the history lines); on a CPU in this thread's CPU time (one torch thread),
so that other processes on the machine do not count. It is given as a multiple of one attention forward (the
time of the forward's ``scaled_dot_product_attention`` calls, the work the statistics look at)
and of the model's whole forward; the 1.5x target is read on the models at their own input sizes
(``AT_OWN_SIZE``), vit-tiny's 17-token calls being reported as the case of small calls, where
fixed per-call and per-check costs outweigh the attention's arithmetic. Extra memory on a check step: the peak of the bytes the
statistics' own tensor operations hold at once over the armed forward and the check (the batched
logits and per-head sums: an op log of the allocations they return, their kernels' scratch aside;
the kept inputs are the tensors autograd holds for the backward anyway), measured from a fresh
workspace, so its buffers count; on a CPU those buffers (the stacked inputs, logits and
probabilities of one pass, at most 8 MiB) are kept from one check to the next, and that part
is reported too; on a GPU also ``max_memory_allocated`` of an armed
forward less a disarmed one.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from benchmarks.common import PERIOD, LiveBytes, StepClock, WatcherBlocks, neighbour_ratios, quiet, ratio_row, ratio_table, with_in_hook
from scalewatch.callbacks import ScaleWatcher
from scalewatch.monitor.attention_stats import is_computing

VARIANT = "attention_n50"
#: median step-time ratio of attention=True (N=50) to the loop without it
TARGET_RATIO = 1.02
#: the check step's extra cost, in attention forwards
TARGET_CHECK_X = 1.5
#: the models at their own input sizes, which the check-cost target is read on; vit-tiny's 17-token
#: calls (1.5 ms of attention a forward) measure the fixed per-call and per-check costs instead
AT_OWN_SIZE = ("vit-tiny-224", "bert-tiny")
COMPARISON = "one plain loop per model, watcher.step called per 50-step block"


def _vit(device: torch.device, size: int, batch: int) -> Tuple[torch.nn.Module, Callable[[], torch.Tensor], str]:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=size).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return model, lambda: F.cross_entropy(model(x), y), \
        f"timm vit_tiny_patch16_224 (12x192, 3 heads), {size}x{size} images, batch {batch}"


def vit_tiny(device: torch.device) -> Tuple[torch.nn.Module, Callable[[], torch.Tensor], str]:
    return _vit(device, 64, 8)


def vit_tiny_224(device: torch.device) -> Tuple[torch.nn.Module, Callable[[], torch.Tensor], str]:
    return _vit(device, 224, 2)


def bert_tiny(device: torch.device) -> Tuple[torch.nn.Module, Callable[[], torch.Tensor], str]:
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=512, vocab_size=30522, attn_implementation="sdpa")
    model = transformers.BertForSequenceClassification(config).to(device)
    ids = torch.randint(0, 30522, (8, 128), device=device)
    mask = torch.ones(8, 128, dtype=torch.long, device=device)
    mask[4:, 100:] = 0  # padded keys
    labels = torch.randint(0, 2, (8,), device=device)
    return model, lambda: model(input_ids=ids, attention_mask=mask, labels=labels).loss, \
        "HF BertForSequenceClassification, BERT-tiny config (2x128, 2 heads), sdpa, 128 tokens"


MODELS: Dict[str, Callable[[torch.device], Tuple[torch.nn.Module, Callable[[], torch.Tensor], str]]] = {
    "vit-tiny": vit_tiny, "vit-tiny-224": vit_tiny_224, "bert-tiny": bert_tiny}


def run_loop(build: Callable[..., Any], rounds: int, device: torch.device, root: str) -> Dict[str, Any]:
    """One loop of ``W`` (warm-up) + ``rounds`` x ``B W`` + ``B`` blocks of 50 steps; per-block times."""
    plan = WatcherBlocks(rounds, VARIANT)
    model, loss_of, _ = build(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    watcher = ScaleWatcher(model, log_dir=root, every_n_steps=PERIOD, attention=True, plot=False)
    clock = StepClock(warmup=PERIOD)
    for step in range(plan.steps):
        clock.tick(device)
        loss_of().backward()
        if plan.calls(step):
            plan.step(watcher, step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    watcher.close()
    plan.check(watcher)
    if not watcher.last_readings:
        raise RuntimeError("the last check recorded no attention statistic")
    blocks = plan.blocks(clock)
    return {"blocks": blocks, "ratios": neighbour_ratios(blocks, [VARIANT]),
            "in_hook": {"hook_s_per_step": plan.hook_s_per_step(), "checks": watcher.checks},
            "values_per_check": len(watcher.last_readings)}


def _clock(device: torch.device) -> Callable[[], float]:
    """Wall time on a GPU; on a CPU this thread's CPU time (one torch thread: the work itself, not the
    other processes sharing the machine)."""
    return time.perf_counter if device.type == "cuda" else time.thread_time


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    clock = _clock(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = clock()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - t0


def check_cost(build: Callable[..., Any], device: torch.device, root: str, reps: int) -> Dict[str, Any]:
    """The check step's extra work, taken apart: armed forward - disarmed forward, plus the check itself."""
    model, loss_of, _ = build(device)
    watcher = ScaleWatcher(model, log_dir=root, every_n_steps=1, attention=True, plot=False)
    watch = watcher.attention
    assert watch is not None
    sdpa = F.scaled_dot_product_attention
    in_sdpa = [0.0]

    clock = _clock(device)

    def timed_sdpa(*args: Any, **kwargs: Any) -> torch.Tensor:
        t0 = clock()
        out = sdpa(*args, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        in_sdpa[0] += clock() - t0
        return out

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    plain, armed, attention, check = [], [], [], []
    watcher.start(0)
    watch.arm(False)

    def forward(timed: List[float]) -> torch.Tensor:
        loss: List[torch.Tensor] = []
        timed.append(_timed(lambda: loss.append(loss_of()), device))
        return loss[0]

    def optimizer_step() -> None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for rep in range(reps + 1):
        in_sdpa[0] = 0.0
        F.scaled_dot_product_attention = timed_sdpa
        try:
            loss = loss_of()  # its attention calls' time alone
        finally:
            F.scaled_dot_product_attention = sdpa
        attention.append(in_sdpa[0])
        loss.backward()  # a whole step: each timed forward below comes after an optimizer step, as in a loop
        optimizer_step()
        # a training step without the watch, then a check step with it: forward, backward, the
        # check where a loop makes it (after the backward, before the optimizer step), step
        forward(plain).backward()
        optimizer_step()
        watch.arm(True)
        loss = forward(armed)
        watch.arm(False)
        loss.backward()
        check.append(_timed(lambda: watcher.step(rep), device))
        optimizer_step()
    plain, armed, attention, check = plain[1:], armed[1:], attention[1:], check[1:]  # the first: a warm-up
    watcher.close()
    extra_fwd = statistics.median(a - p for a, p in zip(armed, plain))
    extra = extra_fwd + statistics.median(check)
    memory = LiveBytes(counts=is_computing)
    watch.arm(True)
    with memory:  # the armed forward and the check's batched pass
        loss_of()
        watch.arm(False)
        watch.collect()
    kept = watch.workspace.nbytes  # held from one check to the next (on a CPU), counted in the peak above
    cuda_extra = None
    if device.type == "cuda":
        peaks = []
        for on in (False, True):
            watch.arm(on)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            loss_of()
            peaks.append(torch.cuda.max_memory_allocated(device) - base)
            watch.arm(False)
        cuda_extra = peaks[1] - peaks[0]
    fwd, att = statistics.median(plain), statistics.median(attention)
    return {"forward_ms": fwd * 1e3, "attention_ms": att * 1e3, "armed_forward_extra_ms": extra_fwd * 1e3,
            "check_ms": statistics.median(check) * 1e3, "extra_ms": extra * 1e3,
            "x_attention_forward": extra / att, "x_model_forward": extra / fwd,
            "statistics_peak_mib": memory.peak / 2 ** 20, "workspace_kept_mib": kept / 2 ** 20,
            "cuda_extra_peak_mib": None if cuda_extra is None else cuda_extra / 2 ** 20, "reps": reps}


def run(rounds: int = 12, reps: int = 15, accelerator: str = "auto", models: Tuple[str, ...] = tuple(MODELS),
        log: Callable[[str], None] = print) -> Dict[str, Any]:
    quiet()
    started = time.perf_counter()
    device = torch.device("cuda" if accelerator in ("gpu", "cuda") or (accelerator == "auto"
                                                                       and torch.cuda.is_available()) else "cpu")
    primary = "wall" if device.type == "cuda" else "cpu"
    rows: List[Dict[str, Any]] = []
    checks: Dict[str, Any] = {}
    descriptions: Dict[str, str] = {}
    import importlib.util

    for name in models:
        needs = "transformers" if name.startswith("bert") else "timm"
        if importlib.util.find_spec(needs) is None:
            log(f"  {name}: skipped, {needs} is not installed")
            continue
        build = MODELS[name]
        descriptions[name] = build(torch.device("cpu"))[2]
        log(f"  {name}: {rounds} rounds of baseline / attention=True blocks on {device.type} ...")
        with tempfile.TemporaryDirectory(prefix="scalewatch-bench-attention-") as root:
            one = run_loop(build, rounds, device, root)
            checks[name] = dict(check_cost(build, device, os.path.join(root, "cost"), reps),
                                values_per_check=one["values_per_check"])
        base = [b for b in one["blocks"] if b["variant"] == "baseline"]
        mine = [b for b in one["blocks"] if b["variant"] == VARIANT]
        base_wall_ms = statistics.median(b["wall"] for b in base) * 1e3
        comparison = f"{name}: {COMPARISON}"
        rows.append(ratio_row("baseline", f"{name}, no monitoring (baseline)", comparison, base, None, len(base)))
        rows.append(with_in_hook(ratio_row(VARIANT, f"{name}, ScaleWatcher(every_n_steps=50, attention=True)",
                                           comparison, mine, one["ratios"], len(mine)), one["in_hook"], base_wall_ms))
    worst = max(r[f"{primary}_ratio"]["median"] for r in rows if r["variant"] == VARIANT)
    own_size = [c["x_attention_forward"] for n, c in checks.items() if n in AT_OWN_SIZE]
    worst_x = max(own_size) if own_size else max(c["x_attention_forward"] for c in checks.values())
    small_calls = [f"{n} {c['x_attention_forward']:.2f}x" for n, c in checks.items() if n not in AT_OWN_SIZE]
    over = "at its own input size" if own_size else "small calls only"
    return {"benchmark": "attention", "primary_metric": primary, "rows": rows, "checks": checks,
            "method": __doc__.split("Method.", 1)[1].strip(),
            "config": {"rounds": rounds, "block_steps": PERIOD, "reps": reps, "models": descriptions,
                       "device": device.type},
            "target": {"what": f"attention=True (N=50) / the same loop without it, median {primary}-time ratio "
                               "(worst model)", "limit": TARGET_RATIO, "value": worst, "met": worst <= TARGET_RATIO},
            "extra_targets": [{"what": "attention=True: a check step's extra cost in attention forwards (worst model "
                                       f"{over}" + (f"; small calls: {', '.join(small_calls)}"
                                                    if small_calls and own_size else "") + ")",
                               "limit": TARGET_CHECK_X, "value": worst_x, "met": worst_x <= TARGET_CHECK_X}],
            "wall_s": time.perf_counter() - started}


def format_table(result: Dict[str, Any]) -> str:
    lines = [ratio_table(result, hook_column="in step()"), "",
             "| model | forward ms | its attention ms | check step extra ms (armed forward + check) "
             "| x attention forward | x model forward | statistics peak MiB (of which kept between checks) "
             "| values per check |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, c in result["checks"].items():
        mem = f"{c['statistics_peak_mib']:.2f} ({c.get('workspace_kept_mib', 0.0):.2f})"
        if c.get("cuda_extra_peak_mib") is not None:
            mem += f" (CUDA {c['cuda_extra_peak_mib']:.2f})"
        lines.append(f"| {name} | {c['forward_ms']:.2f} | {c['attention_ms']:.2f} | {c['extra_ms']:.2f} "
                     f"({c['armed_forward_extra_ms']:.2f} + {c['check_ms']:.2f}) | {c['x_attention_forward']:.2f} "
                     f"| {c['x_model_forward']:.3f} | {mem} | {c['values_per_check']} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    from benchmarks.common import report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=12, help="rounds (one baseline and one watcher block each)")
    p.add_argument("--reps", type=int, default=15, help="repetitions of the check-cost measurement")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args.rounds, args.reps, args.accelerator, tuple(args.models))
    return report(result, "attention=True: overhead per optimizer step and per check", format_table(result), args.json)


if __name__ == "__main__":
    sys.exit(main())
