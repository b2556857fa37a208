"""A plain PyTorch loop, open_clip style, watched by ScaleWatcher: no Lightning anywhere.

A small open_clip ``CLIP`` (built from a config dict in code, random init, nothing
downloaded) learns to match synthetic image/text pairs with open_clip's own
``ClipLoss``. As in open_clip's training script, ``logit_scale`` (ln of the softmax
temperature) is clamped in place after every step: ``logit_scale.clamp_(0, ln 100)``.
Matched pairs always reward a sharper softmax, so the optimizer keeps pushing the
scale up; once the clamp holds it at ln 100 every update is undone, and ScaleWatcher
reports it ``pinned``.

People read ``logit_scale`` as the temperature exp(value), 100 at the cap, so it is
watched with ``display="exp"``: report, plot and watch show exp(value) and the
bounds as [1, 100], while readings, alerts, the raw value and its gradient stay in
the ln units the optimizer sees.

    python examples/plain_loop.py --log-dir runs/clip              # TensorBoard + history + PNG
    python examples/plain_loop.py --log-dir runs/clip --grad-scaler --checkpoint runs/clip/ckpt.pt
    scalewatch report runs/clip

The run leaves, in ``--log-dir``: ``scalewatch_history.jsonl``, ``scale_history.png``,
TensorBoard events (``tensorboard --logdir runs/clip``) and, with ``--wandb``, an
offline W&B run under ``wandb/``. ``--checkpoint`` saves model, optimizer and the
watcher's position at the end and resumes from them if the file exists, so a second
invocation continues the same record.
"""
from __future__ import annotations

import argparse
import math
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import open_clip
import torch
from open_clip.loss import ClipLoss
from torch.utils.tensorboard import SummaryWriter

from scalewatch.callbacks import ScaleWatcher
from scalewatch.monitor import ScaleSpec
from scalewatch.monitor.saturation import Alert

#: open_clip's cap on the temperature: exp(logit_scale) <= 100
LOGIT_SCALE_MAX = math.log(100)

#: a CLIP small enough to train on a CPU in seconds (the dict format of open_clip's model configs)
TINY_CLIP: Dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def build_model(seed: int = 0) -> open_clip.CLIP:
    torch.manual_seed(seed)
    return open_clip.CLIP(**TINY_CLIP)


def pairs(seed: int, batch_size: int, classes: int = 16) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches of (image, caption) pairs: each class has its own image pattern and caption."""
    g = torch.Generator().manual_seed(seed)
    size = TINY_CLIP["vision_cfg"]["image_size"]
    ctx = TINY_CLIP["text_cfg"]["context_length"]
    patterns = torch.randn(classes, 3, size, size, generator=g)
    captions = torch.randint(1, TINY_CLIP["text_cfg"]["vocab_size"], (classes, ctx), generator=g)
    while True:
        idx = torch.randperm(classes, generator=g)[:batch_size]
        images = patterns[idx] + 0.1 * torch.randn(len(idx), 3, size, size, generator=g)
        yield images, captions[idx]


def make_optimizer(model: torch.nn.Module, lr: float, logit_scale_lr: float) -> torch.optim.Optimizer:
    # open_clip trains logit_scale without weight decay; a faster LR makes it reach the cap in a short run
    rest = [p for n, p in model.named_parameters() if n != "logit_scale"]
    return torch.optim.AdamW([{"params": rest, "lr": lr, "weight_decay": 0.1},
                              {"params": [model.logit_scale], "lr": logit_scale_lr, "weight_decay": 0.0}],
                             betas=(0.9, 0.98), eps=1e-6)  # open_clip's ViT settings


def train(log_dir: str, steps: int = 120, every_n_steps: int = 10, batch_size: int = 16, lr: float = 1e-3,
          logit_scale_lr: float = 0.3, grad_scaler: bool = False, tensorboard: bool = True,
          wandb_run: Any = None, checkpoint: Optional[str] = None, seed: int = 0,
          alert_callback: Any = None, stop_after: Optional[int] = None) -> Dict[str, Any]:
    """Train the tiny CLIP for ``steps`` optimizer steps under a ScaleWatcher; return what happened.

    ``stop_after`` ends the loop after that many steps of this call (as a crash would),
    saving the checkpoint first, so a second call resumes it.
    """
    model = build_model(seed)
    opt = make_optimizer(model, lr, logit_scale_lr)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, enabled=grad_scaler)
    loss_fn = ClipLoss()
    start = 0
    state: Optional[Dict[str, Any]] = None
    if checkpoint and os.path.exists(checkpoint):
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start = state["step"]
    writer = SummaryWriter(log_dir) if tensorboard else None
    alerts: List[Alert] = []
    watcher = ScaleWatcher(model, log_dir=log_dir, every_n_steps=every_n_steps,
                           params={"logit_scale": ScaleSpec(min=0.0, max=LOGIT_SCALE_MAX, display="exp")},
                           tensorboard=writer, wandb_run=wandb_run,
                           alert_callback=alert_callback, grad_scaler=scaler)
    if state is not None:
        watcher.load_state_dict(state["watcher"])
    data = pairs(seed + start, batch_size)
    step = start
    with watcher:
        for step in range(start, steps):
            if stop_after is not None and step - start >= stop_after:
                break
            images, texts = next(data)
            image_features, text_features, scale = model(images, texts)
            loss = loss_fn(image_features, text_features, scale)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)                 # the watcher reads the gradient the optimizer will use
            alerts += watcher.step(step)         # before the optimizer step; [] off check steps
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():                # open_clip's clamp, after the step
                model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
            if writer is not None and (step + 1) % every_n_steps == 0:
                writer.add_scalar("train/loss", loss.item(), step)
            if watcher.should_stop:
                break
        else:
            step = steps
    if checkpoint:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                    "watcher": watcher.state_dict(), "step": step}, checkpoint)
    if writer is not None:
        writer.close()
    return {"watcher": watcher, "alerts": alerts, "model": model, "steps_done": step}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--log-dir", default="runs/clip")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--every-n-steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--logit-scale-lr", type=float, default=0.3)
    p.add_argument("--grad-scaler", action="store_true", help="scale the loss with a GradScaler (unscaled before reading)")
    p.add_argument("--wandb", action="store_true", help="also log to an offline W&B run in --log-dir")
    p.add_argument("--checkpoint", help="save here at the end; resume from it when it exists")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    run = None
    if args.wandb:
        import wandb

        run = wandb.init(project="scalewatch-plain-loop", dir=args.log_dir, mode="offline")
    out = train(args.log_dir, steps=args.steps, every_n_steps=args.every_n_steps, batch_size=args.batch_size,
                lr=args.lr, logit_scale_lr=args.logit_scale_lr, grad_scaler=args.grad_scaler, wandb_run=run,
                checkpoint=args.checkpoint, seed=args.seed)
    if run is not None:
        run.finish()
    w = out["watcher"]
    print(f"trained to step {out['steps_done']}; {w.checks} readings in {w.history_path}; plot {w.plot_path}")
    for a in out["alerts"]:
        print(f"  step {a.step}: {a.kind} {a.name} (exp(logit_scale) = {math.exp(a.scale):.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
