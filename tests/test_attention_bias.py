"""AttentionBiasGenerator: clamps, the gradient trap, soft bounds, dtypes, presets, bad input."""
import math
import re

import pytest
import torch
from torch import nn

from scalewatch.monitor import PRESETS, AttentionBiasGenerator, BoundedScale, LearnableScale


def test_original_config_dict_works():
    cfg = dict(bias_scale=2.5, learnable_scale=True, min_scale=0.5, max_scale=5.0, use_local_bias=True, fp16=True)
    gen = AttentionBiasGenerator(**cfg)
    assert isinstance(gen, BoundedScale)
    assert isinstance(gen.bias_scale, nn.Parameter)
    assert gen.scale.item() == pytest.approx(2.5)
    assert (gen.min_scale, gen.max_scale, gen.bias_limit) == (0.5, 5.0, 5.0)


def test_forward_is_weights_times_clamped_scale():
    gen = AttentionBiasGenerator(bias_scale=2.0, max_scale=5.0)
    w = torch.linspace(-1, 1, 24).reshape(2, 3, 4)
    out = gen(w)
    assert out.shape == w.shape
    torch.testing.assert_close(out, w * 2.0)
    with torch.no_grad():
        gen.bias_scale.fill_(7.0)  # raw beyond max: effective is max
    assert gen.scale.item() == 5.0
    with torch.no_grad():
        gen.bias_scale.fill_(0.1)  # below min: effective is min
    assert gen.scale.item() == 0.5


@pytest.mark.parametrize("max_scale,limit", [(3.0, 3.0), (5.0, 5.0), (8.0, 5.0)])
def test_bias_clamped_at_min_of_5_and_max_scale(max_scale, limit):
    gen = AttentionBiasGenerator(bias_scale=max_scale, min_scale=0.5, max_scale=max_scale)
    assert gen.track_clamp_fraction is False  # off unless asked (ScaleMonitor asks on check steps)
    gen.track_clamp_fraction = True
    # weights outside [-1, 1] (a misbehaving router) still cannot push the bias past the limit
    w = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])
    out = gen(w)
    assert out.abs().max().item() == pytest.approx(limit)
    expected = torch.clamp(w * max_scale, -limit, limit)
    torch.testing.assert_close(out, expected)
    # entries that hit the clamp are counted (kept as a tensor: no sync in forward)
    assert isinstance(gen.clamp_fraction, torch.Tensor)
    assert gen.clamp_fraction.item() == pytest.approx((expected.abs() >= limit).float().mean().item())


def test_gradient_inside_bounds_matches_analytic_value():
    gen = AttentionBiasGenerator(bias_scale=2.0, max_scale=5.0)
    w = torch.tensor([[0.2, -0.7, 0.9], [0.4, 0.1, -0.3]])
    gen(w).sum().backward()
    # d/d(scale) sum(w * scale) = sum(w), and d(scale)/d(raw) = 1 inside the bounds
    assert gen.bias_scale.grad.item() == pytest.approx(w.sum().item(), rel=1e-6)


def test_gradient_above_max_is_exactly_zero_the_trap():
    gen = AttentionBiasGenerator(bias_scale=5.0, max_scale=5.0)
    with torch.no_grad():
        gen.bias_scale.fill_(5.3)
    gen(torch.full((4, 4), 0.5)).sum().backward()
    assert gen.bias_scale.grad.item() == 0.0  # pinned: no gradient can bring it back


def test_gradient_below_min_is_exactly_zero():
    gen = AttentionBiasGenerator(bias_scale=0.5, min_scale=0.5)
    with torch.no_grad():
        gen.bias_scale.fill_(0.2)
    gen(torch.full((4, 4), 0.5)).sum().backward()
    assert gen.bias_scale.grad.item() == 0.0


def test_soft_bound_gradient_is_nonzero_where_hard_is_zero():
    soft = AttentionBiasGenerator(bias_scale=4.9, max_scale=5.0, bound="soft")
    assert soft.scale.item() == pytest.approx(4.9, rel=1e-5)  # initialised to the given scale
    with torch.no_grad():
        soft.bias_scale.add_(3.0)  # push the raw value far up
    assert 4.9 < soft.scale.item() < 5.0
    w = torch.full((4, 4), 0.5)
    soft(w).sum().backward()
    s = soft.scale.item()
    analytic = w.sum().item() * (s - 0.5) * (5.0 - s) / (5.0 - 0.5)  # (max-min) * sig * (1 - sig)
    assert soft.bias_scale.grad.item() != 0.0
    assert soft.bias_scale.grad.item() == pytest.approx(analytic, rel=1e-3)


@pytest.mark.parametrize("learnable", [True, False])
def test_state_dict_round_trip(learnable):
    gen = AttentionBiasGenerator(bias_scale=3.0, learnable_scale=learnable)
    with torch.no_grad():
        gen.bias_scale.fill_(3.7)
    state = gen.state_dict()
    assert set(state) == {"bias_scale"}
    other = AttentionBiasGenerator(bias_scale=1.0, learnable_scale=learnable)
    other.load_state_dict(state)
    assert other.bias_scale.item() == pytest.approx(3.7)
    assert other.scale.item() == pytest.approx(3.7)
    names = [n for n, _ in other.named_parameters()]
    assert names == (["bias_scale"] if learnable else [])
    assert ("bias_scale" in dict(other.named_buffers())) is (not learnable)


def test_fixed_scale_gets_no_gradient():
    gen = AttentionBiasGenerator(learnable_scale=False)
    w = torch.rand(3, 3, requires_grad=True)
    gen(w).sum().backward()
    assert not gen.bias_scale.requires_grad
    assert w.grad is not None


def test_use_local_bias_false_broadcasts_one_row_to_every_query():
    gen = AttentionBiasGenerator(bias_scale=2.0, use_local_bias=False)
    w = torch.tensor([[0.5, -1.0, 0.25]])  # [B=1, K=3]
    bias = gen(w)
    assert bias.shape == (1, 1, 3)
    logits = torch.zeros(1, 4, 3) + bias  # [B, Q=4, K]
    assert torch.equal(logits[0, 0], logits[0, 3])
    torch.testing.assert_close(bias[0, 0], w[0] * 2.0)


@pytest.mark.parametrize("autocast", [False, True])
def test_fp16_half_in_half_out_and_finite(autocast):
    gen = AttentionBiasGenerator(bias_scale=5.0, max_scale=8.0, fp16=True)
    w = torch.tensor([[-60000.0, -1.0, 0.3, 1.0, 60000.0]], dtype=torch.float16)  # w * scale overflows half
    with torch.autocast("cpu", dtype=torch.float16, enabled=autocast):
        out = gen(w)
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()
    assert out.abs().max().item() == pytest.approx(5.0)
    assert gen.scale.dtype == torch.float32  # the scale clamp is computed in float32


def test_fp16_false_returns_float32():
    gen = AttentionBiasGenerator(fp16=False)
    assert gen(torch.rand(2, 2, dtype=torch.float16)).dtype == torch.float32


def test_no_print_in_forward(capsys):
    gen = AttentionBiasGenerator()
    for _ in range(2000):
        gen(torch.rand(2, 2))
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_by_name(name):
    gen = AttentionBiasGenerator.from_preset(name)
    p = PRESETS[name]
    assert (gen.scale.item(), gen.min_scale, gen.max_scale) == pytest.approx(
        (p["bias_scale"], p["min_scale"], p["max_scale"]))


def test_preset_values_and_overrides():
    assert AttentionBiasGenerator.from_preset("aggressive").bias_limit == 5.0
    assert AttentionBiasGenerator.from_preset("ultra-conservative").bias_limit == 3.0
    gen = AttentionBiasGenerator.from_preset("conservative", bound="soft", fp16=False)
    assert gen.bound == "soft" and gen.fp16 is False and gen.scale.item() == pytest.approx(2.5, rel=1e-5)


@pytest.mark.parametrize("kwargs,arg,value", [
    (dict(min_scale=5.0, max_scale=0.5, bias_scale=1.0), "min_scale", "5.0"),
    (dict(min_scale=2.0, max_scale=2.0, bias_scale=2.0), "min_scale", "2.0"),
    (dict(max_scale=0.0, min_scale=-1.0, bias_scale=-0.5), "max_scale", "0.0"),
    (dict(max_scale=-2.0, min_scale=-3.0, bias_scale=-2.5), "max_scale", "-2.0"),
    (dict(max_scale=math.inf), "max_scale", "inf"),
    (dict(min_scale=math.nan), "min_scale", "nan"),
    (dict(bias_scale=math.nan), "bias_scale", "nan"),
    (dict(bias_scale=6.0), "bias_scale", "6.0"),
    (dict(bias_scale=0.1), "bias_scale", "0.1"),
    (dict(bias_scale=5.0, bound="soft"), "bias_scale", "5.0"),
    (dict(bound="sigmoid"), "bound", "sigmoid"),
    (dict(bias_scale="2.5"), "bias_scale", "2.5"),
])
def test_bad_input_is_a_clear_value_error(kwargs, arg, value):
    with pytest.raises(ValueError) as err:
        AttentionBiasGenerator(**kwargs)
    assert arg in str(err.value) and value in str(err.value)


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"preset.*'wild'.*aggressive"):
        AttentionBiasGenerator.from_preset("wild")


def test_learnable_scale_shares_the_interface():
    ls = LearnableScale(init=2.0, min_scale=0.0, max_scale=4.6052)
    assert isinstance(ls, BoundedScale) and ls.raw_scale is ls.raw_scale
    assert ls(torch.ones(3)).tolist() == pytest.approx([2.0] * 3)
    assert ls.scale_bounds == (0.0, 4.6052)


# ---- one scale per head (num_heads=H) ---------------------------------------------------

H = 3


def per_head(**kw):
    return AttentionBiasGenerator(**{"bias_scale": 2.0, "min_scale": 0.5, "max_scale": 5.0, "num_heads": H, **kw})


def set_heads(gen, values):
    with torch.no_grad():
        gen.bias_scale.copy_(torch.tensor(values).reshape(-1, 1, 1))


def test_num_heads_none_keeps_the_scalar_exactly():
    gen = AttentionBiasGenerator(num_heads=None)
    assert gen.num_heads is None and gen.bias_scale.shape == ()
    assert "num_heads" not in repr(gen)
    w = torch.rand(2, 4, 5) * 2 - 1
    torch.testing.assert_close(gen(w), AttentionBiasGenerator()(w), rtol=0, atol=0)


@pytest.mark.parametrize("use_local_bias,shape,out_shape", [
    (True, (2, H, 4, 5), (2, H, 4, 5)),       # [B, H, Q, K]
    (True, (H, 4, 5), (H, 4, 5)),             # no batch dimension
    (False, (2, H, 5), (2, H, 1, 5)),         # [B, H, K] -> one row per head, broadcast over queries
])
def test_per_head_forward_shapes_and_values(use_local_bias, shape, out_shape):
    gen = per_head(use_local_bias=use_local_bias)
    set_heads(gen, [1.0, 2.0, 3.0])
    assert gen.bias_scale.shape == (H, 1, 1) and gen.scale.shape == (H, 1, 1)
    w = torch.rand(*shape) * 2 - 1
    bias = gen(w)
    assert bias.shape == out_shape
    for h, s in enumerate([1.0, 2.0, 3.0]):
        expected = w.select(-3 if use_local_bias else -2, h) * s
        got = bias.select(-3, h) if use_local_bias else bias.select(-3, h).squeeze(-2)
        torch.testing.assert_close(got, expected)
    if not use_local_bias:
        logits = torch.zeros(2, H, 4, 5) + bias  # [B, H, Q, K]: the same row for every query of a head
        assert torch.equal(logits[:, :, 0], logits[:, :, 3])


def test_per_head_clamp_bounds_and_final_limit_per_head():
    gen = per_head(max_scale=8.0)
    set_heads(gen, [9.0, 0.1, 3.0])  # above max, below min, inside
    assert gen.scale.flatten().tolist() == [8.0, 0.5, 3.0]
    gen.track_clamp_fraction = True
    w = torch.tensor([-1.0, -0.5, 0.25, 1.0]).expand(2, H, 3, 4)
    bias = gen(w)
    # the final clamp is +-min(5, max_scale) = 5 for every head
    torch.testing.assert_close(bias[:, 0], torch.clamp(w[:, 0] * 8.0, -5, 5))
    torch.testing.assert_close(bias[:, 1], w[:, 1] * 0.5)
    assert bias.abs().max().item() == 5.0
    # head 0: |w * 8| >= 5 for |w| in {1, 1}, not for 0.5 (4.0) or 0.25: half its entries are cut
    assert gen.clamp_fraction.shape == (H,)
    assert gen.clamp_fraction.tolist() == pytest.approx([0.5, 0.0, 0.0])


def test_gradient_trap_per_head():
    gen = per_head()
    set_heads(gen, [5.3, 0.2, 2.0])  # head 0 above max, head 1 below min, head 2 inside
    w = torch.full((2, H, 4, 4), 0.5)
    gen(w).sum().backward()
    grad = gen.bias_scale.grad.flatten().tolist()
    assert grad[0] == 0.0 and grad[1] == 0.0  # pinned: the clamp cut these heads' gradients
    assert grad[2] == pytest.approx(w[:, 2].sum().item())  # the free head learns as before


def test_per_head_soft_bound():
    gen = per_head(bias_scale=4.9, bound="soft")
    assert gen.scale.flatten().tolist() == pytest.approx([4.9] * H, rel=1e-5)
    with torch.no_grad():
        gen.bias_scale[0].add_(5.0)  # far up: the soft map approaches max, never reaches it
    s = gen.scale.flatten()
    assert 4.9 < s[0].item() < 5.0
    w = torch.full((1, H, 2, 2), 0.5)
    gen(w).sum().backward()
    grad = gen.bias_scale.grad.flatten()
    analytic = w[0, 0].sum() * (s - 0.5) * (5.0 - s) / (5.0 - 0.5)
    assert (grad != 0).all()
    torch.testing.assert_close(grad, analytic.detach(), rtol=1e-3, atol=0)


@pytest.mark.parametrize("autocast", [False, True])
def test_per_head_fp16_half_in_half_out_and_finite(autocast):
    gen = per_head(bias_scale=5.0, max_scale=8.0)
    w = torch.tensor([-60000.0, -1.0, 0.3, 1.0, 60000.0], dtype=torch.float16).expand(1, H, 2, 5)
    with torch.autocast("cpu", dtype=torch.float16, enabled=autocast):
        out = gen(w)
    assert out.dtype == torch.float16 and out.shape == (1, H, 2, 5)
    assert torch.isfinite(out).all() and out.abs().max().item() == pytest.approx(5.0)
    assert gen.scale.dtype == torch.float32


@pytest.mark.parametrize("learnable", [True, False])
def test_per_head_state_dict_round_trip(learnable):
    gen = per_head(learnable_scale=learnable)
    set_heads(gen, [1.5, 2.5, 3.5])
    state = gen.state_dict()
    assert set(state) == {"bias_scale"} and state["bias_scale"].shape == (H, 1, 1)
    other = per_head(learnable_scale=learnable, bias_scale=1.0)
    other.load_state_dict(state)
    assert other.scale.flatten().tolist() == [1.5, 2.5, 3.5]
    with pytest.raises(RuntimeError, match="size mismatch"):  # a scalar generator's state does not fit
        other.load_state_dict(AttentionBiasGenerator(learnable_scale=learnable).state_dict())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_per_head_presets(name):
    gen = AttentionBiasGenerator.from_preset(name, num_heads=8)
    p = PRESETS[name]
    assert gen.num_heads == 8 and gen.bias_scale.shape == (8, 1, 1)
    assert gen.scale.flatten().tolist() == pytest.approx([p["bias_scale"]] * 8)
    assert (gen.min_scale, gen.max_scale, gen.bias_limit) == (p["min_scale"], p["max_scale"], min(5.0, p["max_scale"]))


def test_per_head_generator_is_discovered_head_by_head():
    from scalewatch.monitor import find_bounded_scales, read_scales

    model = nn.Module()
    model.attn = nn.Module()
    model.attn.bias = per_head()
    set_heads(model.attn.bias, [6.0, 2.0, 3.0])
    model.attn.bias.track_clamp_fraction = True
    model.attn.bias(torch.ones(2, H, 4, 4)).sum().backward()
    (watched,) = find_bounded_scales(model)
    assert watched.numel == H and watched.element_names() == ["attn.bias[0]", "attn.bias[1]", "attn.bias[2]"]
    readings = read_scales([watched], step=7)
    assert [r.name for r in readings] == watched.element_names()
    assert [(r.tensor, r.index) for r in readings] == [("attn.bias", h) for h in range(H)]
    assert [r.scale for r in readings] == [5.0, 2.0, 3.0] and [r.raw for r in readings] == [6.0, 2.0, 3.0]
    assert [r.grad for r in readings] == [0.0, 32.0, 32.0]  # d/d(scale) of the sum of 2 x 4 x 4 ones
    assert [r.clamp_fraction for r in readings] == [1.0, 0.0, 0.0]  # only head 0 reaches the limit 5


@pytest.mark.parametrize("num_heads", [0, -2, 2.5, "8", True])
def test_bad_num_heads_is_a_clear_error(num_heads):
    with pytest.raises(ValueError, match=r"`num_heads`.*" + re.escape(repr(num_heads))):
        AttentionBiasGenerator(num_heads=num_heads)


@pytest.mark.parametrize("use_local_bias,shape", [(True, (2, 4, 4, 4)), (True, (4, 4)), (False, (2, 4, 5)),
                                                  (False, (5,))])
def test_weights_without_the_head_dimension_are_a_clear_error(use_local_bias, shape):
    gen = per_head(use_local_bias=use_local_bias)
    with pytest.raises(ValueError, match=r"`weights`.*num_heads = 3.*" + re.escape(str(shape))):
        gen(torch.zeros(shape))
