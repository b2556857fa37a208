"""Per-head scales through the engine and its doors: element keys up to the cap, per-tensor
summaries beyond it, one-sided bounds in the loggers, alerts named by element index.

Real models: timm's Swin V2 (random init) in a plain loop with a SummaryWriter, and a
per-head AttentionBiasGenerator under a real Lightning Trainer with TensorBoard and CSV."""
from __future__ import annotations

import math
from typing import Any, Dict, List

import pytest
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import readback
from scalewatch.callbacks import ScaleMonitor, ScaleWatcher, metric_key
from scalewatch.monitor import AttentionBiasGenerator

LN100 = math.log(100)
PATTERN = "*.attn.logit_scale"
FORCED = "layers.0.blocks.0.attn.logit_scale"


@pytest.fixture(scope="module")
def swin_run(tmp_path_factory) -> Dict[str, Any]:
    import timm

    root = tmp_path_factory.mktemp("swin")
    torch.manual_seed(0)
    model = timm.create_model("swinv2_tiny_window8_256", pretrained=False, img_size=64, num_classes=4)
    with torch.no_grad():  # one head past the cap: Swin V2's clamp in forward cuts its gradient
        model.get_parameter(FORCED)[1] = LN100 + 0.5
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    writer = SummaryWriter(str(root))
    alerts: List[Any] = []
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    with ScaleWatcher(model, log_dir=root, every_n_steps=1, params={PATTERN: (None, LN100)}, tensorboard=writer,
                      plot=False) as watcher:
        for step in range(4):
            nn.functional.cross_entropy(model(images), labels).backward()
            alerts += watcher.step(step)
            opt.step()
            opt.zero_grad()
    writer.close()
    return dict(root=str(root), watcher=watcher, alerts=alerts)


def test_swin_v2_every_head_gets_its_own_keys_under_the_cap(swin_run):
    watcher = swin_run["watcher"]
    assert watcher.summarised == [] and len(watcher.names) == 138
    tags = set(readback.tensorboard_tags(swin_run["root"])["scalars"])
    for name in watcher.names:
        assert {metric_key(name, f) for f in ("scale", "raw", "grad", "max")} <= tags, name
    assert not any(t.endswith("/min") for t in tags)  # one-sided: no lower bound to log
    forced = readback.tensorboard_scalars(swin_run["root"], metric_key(f"{FORCED}[1]", "raw"))
    assert [s for s, _ in forced] == [0, 1, 2, 3] and all(v > LN100 for _, v in forced)
    assert len(readback.tensorboard_layout(swin_run["root"])["scalewatch"]) == 138


def test_swin_v2_pinned_head_is_named_by_index_and_alone(swin_run):
    # above 0.9 x max at once, pinned after patience (3) checks: that head only, no near_lower (no min)
    assert [(a.kind, a.name, a.step) for a in swin_run["alerts"]] == [("near_upper", f"{FORCED}[1]", 0),
                                                                      ("pinned", f"{FORCED}[1]", 2)]
    assert "Scale pinned at its bound! layers.0.blocks.0.attn.logit_scale[1] at step 2" in swin_run["alerts"][1].message
    hist = readback.history(swin_run["root"])
    assert len(hist) == 4 * 138
    assert {r["name"] for r in hist if r["alerts"]} == {f"{FORCED}[1]"}
    assert all(r["min"] is None and r["max"] == pytest.approx(LN100) for r in hist)


class PerHeadModel(nn.Module):
    """A per-head bias generator whose scales SGD drives up (as tests/models.DriftModel)."""

    def __init__(self, heads: int = 8) -> None:
        super().__init__()
        self.gen = AttentionBiasGenerator(bias_scale=2.5, min_scale=0.5, max_scale=5.0, num_heads=heads)

    def loss(self) -> torch.Tensor:
        ramp = torch.linspace(0.1, 1.0, self.gen.bias_scale.shape[0]).view(-1, 1, 1)  # head h pushed harder
        return -self.gen(ramp.expand(-1, 4, 4).unsqueeze(0)).float().mean()


def test_beyond_the_cap_each_tensor_is_logged_as_its_summary(tmp_path):
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = PerHeadModel(heads=8)

        def training_step(self, batch, batch_idx):
            return self.net.loss()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=2.0)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.zeros(64, 1), batch_size=1)

    tb, csv = TensorBoardLogger(str(tmp_path), name="tb"), CSVLogger(str(tmp_path), name="csv")
    monitor = ScaleMonitor(every_n_steps=2, max_logged_elements=4)
    pl.Trainer(max_steps=12, logger=[tb, csv], callbacks=[monitor], log_every_n_steps=2, enable_progress_bar=False,
               enable_model_summary=False, enable_checkpointing=False).fit(Module())
    hist = readback.history(tb.log_dir)
    assert len(hist) == 6 * 8 and hist[0]["name"] == "net.gen[0]" and hist[0]["tensor"] == "net.gen"
    tags = set(readback.tensorboard_tags(tb.log_dir)["scalars"])
    assert not any("[" in t for t in tags)  # no element keys beyond the cap
    summary = {f: readback.tensorboard_scalars(tb.log_dir, metric_key("net.gen", f))
               for f in ("scale_min", "scale_max", "near_upper", "pinned", "elements", "min", "max")}
    by_step: Dict[int, List[dict]] = {}
    for r in hist:
        by_step.setdefault(r["step"], []).append(r)
    for i, (step, rows) in enumerate(sorted(by_step.items())):
        assert summary["scale_min"][i] == (step, pytest.approx(min(r["scale"] for r in rows)))
        assert summary["scale_max"][i] == (step, pytest.approx(max(r["scale"] for r in rows)))
        assert summary["near_upper"][i] == (step, sum(r["scale"] > 4.5 for r in rows))
        assert summary["elements"][i] == (step, 8)
    assert summary["pinned"][-1][1] > 0  # the fastest heads went past max_scale and stopped there
    assert readback.csv_series(csv.log_dir, metric_key("net.gen", "scale_max"))[-1][1] == pytest.approx(5.0)
    chart = readback.tensorboard_layout(tb.log_dir)["scalewatch"]["net.gen (elements min..max)"]
    assert chart == [metric_key("net.gen", "scale_max"), metric_key("net.gen", "scale_min"),
                     metric_key("net.gen", "scale_max")]


def test_a_thousand_tensors_of_sixteen_heads_are_summarised_and_fully_recorded(tmp_path):
    model = nn.ModuleList(AttentionBiasGenerator(num_heads=16) for _ in range(1000))
    got: List[Dict[str, float]] = []

    class Keys:
        def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
            got.append(metrics)

    with ScaleWatcher(model, log_dir=tmp_path, every_n_steps=1, loggers=[Keys()], plot=False) as watcher:
        torch.stack([g(torch.ones(16, 2, 2)).float().mean() for g in model]).sum().backward()
        watcher.step(0)
    assert len(watcher.summarised) == 1000 and watcher.names == []
    assert len(got[0]) == 1000 * 11  # 9 summary fields + both bounds per tensor
    assert len(readback.history(str(tmp_path))) == 16_000


def test_a_large_watch_writes_on_a_thread_and_still_resumes_and_plots_in_order(tmp_path):
    model = nn.ModuleList(AttentionBiasGenerator(num_heads=16) for _ in range(256))  # 4096 values
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def train(watcher: ScaleWatcher, steps: range) -> None:
        for step in steps:
            torch.stack([g(torch.ones(16, 2, 2)).float().mean() for g in model]).sum().neg().backward()
            watcher.step(step)
            opt.step()
            opt.zero_grad()

    first = ScaleWatcher(model, log_dir=tmp_path, every_n_steps=1, max_plot_panels=2)
    train(first, range(3))
    assert first.history is not None and first.history._thread is not None  # the writer thread is in use
    saved = first.state_dict()  # at step 2
    train(first, range(3, 5))
    first.close()
    second = ScaleWatcher(model, log_dir=tmp_path, every_n_steps=1, max_plot_panels=2)
    second.load_state_dict(saved)
    with second:
        train(second, range(3, 6))
    steps = [r["step"] for r in readback.history(str(tmp_path))]
    assert steps == sorted(steps) and sorted(set(steps)) == list(range(6))
    assert all(steps.count(s) == 4096 for s in range(6))
    assert (tmp_path / "scale_history.png").exists()
