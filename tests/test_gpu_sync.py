"""On a GPU, ScaleMonitor's steps that are not check steps make no host-device synchronisation.

``torch.cuda.set_sync_debug_mode("error")`` turns every synchronising CUDA call (a
device-to-host read such as ``.item()`` / ``.cpu()``, a copy from pageable host
memory, an explicit synchronize) into a ``RuntimeError``. These tests switch it on
around the steps that are not check steps and train through them; the original
random-print approach, run the same way, raises. Skipped without CUDA. Nothing here
measures or asserts time.

How the guard is placed. Lightning itself synchronises in places (moving the
batch to the device, turning ``self.log``-ged values into numbers), so the guard
covers what scalewatch is answerable for, and nothing of Lightning's that is known
to sync:

* the whole-step test uses manual optimization and logs nothing: one guard
  callback first in ``callbacks`` switches the mode on in ``on_train_batch_start``
  (after the batch is on the device), one last switches it off in
  ``on_train_batch_end``; in between run every callback's hooks for the step
  (ScaleMonitor's included), the forward through the bias generator, the
  backward, and the optimizer step, inside which Lightning calls
  ``ScaleMonitor.on_before_optimizer_step``;
* the hooks-only test uses automatic optimization (with ``self.log("loss")``)
  and wraps each of ScaleMonitor's per-step hooks alone in the guard.

The first ``WARMUP`` steps run unguarded (CUDA context, cuBLAS handles, the
allocator's first blocks); check steps run unguarded too: a check reads all
scales in one transfer, which is a synchronisation by design, counted below.
"""
import contextlib
import json
import warnings

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from models import DriftModel
from scalewatch.callbacks import ScaleMonitor
from scalewatch.monitor import AttentionBiasGenerator, read_scales
from scalewatch.monitor.watched_scale import find_bounded_scales, watch_parameters

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

EVERY = 5
WARMUP = EVERY  # steps 0-4 unguarded, step 4 being the first check
STEPS = 4 * EVERY
NON_CHECK_AFTER_WARMUP = [s for s in range(WARMUP, STEPS) if (s + 1) % EVERY != 0]
CHECK_STEPS = [s for s in range(STEPS) if (s + 1) % EVERY == 0]
#: Callback hooks Lightning calls on every training step
PER_STEP_HOOKS = ("on_train_batch_start", "on_before_backward", "on_after_backward", "on_before_zero_grad",
                  "on_before_optimizer_step", "on_train_batch_end")


def is_check(step: int) -> bool:
    return (step + 1) % EVERY == 0


def guarded_step(step: int) -> bool:
    return step >= WARMUP and not is_check(step)


@pytest.fixture(autouse=True)
def _sync_debug_off_afterwards():
    yield
    if torch.cuda.is_available():
        torch.cuda.set_sync_debug_mode("default")


@contextlib.contextmanager
def sync_debug(mode):
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


class RandomPrintGenerator(AttentionBiasGenerator):
    """The approach ScaleMonitor replaces, as the original forward did it."""

    def forward(self, weights):
        if self.training and torch.rand(1).item() < 0.001:
            print(f"📊 Bias scale: {self.scale.item():.3f} (range: [{self.min_scale}, {self.max_scale}])")
            if self.scale.item() > 0.9 * self.max_scale:
                print("⚠️ Scale near upper bound!")
        return super().forward(weights)


@pytest.fixture
def print_fires(monkeypatch):
    """Make the original's 0.1% draw come up every time (its print branch runs)."""
    monkeypatch.setattr(torch, "rand", lambda *size, **kw: torch.zeros(*size, **kw))


class ManualStep(pl.LightningModule):
    """A bias generator trained with manual optimization, logging nothing."""

    def __init__(self, generator_cls=AttentionBiasGenerator):
        super().__init__()
        self.automatic_optimization = False
        self.proj = nn.Linear(8, 8)
        self.head = nn.Module()
        self.head.attention_bias_generator = generator_cls(bias_scale=2.5, min_scale=0.5, max_scale=5.0)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        weights = torch.tanh(self.proj(x)).unsqueeze(-2).expand(-1, 8, -1)  # [B, Q, K] in [-1, 1]
        loss = -self.head.attention_bias_generator(weights).float().mean()
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()  # Lightning calls ScaleMonitor.on_before_optimizer_step in here

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader():
    return DataLoader(TensorDataset(torch.randn(STEPS * 4, 8, generator=torch.Generator().manual_seed(0))),
                      batch_size=4)


class SyncGuard(Callback):
    """``role="open"``: switch sync debug mode to "error" at the start of a guarded step;
    ``role="close"``: back to default at its end. Put "open" first and "close" last."""

    def __init__(self, role, guarded):
        self.role = role
        self.guarded = guarded

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.role == "open" and guarded_step(trainer.global_step):
            torch.cuda.synchronize()  # nothing queued before the step is charged to it
            torch.cuda.set_sync_debug_mode("error")
            self.guarded.append(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.role == "close":
            torch.cuda.set_sync_debug_mode("default")

    def on_exception(self, trainer, pl_module, exception):
        torch.cuda.set_sync_debug_mode("default")  # let the teardown run normally


def cuda_trainer(root, callbacks, **kw):
    return pl.Trainer(accelerator="cuda", devices=1, max_steps=STEPS, default_root_dir=str(root), logger=False,
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      callbacks=callbacks, **kw)


def history_steps(monitor):
    with open(monitor.history_path, encoding="utf-8") as f:
        return [json.loads(line)["step"] for line in f if line.strip()]


def test_whole_non_check_steps_make_no_sync(tmp_path):
    guarded = []
    open_guard, close_guard = SyncGuard("open", guarded), SyncGuard("close", guarded)
    monitor = ScaleMonitor(every_n_steps=EVERY)
    trainer = cuda_trainer(tmp_path, [open_guard, monitor, close_guard])
    cbs = trainer.callbacks
    assert cbs.index(open_guard) < cbs.index(monitor) < cbs.index(close_guard)

    trainer.fit(ManualStep(), loader())  # raises RuntimeError if a guarded step synchronises

    assert guarded == NON_CHECK_AFTER_WARMUP  # 12 whole steps ran under "error"
    assert history_steps(monitor) == CHECK_STEPS  # and the monitor did read on every check step


def test_original_random_print_syncs_in_the_same_harness(tmp_path, print_fires):
    guarded = []
    trainer = cuda_trainer(tmp_path, [SyncGuard("open", guarded), SyncGuard("close", guarded)])
    with pytest.raises(RuntimeError, match="synchroniz"):
        trainer.fit(ManualStep(generator_cls=RandomPrintGenerator), loader())
    assert guarded == [WARMUP]  # the first guarded step already failed


def test_scale_monitor_hooks_make_no_sync_off_check_steps(tmp_path):
    """Automatic optimization, ``self.log`` on: each of ScaleMonitor's per-step hooks alone under the guard."""
    monitor = ScaleMonitor(every_n_steps=EVERY)
    guarded = []
    batch_step = {}

    def wrap(name):
        original = getattr(monitor, name)

        def hook(trainer, pl_module, *args, **kwargs):
            if name == "on_train_batch_start":
                batch_step["step"] = trainer.global_step  # on_train_batch_end sees it advanced
            step = batch_step["step"]
            if not guarded_step(step):
                return original(trainer, pl_module, *args, **kwargs)
            torch.cuda.synchronize()
            with sync_debug("error"):
                out = original(trainer, pl_module, *args, **kwargs)
            guarded.append((step, name))
            return out

        setattr(monitor, name, hook)

    for name in PER_STEP_HOOKS:
        wrap(name)
    trainer = cuda_trainer(tmp_path, [monitor], log_every_n_steps=EVERY)
    trainer.fit(DriftModel())

    assert sorted({s for s, _ in guarded}) == NON_CHECK_AFTER_WARMUP
    assert {n for _, n in guarded} == set(PER_STEP_HOOKS)
    assert history_steps(monitor) == CHECK_STEPS


def _cuda_scales(k):
    module = nn.Module()
    module.gens = nn.ModuleList(AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0)
                                for _ in range(k))
    module.logit_scale = nn.Parameter(torch.tensor(2.0))
    module = module.cuda()
    weights = torch.rand(2, 4, 4, device="cuda") * 2 - 1
    loss = torch.stack([g(weights).float().mean() for g in module.gens]).sum() + module.logit_scale
    loss.backward()
    return find_bounded_scales(module) + watch_parameters(module, {"logit_scale": (0.0, 4.6052)})


@pytest.mark.parametrize("k", [1, 8, 64])
def test_a_check_reads_every_scale_in_one_sync(k):
    scales = _cuda_scales(k)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with sync_debug("warn"):
            readings = read_scales(scales, step=0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(readings) == k + 1
    assert all(r.grad is not None and r.clamp_fraction is not None for r in readings[:k])
    assert len(syncs) == 1, [str(w.message) for w in syncs]


def test_original_print_syncs_when_it_fires(print_fires):
    gen = RandomPrintGenerator().cuda()
    weights = torch.rand(2, 4, 4, device="cuda")
    torch.cuda.synchronize()
    with sync_debug("error"), pytest.raises(RuntimeError, match="synchroniz"):
        gen(weights)


def test_original_draw_syncs_every_forward_when_the_default_device_is_cuda():
    gen = RandomPrintGenerator().cuda()
    weights = torch.rand(2, 4, 4, device="cuda")
    torch.cuda.synchronize()
    with torch.device("cuda"), sync_debug("error"), pytest.raises(RuntimeError, match="synchroniz"):
        gen(weights)  # torch.rand(1) is a CUDA tensor here: its .item() waits for the device


def test_original_draw_alone_is_a_host_op_with_the_default_cpu_device(monkeypatch):
    """What the original costs when its print does not fire: ``torch.rand(1)`` lives on the
    host by default, so ``.item()`` of it does not touch the GPU. The original syncs on the
    0.1% of forwards where it prints (above), or on every forward where the default device
    is CUDA (above); this pins down that the draw itself is not the sync."""
    monkeypatch.setattr(torch, "rand", lambda *size, **kw: torch.ones(*size, **kw))  # never fires
    gen = RandomPrintGenerator().cuda()
    weights = torch.rand(2, 4, 4, device="cuda")
    torch.cuda.synchronize()
    with sync_debug("error"):
        gen(weights)
