"""Watching real-world scales: name patterns, one-sided bounds, element-wise tensors, display, summaries.

The models are real: timm's Swin V2 (per-head ``logit_scale`` of shape (heads, 1, 1),
clamped only from above at ln 100, in forward) and an open_clip ``CLIP`` (a scalar
``logit_scale`` clamped in place after the step). Random init, nothing downloaded.
"""
import collections
import copy
import json
import math
import random
import re

import open_clip
import pytest
import timm
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from torch import nn

from scalewatch.monitor import (NEAR_LOWER, NEAR_UPPER, NON_FINITE, PINNED, AttentionBiasGenerator, HistoryWriter,
                                Reading, SaturationTracker, ScaleSpec, iter_history, read_scales, summarize)
from scalewatch.monitor.display import display_record, display_value, format_range
from scalewatch.monitor.saturation import condition_masks
from scalewatch.monitor.watched_scale import check_param_bounds, watch_parameters
from scalewatch.monitor.record_encoding import encode_record, reading_lines
from scalewatch.monitor.watched_scale import MAX_ELEMENTS, WatchedScale

LN100 = math.log(100)
SWIN_PATTERN = "*.attn.logit_scale"


# ---- helpers -----------------------------------------------------------------------------

@pytest.fixture
def host_reads(monkeypatch):
    """Counts the tensor methods that bring values to the host (a counter only: results are real)."""
    calls = collections.Counter()
    for name in ("cpu", "item", "tolist", "numpy", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


def one_transfer(calls):
    return calls["cpu"] == 1 and calls["item"] == calls["tolist"] == calls["__float__"] == 0


class Heads(nn.Module):
    """A bare per-head scale and a scalar one, clamped in forward as Swin V2 and CLIP do."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Module() for _ in range(2))
        for block in self.blocks:
            block.logit_scale = nn.Parameter(torch.full((3, 1, 1), math.log(10)))
            block.register_buffer("temperature", torch.tensor(1.0))
        self.logit_scale = nn.Parameter(torch.tensor(2.0))
        self.gen = AttentionBiasGenerator()

    def forward(self, x):
        out = sum((torch.clamp(b.logit_scale, max=LN100).exp() * x).sum() for b in self.blocks)
        return out + torch.clamp(self.logit_scale, 0.0, LN100) * x.sum() + self.gen(x).sum()


def reading(**kw):
    base = dict(step=0, name="s", scale=1.0, raw=1.0, grad=0.1, min=0.0, max=5.0)
    return Reading(**{**base, **kw})


# ---- patterns ------------------------------------------------------------------------------

def test_a_pattern_names_every_matching_tensor_in_model_order():
    model = Heads()
    watched = watch_parameters(model, {"blocks.*.logit_scale": (None, LN100), "blocks.?.temperature": (0.1, 10)})
    assert [w.name for w in watched] == ["blocks.0.logit_scale", "blocks.1.logit_scale",
                                         "blocks.0.temperature", "blocks.1.temperature"]
    assert [w.numel for w in watched] == [3, 3, 1, 1]
    assert watched[0].element_names() == [f"blocks.0.logit_scale[{i}]" for i in range(3)]
    assert watched[2].element_names() == ["blocks.0.temperature"]  # a single value keeps its plain name
    assert (watched[0].min, watched[0].max) == (None, LN100)


def test_a_pattern_leaves_bounded_scale_modules_to_discovery():
    model = Heads()
    watched = watch_parameters(model, {"*scale": (None, LN100)})  # would match gen.bias_scale too
    assert [w.name for w in watched] == ["logit_scale", "blocks.0.logit_scale", "blocks.1.logit_scale"]


def test_a_pattern_that_matches_nothing_names_the_pattern():
    with pytest.raises(ValueError, match=r"pattern '\*\.attn\.logit_scal' matches no parameter or buffer of Heads"):
        watch_parameters(Heads(), {"*.attn.logit_scal": (None, LN100)})


def test_an_element_name_as_key_gets_a_hint():
    with pytest.raises(ValueError, match=r"'blocks\.0\.logit_scale\[1\]'.*name the whole tensor "
                                         r"\('blocks\.0\.logit_scale'\).*NAME\[i\]"):
        watch_parameters(Heads(), {"blocks.0.logit_scale[1]": (None, LN100)})


def test_a_missing_plain_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"`params` names 'logit_scal', which is not a parameter or buffer of Heads"):
        watch_parameters(Heads(), {"logit_scal": (0.0, LN100)})


@pytest.mark.parametrize("key", ["blocks.[0.logit_scale", "blocks.0.logit_scale[", "a[!]", "[]"])
def test_a_malformed_pattern_is_a_clear_error_before_any_model(key):
    with pytest.raises(ValueError, match=r"`params` key .*malformed pattern.*never closed") as err:
        check_param_bounds({key: (None, 1.0)})
    assert repr(key) in str(err.value)


@pytest.mark.parametrize("key", ["", "   ", 3])
def test_a_key_that_is_no_name_is_a_clear_error(key):
    with pytest.raises(ValueError, match=r"`params` keys must be parameter names or glob patterns, got " + repr(key)):
        check_param_bounds({key: (None, 1.0)})


def test_two_keys_naming_one_tensor_is_an_error():
    with pytest.raises(ValueError, match=r"keys 'blocks\.\*\.logit_scale' and '\*logit_scale' both name "
                                         r"'blocks\.0\.logit_scale'"):
        watch_parameters(Heads(), {"blocks.*.logit_scale": (None, LN100), "*logit_scale": (None, LN100)})


def test_a_weight_matrix_matched_by_mistake_is_refused():
    model = nn.Linear(300, 300)
    with pytest.raises(ValueError, match=rf"'weight' of shape \(300, 300\): 90000 values, more than {MAX_ELEMENTS}"):
        watch_parameters(model, {"*": (None, 1.0)})


# ---- bounds and specs ----------------------------------------------------------------------

@pytest.mark.parametrize("value,spec", [
    ((None, LN100), ScaleSpec(None, LN100)),
    ([0.5, None], ScaleSpec(0.5, None)),
    ((0, 4), ScaleSpec(0.0, 4.0)),
    ({"max": LN100, "display": "exp"}, ScaleSpec(None, LN100, "exp")),
    (ScaleSpec(min=0.0, max=LN100, display="exp"), ScaleSpec(0.0, LN100, "exp")),
])
def test_bound_forms(value, spec):
    checked = check_param_bounds({"logit_scale": value})
    assert checked == {"logit_scale": spec}
    assert check_param_bounds(checked) == checked  # checking twice changes nothing


@pytest.mark.parametrize("value,words", [
    ((None, None), r"needs at least one bound.*\(None, None\)"),
    ({"display": "exp"}, r"needs at least one bound.*\{'display': 'exp'\}"),
    ((0.0, 1.0, 2.0), r"must be a \(min, max\) pair.*\(0\.0, 1\.0, 2\.0\) \(3 values\)"),
    ((1.0,), r"must be a \(min, max\) pair.*\(1\.0,\) \(1 values\)"),
    ("0, 1", r"must be a \(min, max\) pair.*'0, 1'"),
    ({"maximum": 1.0}, r"may only have the keys.*\['maximum'\]"),
    ((None, -1.0), r"max` must be > 0, got -1\.0"),
    ((2.0, 1.0), r"min` must be < .*2\.0"),
    ((None, math.inf), r"max` must be finite, got inf"),
    (("a", None), r"min` must be a real number, got 'a'"),
    ({"max": 1.0, "display": "log"}, r"display` must be one of \('identity', 'exp'\), got 'log'"),
])
def test_bad_bounds_name_the_entry_and_show_the_value(value, words):
    with pytest.raises(ValueError, match=r"params\['logit_scale'\]") as err:
        check_param_bounds({"logit_scale": value})
    assert re.search(words, str(err.value)), str(err.value)


# ---- one-sided rules -----------------------------------------------------------------------

def test_upper_only_scale_never_warns_near_lower_and_pins_at_its_max():
    tracker = SaturationTracker(warn_fraction=0.9, patience=2)
    low = reading(min=None, max=LN100, scale=-50.0, raw=-50.0, grad=1.0)
    assert tracker.conditions(low) == {NEAR_UPPER: False, NEAR_LOWER: False, PINNED: False, NON_FINITE: False}
    at_max = reading(min=None, max=LN100, scale=LN100, raw=4.9, grad=0.0)
    first, second = tracker.update(at_max), tracker.update(at_max)
    assert [a.kind for a in first] == [NEAR_UPPER] and [a.kind for a in second] == [PINNED]
    assert "range (-inf, 4.60517]" in second[0].message and second[0].min is None


def test_lower_only_scale_never_warns_near_upper_and_pins_at_its_min():
    tracker = SaturationTracker(warn_fraction=0.9, patience=1)
    high = reading(min=0.5, max=None, scale=1e6, raw=1e6, grad=-1.0)
    assert tracker.conditions(high) == {NEAR_UPPER: False, NEAR_LOWER: False, PINNED: False, NON_FINITE: False}
    # near_lower mirrors the upper rule: below min + (1 - w)|min| = 0.55
    assert tracker.conditions(reading(min=0.5, max=None, scale=0.54, raw=0.54))[NEAR_LOWER]
    at_min = reading(min=0.5, max=None, scale=0.5, raw=0.3, grad=0.2)
    alerts = tracker.update(at_min)
    assert [a.kind for a in alerts] == [NEAR_LOWER, PINNED]
    assert "range [0.5, inf)" in alerts[0].message


def _random_reading(rng, i):
    # NaN bounds are what a reader of a history with missing numbers may pass: they hold no rule
    lo, hi = rng.choice([(0.5, 5.0), (None, LN100), (-1.0, None), (0.0, None), (0.0, LN100), (math.nan, 5.0),
                         (0.5, math.nan)])
    edge = rng.choice([v for v in (lo, hi) if v is not None and not math.isnan(v)])
    raw = rng.choice([edge, edge + 1e-7, edge - 1e-7, edge * 1.2 + 0.3, edge * 0.8 - 0.2, rng.uniform(-3, 8),
                      math.nan, math.inf])
    scale = min(max(raw, -math.inf if lo is None else lo), math.inf if hi is None else hi)
    grad = rng.choice([None, 0.0, 1e-13, -1e-13, 0.5, -0.5, math.nan])
    return reading(name=f"s{i}", scale=scale, raw=raw, grad=grad, min=lo, max=hi,
                   bound=rng.choice(["hard", "hard", "soft"]))


@pytest.mark.parametrize("grad_must_be_finite", [True, False])
def test_vectorised_rules_equal_the_per_reading_rules(grad_must_be_finite):
    rng = random.Random(0)
    readings = [_random_reading(rng, i) for i in range(3000)]
    tracker = SaturationTracker(0.9, 3)
    masks = condition_masks(readings, 0.9, grad_must_be_finite)
    for i, r in enumerate(readings):
        assert {k: bool(m[i]) for k, m in masks.items()} == tracker.conditions(r, grad_must_be_finite), r


def test_update_all_equals_update_one_by_one_over_many_checks():
    rng = random.Random(1)
    one, batch = SaturationTracker(0.9, 2), SaturationTracker(0.9, 2)
    for step in range(12):
        readings = [_random_reading(rng, i) for i in range(400)]
        expected = [a for r in readings for a in one.update(r)]
        assert batch.update_all(readings) == expected
        assert batch.state_dict() == one.state_dict()
    state = batch.state_dict()
    assert all(state["active"].values()) and all(state["pinned_streak"].values())  # only open state is kept


# ---- element-wise reading --------------------------------------------------------------------

def test_elements_are_read_in_one_transfer_with_their_own_clamp(host_reads):
    model = Heads()
    with torch.no_grad():
        model.blocks[1].logit_scale[2] = 5.0  # above ln 100: clamped, so no gradient
    model(torch.ones(2)).backward()
    scales = watch_parameters(model, {"blocks.*.logit_scale": (None, LN100), "logit_scale": (0.0, LN100)})
    host_reads.clear()
    readings = read_scales(scales, step=4)
    assert one_transfer(host_reads), host_reads
    assert [r.name for r in readings] == [f"blocks.{b}.logit_scale[{h}]" for b in range(2) for h in range(3)] + \
        ["logit_scale"]
    pinned_head = readings[5]
    assert (pinned_head.raw, pinned_head.scale, pinned_head.grad) == (5.0, pytest.approx(LN100), 0.0)
    assert (pinned_head.tensor, pinned_head.index) == ("blocks.1.logit_scale", 2)
    free = readings[0]
    assert free.scale == free.raw == pytest.approx(math.log(10)) and free.grad == pytest.approx(2 * 10.0, rel=1e-6)
    assert readings[-1].tensor is None and readings[-1].index is None and readings[-1].grad == 2.0


def test_mixed_dtypes_and_buffers_are_read_as_float32_values():
    model = nn.Module()
    model.register_buffer("half_heads", torch.tensor([0.5, 1.5, 2.5], dtype=torch.float16))
    model.register_buffer("wide", torch.tensor(3.25, dtype=torch.float64))
    readings = read_scales(watch_parameters(model, {"half_*": (0.0, 2.0), "wide": (None, 3.0)}), step=0)
    assert [(r.name, r.raw, r.scale, r.grad) for r in readings] == [
        ("half_heads[0]", 0.5, 0.5, None), ("half_heads[1]", 1.5, 1.5, None), ("half_heads[2]", 2.5, 2.0, None),
        ("wide", 3.25, 3.0, None)]


def test_records_single_value_unchanged_elements_and_one_sided_extended(tmp_path):
    model = Heads()
    model(torch.ones(2)).backward()
    scales = watch_parameters(model, {"blocks.0.logit_scale": {"max": LN100, "display": "exp"},
                                      "logit_scale": (0.0, LN100)})
    readings = read_scales(scales, step=9)
    scalar = readings[-1].to_record()
    assert list(scalar) == ["step", "name", "scale", "raw", "grad", "min", "max", "bound", "clamp_fraction"]
    element = readings[1].to_record()
    assert element["tensor"] == "blocks.0.logit_scale" and element["index"] == 1 and element["display"] == "exp"
    assert element["min"] is None
    path = tmp_path / "h.jsonl"
    writer = HistoryWriter(str(path))
    writer.append([r.to_record() for r in readings])
    writer.close()
    assert '"min": null' in path.read_text().splitlines()[0]
    back = list(iter_history(str(path)))
    assert back == [r.to_record() for r in readings]


# ---- display -------------------------------------------------------------------------------

def test_display_transforms():
    assert display_value(LN100, "exp") == pytest.approx(100.0)
    assert display_value(2.0) == 2.0 and display_value(None, "exp") is None
    assert math.isnan(display_value(math.nan, "exp")) and display_value(1e6, "exp") == math.inf
    assert format_range(None, LN100) == "(-inf, 4.60517]"
    assert format_range(None, LN100, "exp") == "(0, 100]"
    assert format_range(0.0, LN100, "exp") == "[1, 100]"
    assert format_range(0.5, None) == "[0.5, inf)"
    record = {"name": "logit_scale", "scale": LN100, "raw": 4.7, "grad": 0.0, "min": 0.0, "max": LN100,
              "display": "exp"}
    shown = display_record(record)
    assert (shown["scale"], shown["min"], shown["max"]) == pytest.approx((100.0, 1.0, 100.0))
    assert (shown["raw"], shown["grad"]) == (4.7, 0.0) and record["scale"] == LN100  # raw units kept, input intact
    assert display_record({"scale": 2.0, "min": None, "max": 3.0}) == {"scale": 2.0, "min": None, "max": 3.0}
    with pytest.raises(ValueError, match=r"`display` must be one of .*'log10'"):
        display_value(1.0, "log10")


def small_clip():
    torch.manual_seed(0)
    return open_clip.CLIP(embed_dim=16,
                          vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=16),
                          text_cfg=CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2, layers=1))


def test_open_clip_logit_scale_with_exp_display():
    model = small_clip()
    scales = watch_parameters(model, {"logit_scale": ScaleSpec(min=0.0, max=LN100, display="exp")})
    opt = torch.optim.AdamW(model.parameters(), lr=0.5)
    loss_fn = open_clip.ClipLoss()
    tracker = SaturationTracker(warn_fraction=0.9, patience=2)
    alerts, records = [], []
    for step in range(8):
        images, texts = torch.randn(4, 3, 16, 16), torch.randint(1, 64, (4, 8))
        image_features, text_features, logit_scale = model(images, texts)
        # the text tower takes part, but the targets are the image features themselves: matched
        # pairs, so a sharper softmax always helps and the optimizer keeps pushing the scale up
        loss_fn(image_features, image_features.detach() + 0 * text_features, logit_scale).backward()
        readings = read_scales(scales, step)
        alerts += tracker.update_all(readings)
        records += [r.to_record() for r in readings]
        opt.step()
        opt.zero_grad()
        with torch.no_grad():  # as open_clip's training loop does after every step
            model.logit_scale.clamp_(0, LN100)
    assert all(r["display"] == "exp" and r["name"] == "logit_scale" for r in records)
    first = display_record(records[0])
    assert first["scale"] == pytest.approx(1 / 0.07, rel=1e-5)  # open_clip's init temperature, exp(ln(1/0.07))
    assert first["max"] == pytest.approx(100.0) and first["raw"] == records[0]["raw"]
    # lr 0.5 drives the temperature to its cap of 100, where the in-place clamp holds it
    assert records[-1]["raw"] == pytest.approx(LN100)
    assert display_record(records[-1])["scale"] == pytest.approx(100.0, rel=1e-5)
    assert [a.kind for a in alerts] == [NEAR_UPPER, PINNED]
    assert "shown as exp" in alerts[0].message and "range [1, 100]" in alerts[0].message


# ---- summaries -----------------------------------------------------------------------------

def test_summary_per_tensor():
    rs = [reading(name=f"t[{i}]", tensor="t", index=i, scale=s, raw=r, grad=0.0, min=None, max=LN100)
          for i, (s, r) in enumerate([(1.0, 1.0), (LN100, 5.0), (4.3, 4.3)])]
    rs.append(reading(name="single", scale=2.0, raw=2.0))
    rs.append(reading(name="t[3]", tensor="t", index=3, scale=math.nan, raw=math.nan, min=None, max=LN100))
    t, single = summarize(rs, warn_fraction=0.9)
    assert (t.tensor, t.elements, t.scale_min, t.scale_max, t.raw_max) == ("t", 4, 1.0, LN100, 5.0)
    assert (t.near_upper, t.near_lower, t.pinned, t.non_finite, t.near_bound) == (2, 0, 1, 1, 2)
    assert (t.min, t.max) == (None, LN100)
    assert single.tensor == "single" and single.elements == 1
    assert set(t.metrics()) == {"elements", "scale_min", "scale_max", "raw_min", "raw_max", "near_upper",
                                "near_lower", "pinned", "non_finite"}
    assert summarize([]) == []
    masks = condition_masks(rs, 0.9)
    assert summarize(rs, 0.9, masks=masks) == [t, single]  # masks computed once, shared with update_all


def test_summary_merges_a_tensor_read_in_two_runs():
    a = [reading(name=f"t[{i}]", tensor="t", index=i, scale=float(i), raw=float(i)) for i in range(2)]
    b = [reading(name=f"t[{i}]", tensor="t", index=i, scale=float(i), raw=float(i)) for i in range(2, 4)]
    t, other = summarize(a + [reading(name="u", scale=math.nan, raw=math.nan)] + b)
    assert (t.tensor, t.elements, t.scale_min, t.scale_max) == ("t", 4, 0.0, 3.0)
    assert other.tensor == "u" and math.isnan(other.scale_min) and other.non_finite == 1


def test_history_lines_are_json_dumps_byte_for_byte():
    records = [{"step": 1, "name": "blocks.0.attn.logit_scale[3]", "scale": 0.1 + 0.2, "raw": math.nan,
                "grad": -math.inf, "min": None, "max": math.inf, "alerts": ["pinned"], "ünï": "cödé"},
               {"step": 2, "name": 'quote"back\\slash', "index": 7, "ok": True, "nested": {"a": [1, 2.5e-300]}}]
    assert [encode_record(r) for r in records] == [json.dumps(r) for r in records]
    with pytest.raises(TypeError, match="Object of type device is not JSON serializable"):
        encode_record({"device": torch.device("cpu")})


def test_reading_lines_equal_the_records_json_byte_for_byte(tmp_path):
    rng = random.Random(2)
    readings = [_random_reading(rng, i) for i in range(300)]
    model = Heads()
    model(torch.ones(2)).backward()
    readings += read_scales(watch_parameters(model, {"blocks.*.logit_scale": {"max": LN100, "display": "exp"},
                                                     "logit_scale": (0.0, LN100)}), step=12)
    readings += [reading(name="ünï\n\"", tensor=None, index=None, clamp_fraction=0.25, step=3),
                 reading(name="t[0]", tensor="t", index=0, grad=None, min=None),
                 reading(name="signed zero", scale=0.0, raw=-0.0, min=None), reading(name="int", scale=2, raw=2.0)]
    extra = {"warn_fraction": 0.9, "patience": 3, 7: [1.5, None]}
    alerts = {"s3": ["near_upper", "pinned"], readings[-1].name: ["non_finite"]}
    for fired in (alerts, None):
        expected = "".join(json.dumps({**r.to_record(), **{str(k): v for k, v in extra.items()},
                                       **({} if fired is None else {"alerts": fired.get(r.name, [])})}) + "\n"
                           for r in readings)
        assert reading_lines(readings, extra, fired) == expected
    writer = HistoryWriter(str(tmp_path / "h.jsonl"))
    writer.append_readings(readings, extra, alerts)
    writer.close()
    assert (tmp_path / "h.jsonl").read_text() == reading_lines(readings, extra, alerts)
    with pytest.raises(ValueError, match=r"`extra` keys must not be reading fields or 'alerts', got \['alerts', 'step'\]"):
        reading_lines(readings, {"step": 1, "alerts": []})


# ---- Swin V2 -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def swin():
    torch.manual_seed(0)
    return timm.create_model("swinv2_tiny_window8_256", pretrained=False, img_size=64, num_classes=10)


def test_swin_v2_all_heads_through_one_pattern(swin, host_reads):
    scales = watch_parameters(swin, {SWIN_PATTERN: (None, LN100)})
    assert len(scales) == 12 and sum(s.numel for s in scales) == 138
    assert [s.numel for s in scales] == [3, 3, 6, 6, 12, 12, 12, 12, 12, 12, 24, 24]
    host_reads.clear()
    readings = read_scales(scales, step=0)
    assert one_transfer(host_reads), host_reads
    assert len(readings) == 138 and readings[-1].name == "layers.3.blocks.1.attn.logit_scale[23]"
    assert all(r.scale == pytest.approx(math.log(10)) and r.min is None for r in readings)


def test_swin_v2_forced_head_is_pinned_by_index_and_no_other(swin):
    model = copy.deepcopy(swin)  # trained and forced here: the fixture stays at its init
    target = "layers.2.blocks.3.attn.logit_scale"
    with torch.no_grad():
        dict(model.named_parameters())[target][5] = LN100 + 0.5
    scales = watch_parameters(model, {SWIN_PATTERN: (None, LN100)})
    tracker = SaturationTracker(warn_fraction=0.9, patience=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    alerts, last = [], []
    for step in range(4):
        x, y = torch.randn(2, 3, 64, 64, generator=g), torch.randint(0, 10, (2,), generator=g)
        nn.functional.cross_entropy(model(x), y).backward()
        last = read_scales(scales, step)
        alerts += tracker.update_all(last)
        opt.step()
        opt.zero_grad()
    pinned = [a for a in alerts if a.kind == PINNED]
    assert [(a.name, a.step) for a in pinned] == [(f"{target}[5]", 2)]
    assert "pinned" in pinned[0].message and f"{target}[5]" in pinned[0].message
    assert not any(a.kind == NEAR_LOWER for a in alerts)
    assert {a.name for a in alerts} == {f"{target}[5]"}  # near_upper too, for that head only
    summary = {s.tensor: s for s in summarize(last, 0.9)}
    assert len(summary) == 12 and summary[target].pinned == 1 and summary[target].elements == 12
    assert sum(s.pinned for s in summary.values()) == 1


def test_swin_v2_records_round_trip(swin, tmp_path):
    readings = read_scales(watch_parameters(swin, {SWIN_PATTERN: (None, LN100)}), step=3)
    path = tmp_path / "history.jsonl"
    writer = HistoryWriter(str(path))
    writer.append(r.to_record() for r in readings)
    writer.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 138
    first = json.loads(lines[0])
    assert first["name"] == "layers.0.blocks.0.attn.logit_scale[0]" and first["min"] is None
    assert first["tensor"] == "layers.0.blocks.0.attn.logit_scale" and first["index"] == 0


def test_watched_scale_names_are_cached_and_follow_numel():
    w = WatchedScale(name="x", raw=torch.zeros(4), min=None, max=1.0)
    assert w.element_names() is w.element_names() and len(w.element_names()) == 4
