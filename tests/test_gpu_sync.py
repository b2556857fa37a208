"""On a GPU, scalewatch's front doors force no host-device synchronisation off check steps, and a check one.

``torch.cuda.set_sync_debug_mode`` makes every synchronising CUDA call (a device-to-host
read such as ``.item()`` / ``.cpu()``, a copy from pageable host memory, an explicit
synchronize) warn (``"warn"``) or raise (``"error"``). Skipped whole without CUDA; nothing
here measures or asserts time.

Every door (``door_harness.DOORS``: plain-loop ScaleWatcher, Lightning under both
packages, the HF Transformers Trainer, the mmengine Runner)
  trains the same seeded 7 optimizer steps on CUDA without the door and with it
  (every_n_steps=3), after one unrecorded warm-up run, under the op logs of
  ``test_off_check_silence.py`` and with sync debug mode on "warn", the warnings counted
  per optimizer step. The trainers synchronise by themselves (Lightning and HF turn logged
  losses into numbers, HF checks every loss for NaN, mmengine calls ``.item()`` on every
  iteration's loss), the same in both runs; so the door is held to the difference:

* ``test_off_check_steps_make_no_sync``: off check steps the door adds no synchronisation,
  no host read and no ATen operation at all;
* ``test_a_check_synchronises_once``: a check step adds exactly one synchronisation, one
  gather, one ``aten._to_copy`` to the host, the clamp-fraction statistic in the forward,
  nothing else.

Where nothing else in the step synchronises, whole steps run under ``"error"``:
``test_plain_loop_steps_run_under_sync_error_mode`` (a plain loop: every step between
checks, and each check step but the read, which synchronises once) and
``test_lightning_manual_steps_run_under_sync_error_mode`` (Lightning with manual
optimization, logging nothing, both packages). ``test_a_check_reads_every_scale_in_one_sync``
reads 2 to 65 scales in one synchronisation.

The ``test_reference_*`` tests are not tests of scalewatch: they pin down what the seed's
random print (the approach scalewatch replaces) costs, for the README's comparison.
"""
from __future__ import annotations

import contextlib
import json
import warnings
from typing import Iterator, List

import pytest
import torch
from torch import nn

from door_harness import (KNOWN_CHECK_STEP_BUGS, SYNC_WARNING, Door, DoorRun, PlainDrift, Verdicts,
                          door_params)
from models import LIGHTNING_PACKAGES
from scalewatch.monitor import AttentionBiasGenerator, read_scales
from scalewatch.monitor.watched_scale import find_bounded_scales, watch_parameters

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

EVERY_N = 3
STEPS = 7


@pytest.fixture(autouse=True)
def _sync_debug_off_afterwards() -> Iterator[None]:
    yield
    if torch.cuda.is_available():
        torch.cuda.set_sync_debug_mode("default")


@contextlib.contextmanager
def sync_debug(mode: str) -> Iterator[None]:
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


@contextlib.contextmanager
def counted_syncs() -> Iterator[List[str]]:
    """Sync debug mode "warn" with the synchronisations' warnings collected in the list yielded."""
    found: List[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with sync_debug("warn"):
            yield found
    found.extend(str(w.message) for w in caught if SYNC_WARNING in str(w.message))


def _report(problems: List[str]) -> str:
    return "\n".join(problems)


# ---- every door, against the same training without it ------------------------------------

@pytest.fixture(scope="module")
def verdicts(tmp_path_factory) -> Verdicts:
    return Verdicts(tmp_path_factory.mktemp, "cuda", EVERY_N, STEPS)


def test_the_recorder_sees_a_sync_in_its_step(tmp_path) -> None:
    """The harness's per-step sync count works here (else the door tests below prove nothing)."""
    run = DoorRun("probe", False, 1, 3, "cuda", tmp_path)
    p = nn.Parameter(torch.ones((), device="cuda"))
    opt = torch.optim.SGD([p], lr=0.1)
    with run.record():
        for k in range(3):
            (p * 2).backward()
            if k == 1:
                p.grad.item()
            opt.step()
            opt.zero_grad()
    assert [s.syncs for s in run.recorded] == [0, 1, 0]
    assert [s.host for s in run.recorded] == [[], ["torch.Tensor.item"], []]


@pytest.mark.parametrize("door", door_params())
def test_off_check_steps_make_no_sync(door: Door, verdicts: Verdicts) -> None:
    verdict = verdicts(door)
    assert not verdict.schedule, _report(verdict.schedule)
    assert not verdict.off_check, _report(verdict.off_check)


@pytest.mark.parametrize("door", door_params(known_bugs=KNOWN_CHECK_STEP_BUGS))
def test_a_check_synchronises_once(door: Door, verdicts: Verdicts) -> None:
    verdict = verdicts(door)
    assert not verdict.schedule, _report(verdict.schedule)
    assert not verdict.check, _report(verdict.check)


# ---- whole steps under "error" where nothing else synchronises ---------------------------

EVERY = 5
WARMUP = EVERY  # steps 0-4 unguarded (CUDA context, cuBLAS handles, first blocks), step 4 the first check
GUARDED_STEPS = 4 * EVERY


def is_check(step: int) -> bool:
    return (step + 1) % EVERY == 0


def history_steps(path: str) -> List[int]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["step"] for line in f if line.strip()]


def test_plain_loop_steps_run_under_sync_error_mode(tmp_path) -> None:
    """ScaleWatcher in a plain loop: after the warm-up, every step runs under "error" but a
    check's ``watcher.step``, which synchronises exactly once (its one transfer)."""
    from scalewatch.callbacks import ScaleWatcher

    torch.manual_seed(0)
    model = PlainDrift().cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = torch.randn(GUARDED_STEPS, 4, 8).cuda()  # on the device before: no pageable copies in a step
    watcher = ScaleWatcher(model, log_dir=tmp_path, every_n_steps=EVERY, plot=False)
    guarded, reads = [], []
    for step in range(GUARDED_STEPS):
        mode = "default" if step < WARMUP else "error"
        torch.cuda.synchronize()
        with sync_debug(mode):  # the forward of a check step computes the clamp fraction: on the device
            model(batches[step]).backward()
        if is_check(step) and step >= WARMUP:
            with counted_syncs() as syncs:
                watcher.step(step)
            reads.append(len(syncs))
        else:
            with sync_debug(mode):
                watcher.step(step)
        with sync_debug(mode):
            opt.step()
            opt.zero_grad()
        if mode == "error":
            guarded.append(step)
    watcher.close()
    assert guarded == list(range(WARMUP, GUARDED_STEPS))
    assert reads == [1, 1, 1]  # steps 9, 14, 19: one transfer each
    assert history_steps(watcher.history_path) == [s for s in range(GUARDED_STEPS) if is_check(s)]


def _manual_step_module(package: str) -> type:
    import importlib

    base = importlib.import_module(package).LightningModule

    class ManualStep(base):  # type: ignore[misc, valid-type]
        """A bias generator trained with manual optimization, logging nothing."""

        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.proj = nn.Linear(8, 8)
            self.head = nn.Module()
            self.head.attention_bias_generator = AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0)

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

    return ManualStep


@pytest.mark.parametrize("package", LIGHTNING_PACKAGES)
def test_lightning_manual_steps_run_under_sync_error_mode(tmp_path, package: str) -> None:
    """ScaleMonitor under Lightning: one guard callback first in ``callbacks`` switches "error"
    on in ``on_train_batch_start`` (after the batch is on the device), one last switches it off
    in ``on_train_batch_end``; in between run every callback's hooks for the step (ScaleMonitor's
    included), the forward through the bias generator, the backward and the optimizer step,
    inside which Lightning calls ``ScaleMonitor.on_before_optimizer_step``. Check steps and the
    warm-up run unguarded."""
    from torch.utils.data import DataLoader, TensorDataset

    from scalewatch.callbacks import ScaleMonitor

    pl = pytest.importorskip(package)
    guarded: List[int] = []

    class SyncGuard(pl.Callback):
        def __init__(self, role: str) -> None:
            self.role = role

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            step = trainer.global_step
            if self.role == "open" and step >= WARMUP and not is_check(step):
                torch.cuda.synchronize()  # nothing queued before the step is charged to it
                torch.cuda.set_sync_debug_mode("error")
                guarded.append(step)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.role == "close":
                torch.cuda.set_sync_debug_mode("default")

        def on_exception(self, trainer, pl_module, exception):
            torch.cuda.set_sync_debug_mode("default")  # let the teardown run normally

    monitor = ScaleMonitor(every_n_steps=EVERY, plot=False)
    open_guard, close_guard = SyncGuard("open"), SyncGuard("close")
    trainer = pl.Trainer(accelerator="cuda", devices=1, max_steps=GUARDED_STEPS, default_root_dir=str(tmp_path),
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, callbacks=[open_guard, monitor, close_guard])
    cbs = trainer.callbacks
    assert cbs.index(open_guard) < cbs.index(monitor) < cbs.index(close_guard)
    data = torch.randn(GUARDED_STEPS * 4, 8, generator=torch.Generator().manual_seed(0))

    trainer.fit(_manual_step_module(package)(), DataLoader(TensorDataset(data), batch_size=4))

    assert guarded == [s for s in range(WARMUP, GUARDED_STEPS) if not is_check(s)]  # 12 whole steps
    assert history_steps(monitor.history_path) == [s for s in range(GUARDED_STEPS) if is_check(s)]


def _cuda_scales(k: int):
    module = nn.Module()
    module.gens = nn.ModuleList(AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0)
                                for _ in range(k))
    module.logit_scale = nn.Parameter(torch.tensor(2.0))
    module = module.cuda()
    for g in module.gens:
        g.track_clamp_fraction = True  # as on a check step's forward
    weights = torch.rand(2, 4, 4, device="cuda") * 2 - 1
    loss = torch.stack([g(weights).float().mean() for g in module.gens]).sum() + module.logit_scale
    loss.backward()
    return find_bounded_scales(module) + watch_parameters(module, {"logit_scale": (0.0, 4.6052)})


@pytest.mark.parametrize("k", [1, 8, 64])
def test_a_check_reads_every_scale_in_one_sync(k: int) -> None:
    scales = _cuda_scales(k)
    torch.cuda.synchronize()
    with counted_syncs() as syncs:
        readings = read_scales(scales, step=0)
    assert len(readings) == k + 1
    assert all(r.grad is not None and r.clamp_fraction is not None for r in readings[:k])
    assert len(syncs) == 1, syncs


# ---- reference: the seed's random print, not scalewatch ------------------------------------

class RandomPrintGenerator(AttentionBiasGenerator):
    """REFERENCE ONLY: the approach scalewatch replaces, as the seed's forward did it."""

    def forward(self, weights):
        if self.training and torch.rand(1).item() < 0.001:
            print(f"📊 Bias scale: {self.scale.item():.3f} (range: [{self.min_scale}, {self.max_scale}])")
            if self.scale.item() > 0.9 * self.max_scale:
                print("⚠️ Scale near upper bound!")
        return super().forward(weights)


def test_reference_seed_print_syncs_when_it_fires(monkeypatch) -> None:
    monkeypatch.setattr(torch, "rand", lambda *size, **kw: torch.zeros(*size, **kw))  # the 0.1% draw hits
    gen = RandomPrintGenerator().cuda()
    weights = torch.rand(2, 4, 4, device="cuda")
    torch.cuda.synchronize()
    with sync_debug("error"), pytest.raises(RuntimeError, match="synchroniz"):
        gen(weights)


def test_reference_seed_draw_syncs_every_forward_when_the_default_device_is_cuda() -> None:
    gen = RandomPrintGenerator().cuda()
    weights = torch.rand(2, 4, 4, device="cuda")
    torch.cuda.synchronize()
    with torch.device("cuda"), sync_debug("error"), pytest.raises(RuntimeError, match="synchroniz"):
        gen(weights)  # torch.rand(1) is a CUDA tensor here: its .item() waits for the device


def test_reference_seed_draw_alone_is_a_host_op_with_the_default_cpu_device(monkeypatch) -> None:
    """With the default CPU device ``torch.rand(1)`` lives on the host: when the print does not
    fire, the draw's ``.item()`` does not touch the GPU."""
    monkeypatch.setattr(torch, "rand", lambda *size, **kw: torch.ones(*size, **kw))  # never fires
    gen = RandomPrintGenerator().cuda()
    weights = torch.rand(2, 4, 4, device="cuda")
    torch.cuda.synchronize()
    with sync_debug("error"):
        gen(weights)
