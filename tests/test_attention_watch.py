"""``attention=``: per-head max |logit|, row entropy and saturated rows of the softmax itself, on check steps only.

Every value is held to a reference that materialises the logits by hand, in float64, from
the inputs the model's own attention calls received on the same batch (recorded here by
the test's own wrapper and hooks, independent of scalewatch's interception), for: SDPA
with a boolean mask, a float mask (-inf and HF's ``finfo.min`` fill), ``is_causal`` with
more keys than queries, ``scale``, grouped-query attention, 2-, 3- and 5-dim inputs, the
first ``samples`` of a batch and a tiny memory budget; and on real models: timm ViT, HF
BERT (padding mask) and GPT-2 (causal) with ``sdpa``, open_clip ``CLIP``
(``nn.MultiheadAttention``, a causal float mask in the text tower), a GQA module with two
micro-batches and an eval forward in between, the fusion example (its bias as ``attn_mask``),
``nn.MultiheadAttention(need_weights=True)`` and hand-written attention opted in by pattern.

Off check steps nothing is installed (also held by the op-log harness:
``door_harness.DOORS["plain-loop+attention"]``); the records flow through the rules,
logger keys, history views and every door; bad input is named.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.common import LiveBytes
from scalewatch.callbacks import ScaleSink, ScaleWatcher
from scalewatch.callbacks.attention_watch import ATTENTION_FIELD
from scalewatch.monitor import AttentionBiasGenerator
from scalewatch.monitor.attention_options import DEFAULT_MAX_LOGIT, check_attention
from scalewatch.monitor import attention_stats
from scalewatch.monitor.attention_stats import logit_statistics, sdpa_statistics
from scalewatch.monitor.history import iter_history

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
SDPA = F.scaled_dot_product_attention
TOL = dict(rtol=1e-4, atol=1e-5)  # float32 sums of float32 rows against float64

# ---- the reference: logits by hand, float64 ----------------------------------------------------

Sums = Dict[str, Tensor]  # max, entropy_sum, saturated, rows: per head, float64


def sums_of_logits(x: Tensor, valid: Tensor) -> Sums:
    """Per-head sums of softmax rows of ``x`` ``[B, H, L, S]`` (float64) over the keys where ``valid``."""
    valid = valid.expand_as(x)
    absmax = torch.where(valid, x.abs(), torch.zeros((), dtype=x.dtype)).amax(dim=(0, 2, 3))
    p = x.masked_fill(~valid, -math.inf).softmax(-1)
    rows = valid.any(-1)
    entropy = -torch.where(p > 0, p * p.log(), torch.zeros((), dtype=p.dtype)).sum(-1)
    return {"max": absmax, "entropy_sum": torch.where(rows, entropy, 0.0).sum((0, 2)),
            "saturated": ((p.amax(-1) > 0.99) & rows).sum((0, 2)).double(), "rows": rows.sum((0, 2)).double()}


def sdpa_reference(query: Tensor, key: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False,
                   scale: Optional[float] = None, enable_gqa: bool = False, samples: Optional[int] = None) -> Sums:
    q, k = query.detach().double(), key.detach().double()
    mask = None if attn_mask is None else attn_mask.detach()
    if mask is not None and mask.dim() < q.dim():  # broadcasting aligns from the right
        mask = mask.reshape((1,) * (q.dim() - mask.dim()) + tuple(mask.shape))
    if samples is not None:
        q, k = q[:samples], k[:samples]
        if mask is not None and mask.shape[0] > 1:
            mask = mask[:samples]
    if q.dim() > 4:
        if mask is not None:
            mask = mask.expand(*q.shape[:-1], k.shape[-2]).flatten(0, -4)
        q, k = q.flatten(0, -4), k.flatten(0, -4)
    while q.dim() < 4:  # no head dim: one head
        q, k = q.unsqueeze(-3), k.unsqueeze(-3)
        if mask is not None:
            mask = mask.unsqueeze(-3)
    if enable_gqa and k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    x = q @ k.transpose(-1, -2) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    valid = torch.ones(x.shape, dtype=torch.bool)
    if mask is not None:
        if mask.dtype == torch.bool:
            valid = valid & mask
        else:
            x = x + mask.double()
            valid = valid & (mask > torch.finfo(mask.dtype).min / 2)
    if is_causal:
        valid = valid & torch.ones(x.shape[-2:], dtype=torch.bool).tril()
    return sums_of_logits(x, valid)


def logits_reference(logits: Tensor) -> Sums:
    x = logits.detach().double()
    return sums_of_logits(x, logits.detach() > torch.finfo(logits.dtype).min / 2)


def combine(parts: List[Sums]) -> Sums:
    out = dict(parts[0])
    for p in parts[1:]:
        out = {"max": torch.maximum(out["max"], p["max"]), **{k: out[k] + p[k] for k in ("entropy_sum", "saturated",
                                                                                           "rows")}}
    return out


def values(s: Sums) -> Tuple[Tensor, Tensor, Tensor]:
    rows = s["rows"].clamp_min(1)
    return s["max"], s["entropy_sum"] / rows, s["saturated"] / rows


def assert_statistics(got: Any, want: Sums) -> None:
    for name, g, w in zip(("max_logit", "entropy", "saturated"), got.values(), values(want)):
        torch.testing.assert_close(g.double(), w, **TOL, msg=lambda m: f"{name}: {m}")


# ---- the statistics themselves ------------------------------------------------------------------

g = torch.Generator().manual_seed(0)


def rnd(*shape: int, s: float = 1.0) -> Tensor:
    return torch.randn(*shape, generator=g) * s


def _float_mask() -> Tensor:
    m = rnd(1, 4, 7, 9, s=4.0)
    m[..., 0] = -math.inf
    m[:, :, :, 3] = torch.finfo(torch.float32).min  # HF's fill for padded keys
    m[:, 1, 2, :] = -math.inf  # a row with no key: counts in no statistic
    return m


CASES: Dict[str, Callable[[], Dict[str, Any]]] = {
    "plain": lambda: dict(query=rnd(3, 4, 7, 8, s=3), key=rnd(3, 4, 9, 8, s=3)),
    "bool-mask": lambda: dict(query=rnd(3, 4, 7, 8), key=rnd(3, 4, 9, 8), attn_mask=rnd(3, 1, 7, 9) > -0.5),
    "float-mask": lambda: dict(query=rnd(3, 4, 7, 8), key=rnd(3, 4, 9, 8), attn_mask=_float_mask()),
    "causal-more-keys": lambda: dict(query=rnd(2, 4, 5, 8), key=rnd(2, 4, 9, 8), is_causal=True),
    "scale": lambda: dict(query=rnd(2, 4, 7, 8), key=rnd(2, 4, 9, 8), scale=2.5),
    "gqa": lambda: dict(query=rnd(2, 6, 7, 8), key=rnd(2, 2, 9, 8), enable_gqa=True, is_causal=True),
    "3-dim": lambda: dict(query=rnd(2, 5, 8), key=rnd(2, 6, 8), attn_mask=rnd(5, 6) > 0),
    "2-dim": lambda: dict(query=rnd(5, 8, s=4), key=rnd(6, 8, s=4)),
    "5-dim": lambda: dict(query=rnd(2, 3, 4, 5, 8), key=rnd(2, 3, 4, 6, 8), attn_mask=rnd(3, 1, 5, 6)),
    "saturating": lambda: dict(query=rnd(2, 2, 6, 8, s=6), key=rnd(2, 2, 6, 8, s=6)),
}


@pytest.mark.parametrize("memory_bytes", [64 << 20, 300], ids=["one-chunk", "row-by-row"])
@pytest.mark.parametrize("case", list(CASES))
def test_sdpa_statistics_equal_the_logits_by_hand(case: str, memory_bytes: int) -> None:
    g.manual_seed(0)
    args = CASES[case]()
    assert_statistics(sdpa_statistics(**args, memory_bytes=memory_bytes), sdpa_reference(**args))
    # what SDPA itself computes with these arguments agrees with the reference's reading of them
    if case not in ("float-mask",):  # a row with no key is NaN in SDPA
        SDPA(args["query"], args["key"], args["key"], **{k: v for k, v in args.items() if k not in ("query", "key")})


def test_the_first_samples_and_hand_written_logits() -> None:
    g.manual_seed(1)
    args = CASES["float-mask"]()
    assert_statistics(sdpa_statistics(**args, max_samples=2), sdpa_reference(**args, samples=2))
    logits = rnd(2, 4, 7, 9, s=5)
    logits[..., 1] = -math.inf
    assert_statistics(logit_statistics(logits, memory_bytes=200), logits_reference(logits))
    merged = rnd(6, 7, 9)  # nn.MultiheadAttention's (N * H, L, S)
    assert_statistics(logit_statistics(merged, heads=3), logits_reference(merged.view(2, 3, 7, 9)))


def test_the_working_memory_stays_within_the_budget() -> None:
    q, k = rnd(2, 2, 256, 8), rnd(2, 2, 256, 8)
    mask = rnd(1, 2, 256, 256)
    full_logits = 2 * 2 * 256 * 256 * 4  # 1 MiB of float32 logits
    budget = 128 << 10
    with LiveBytes() as mem:
        stats = sdpa_statistics(q, k, mask, memory_bytes=budget)
    assert_statistics(stats, sdpa_reference(q, k, mask))
    assert mem.peak <= budget, (mem.peak, budget)  # (plus the kernels' own scratch, which no op returns)
    assert mem.peak < full_logits / 4


# ---- recording what real attention calls received ------------------------------------------------


class Recorder:
    """The test's own record of SDPA inputs per attention module (its own wrapper and hooks)."""

    def __init__(self, modules: Dict[str, nn.Module]) -> None:
        self.modules = modules
        self.calls: Dict[str, List[Sums]] = {}
        self.current: List[str] = []

    @contextmanager
    def active(self, samples: Optional[int] = None) -> Iterator["Recorder"]:
        hooks = []
        for name, m in self.modules.items():
            hooks.append(m.register_forward_pre_hook(lambda mod, a, name=name: self.current.append(name)))
            hooks.append(m.register_forward_hook(lambda mod, a, o: [self.current.pop(), None][1]))

        def sdpa(*args: Any, **kwargs: Any) -> Tensor:
            names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
            bound = dict(zip(names, args), **kwargs)
            if self.current and torch.is_grad_enabled():
                self.calls.setdefault(self.current[-1], []).append(sdpa_reference(
                    bound["query"], bound["key"], bound.get("attn_mask"), bound.get("is_causal", False),
                    bound.get("scale"), bound.get("enable_gqa", False), samples=samples))
            return SDPA(*args, **kwargs)

        F.scaled_dot_product_attention = sdpa
        try:
            yield self
        finally:
            F.scaled_dot_product_attention = SDPA
            for h in hooks:
                h.remove()

    def expected(self) -> Dict[str, Sums]:
        return {name: combine(parts) for name, parts in self.calls.items()}


def readings_of(watcher: ScaleWatcher) -> Dict[str, float]:
    return {r.name: r.scale for r in watcher.last_readings}


def assert_readings(readings: Dict[str, float], expected: Dict[str, Sums]) -> None:
    assert expected, "the reference saw no attention call"
    for module, sums in expected.items():
        for statistic, want in zip(("max_logit", "entropy", "saturated"), values(sums)):
            heads = len(want)
            names = [f"{module}.{statistic}"] if heads == 1 else [f"{module}.{statistic}[{h}]" for h in range(heads)]
            got = torch.tensor([readings[n] for n in names], dtype=torch.float64)
            torch.testing.assert_close(got, want, **TOL, msg=lambda m: f"{module}.{statistic}: {m}")
    recorded = {r.rsplit(".", 1)[0] for r in readings if r.rsplit(".", 1)[-1].split("[")[0] in
                ("max_logit", "entropy", "saturated")}
    assert recorded == set(expected), (recorded, set(expected))


# ---- real models -----------------------------------------------------------------------------------


def vit(depth: int = 2) -> Tuple[nn.Module, Dict[str, nn.Module], Callable[[nn.Module], Tensor]]:
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, img_size=32, patch_size=8,
                              depth=depth)
    x = rnd(2, 3, 32, 32)
    return model, {f"blocks.{i}.attn": model.blocks[i].attn for i in range(depth)}, lambda m: m(x).sum()


def _tiny_bert_config(**kw: Any) -> Any:
    transformers = pytest.importorskip("transformers")
    return transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                   vocab_size=100, max_position_embeddings=16, **kw)


def bert() -> Tuple[nn.Module, Dict[str, nn.Module], Callable[[nn.Module], Tensor]]:
    transformers = pytest.importorskip("transformers")
    model = transformers.BertModel(_tiny_bert_config(attn_implementation="sdpa"))
    ids = torch.randint(0, 100, (2, 7), generator=g)
    pad = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])  # padded keys: masked
    mods = {f"encoder.layer.{i}.attention.self": model.encoder.layer[i].attention.self for i in range(2)}
    return model, mods, lambda m: m(ids, attention_mask=pad).last_hidden_state.sum()


def gpt2() -> Tuple[nn.Module, Dict[str, nn.Module], Callable[[nn.Module], Tensor]]:
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2Model(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100,
                                                           n_positions=16, attn_implementation="sdpa",
                                                           bos_token_id=0, eos_token_id=0))
    ids = torch.randint(0, 100, (2, 7), generator=g)
    return model, {f"h.{i}.attn": model.h[i].attn for i in range(2)}, lambda m: m(ids).last_hidden_state.sum()


def clip() -> Tuple[nn.Module, Dict[str, nn.Module], Callable[[nn.Module], Tensor]]:
    open_clip = pytest.importorskip("open_clip")
    model = open_clip.CLIP(embed_dim=16, vision_cfg=dict(layers=1, width=32, head_width=8, patch_size=8,
                                                         image_size=32),
                           text_cfg=dict(context_length=8, vocab_size=100, width=32, heads=4, layers=1))
    images, text = rnd(2, 3, 32, 32), torch.randint(0, 100, (2, 8), generator=g)
    mods = {"visual.transformer.resblocks.0.attn": model.visual.transformer.resblocks[0].attn,
            "transformer.resblocks.0.attn": model.transformer.resblocks[0].attn}
    return model, mods, lambda m: sum(t.sum() for t in m(images, text)[:2])


class GQAttention(nn.Module):
    """Grouped-query attention: 6 query heads share 2 key/value heads, causal, its own scale."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.kv = nn.Linear(16, 6 * 4), nn.Linear(16, 2 * 2 * 4)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q = self.q(x).view(b, n, 6, 4).transpose(1, 2)
        k, v = self.kv(x).view(b, n, 2, 2, 4).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.9, enable_gqa=True)


def gqa() -> Tuple[nn.Module, Dict[str, nn.Module], Callable[[nn.Module], Tensor]]:
    model = nn.Sequential(nn.Linear(16, 16), GQAttention())
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1)) * 3
    return model, {"1": model[1]}, lambda m: m(x).sum()


class TwoHeadCounts(nn.Module):
    """Two attention modules of different head counts (6 grouped-query heads, then 4 of width 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.gqa, self.wide = GQAttention(), nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self.gqa(x)  # (b, 6, n, 4): back to (b, n, 24), then 16 wide
        y = y.transpose(1, 2).reshape(x.shape[0], x.shape[1], 24)[..., :16]
        return self.wide(y, y, y, need_weights=False)[0]


def mixed_heads() -> Tuple[nn.Module, Dict[str, nn.Module], Callable[[nn.Module], Tensor]]:
    model = TwoHeadCounts()
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(2)) * 3
    return model, {"gqa": model.gqa, "wide": model.wide}, lambda m: m(x).sum()


def fusion() -> Tuple[nn.Module, Dict[str, nn.Module], Callable[[nn.Module], Tensor]]:
    sys.path.insert(0, EXAMPLES)
    from sensor_fusion_attention import SensorFusionAttention

    model = SensorFusionAttention(16, 2, AttentionBiasGenerator(bias_scale=4.0, min_scale=0.5, max_scale=5.0,
                                                                use_local_bias=True), health_dim=1)
    queries, tokens, health = rnd(4, 16), rnd(2, 6, 16), torch.rand(2, 6, 1, generator=g)
    return model, {"SensorFusionAttention": model}, lambda m: m(queries, tokens, health)[0].sum()


MODELS = {"timm-vit": vit, "hf-bert-sdpa": bert, "hf-gpt2-sdpa": gpt2, "open-clip": clip, "gqa": gqa,
          "mixed-head-counts": mixed_heads, "fusion-example": fusion}


def train_one_check(model: nn.Module, loss_of: Callable[[nn.Module], Tensor], attention: Any = True,
                    log_dir: Any = None, forwards: int = 1, **kw: Any) -> ScaleWatcher:
    watcher = ScaleWatcher(model, log_dir=log_dir, every_n_steps=1, attention=attention, plot=False, **kw)
    watcher.start()  # step 0 is a check: its forwards are watched from here
    model.train()
    for _ in range(forwards):
        loss_of(model).backward()
    watcher.step(0)
    watcher.close()
    return watcher


@pytest.mark.parametrize("build", list(MODELS.values()), ids=list(MODELS))
def test_real_models_equal_the_logits_by_hand(build: Callable[[], Any]) -> None:
    torch.manual_seed(0)
    model, modules, loss_of = build()
    recorder = Recorder(modules)
    with recorder.active():
        watcher = train_one_check(model, loss_of)
    assert_readings(readings_of(watcher), recorder.expected())
    assert F.scaled_dot_product_attention is SDPA


def test_micro_batches_count_and_eval_forwards_do_not() -> None:
    model, modules, _ = gqa()
    xs = [rnd(3, 5, 16, s=3), rnd(4, 4, 16, s=2)]
    watcher = ScaleWatcher(model, every_n_steps=1, attention={"samples": 2}, plot=False)
    watcher.start()
    for x in xs:  # two micro-batches of one optimizer step
        model(x).sum().backward()
        model.eval()
        with torch.no_grad():  # a validation forward in between: not the check step's training
            model(rnd(2, 5, 16, s=9))
        model.train()
    watcher.step(0)
    watcher.close()
    # the reference: the first 2 samples of each training micro-batch, logits by hand
    expected = {"1": combine([sdpa_reference(*_gqa_inputs(model, x), is_causal=True, scale=0.9, enable_gqa=True,
                                             samples=2) for x in xs])}
    assert_readings(readings_of(watcher), expected)


@pytest.mark.parametrize("calls_a_pass", [2, 0], ids=["two-calls-a-pass", "each-call-in-row-chunks"])
def test_a_cpu_pass_stays_within_its_bytes(monkeypatch: pytest.MonkeyPatch, calls_a_pass: int) -> None:
    """On a CPU the kept calls go in passes of at most CPU_PASS_BYTES (their logits stay in the cache,
    the workspace stays small enough to keep); a call larger than that is computed in row chunks of
    its own. Either way the values are those of the logits by hand."""
    torch.manual_seed(0)
    model, modules, loss_of = vit(depth=4)
    q = torch.empty(2, 3, 17, 64)  # one block's query and key: 17 tokens, 3 heads of 64
    one_call = attention_stats.stacked_bytes(q, q)
    # row chunks: 8 rows of 17 logits a chunk, so (1 sample, 1 head, 8 queries) at a time
    row_chunks = attention_stats.BYTES_PER_LOGIT * 17 * 8
    monkeypatch.setattr(attention_stats, "CPU_PASS_BYTES", calls_a_pass * one_call if calls_a_pass else row_chunks)
    chunks: List[Tuple[int, ...]] = []  # the shapes of the row chunks computed
    real_chunk = attention_stats._chunk

    def chunk(x: Tensor, invalid: Optional[Tensor]) -> Any:
        chunks.append(tuple(x.shape))
        return real_chunk(x, invalid)

    monkeypatch.setattr(attention_stats, "_chunk", chunk)
    recorder = Recorder(modules)
    with recorder.active():
        watcher = ScaleWatcher(model, every_n_steps=1, attention=True, plot=False)
        watcher.start()
        loss_of(model).backward()
        watcher.step(0)
    assert_readings(readings_of(watcher), recorder.expected())
    watch = watcher.attention
    assert watch is not None
    buffers = watch.workspace._buffers
    if calls_a_pass:  # four calls in two passes: the logits buffer holds two calls' logits
        assert buffers["logits"].numel() == 2 * 2 * 3 * 17 * 17
        assert watch.workspace.nbytes <= attention_stats.CPU_PASS_BYTES
        assert not chunks
    else:  # each call on its own: 2 samples x 3 heads x (8 + 8 + 1 queries)
        assert not buffers
        assert sorted(set(chunks)) == [(1, 1, 1, 17), (1, 1, 8, 17)] and len(chunks) == 4 * 2 * 3 * 3
    watcher.close()


def test_a_pass_takes_the_budget_capped_on_a_cpu_only() -> None:
    cap = attention_stats.CPU_PASS_BYTES
    assert attention_stats.pass_bytes(64 << 20, torch.device("cpu")) == cap
    assert attention_stats.pass_bytes(cap // 4, torch.device("cpu")) == cap // 4  # a smaller budget rules
    assert attention_stats.pass_bytes(64 << 20, torch.device("cuda")) == 64 << 20  # (a device object: no GPU needed)


def test_the_workspace_is_reused_from_check_to_check_and_given_back_at_close() -> None:
    """The batched pass writes into buffers kept between checks (no fresh pages on a CPU), two
    shapes in one check share them, every check's values stay right; close gives them back."""
    model, _, _ = gqa()
    watcher = ScaleWatcher(model, every_n_steps=1, attention=True, plot=False)
    watcher.start()
    watch = watcher.attention
    assert watch is not None
    addresses: List[Dict[str, Tensor]] = []
    for step, seed in enumerate((3, 4, 5)):
        xs = [rnd(3, 5, 16, s=seed), rnd(2, 7, 16, s=seed + 10)]  # two shapes: two batched passes
        for x in xs:
            model(x).sum().backward()
        watcher.step(step)
        expected = {"1": combine([sdpa_reference(*_gqa_inputs(model, x), is_causal=True, scale=0.9,
                                                 enable_gqa=True) for x in xs])}
        assert_readings(readings_of(watcher), expected)
        addresses.append(dict(watch.workspace._buffers))  # the tensors themselves (an address may come back)
    assert addresses[0] and all(set(a) == set(addresses[0]) and all(a[n] is addresses[0][n] for n in a)
                                for a in addresses[1:]), addresses
    watcher.close()
    assert watch.workspace.nbytes == 0  # closed: given back


def _gqa_inputs(model: nn.Module, x: Tensor) -> Tuple[Tensor, Tensor]:
    with torch.no_grad():
        h, m = model[0](x), model[1]
        b, n, _ = x.shape
        return m.q(h).view(b, n, 6, 4).transpose(1, 2), m.kv(h).view(b, n, 2, 2, 4).permute(2, 0, 3, 1, 4)[0]


def test_multihead_attention_with_weights_is_read_from_its_softmax() -> None:
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    x = rnd(2, 5, 16, s=2)
    mask = torch.zeros(5, 5).masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), -math.inf)

    def loss_of(m: nn.Module) -> Tensor:
        return m(x, x, x, attn_mask=mask)[0].sum()  # need_weights=True: no SDPA, a softmax by hand

    watcher = train_one_check(mha, loss_of)
    with torch.no_grad():  # the logits by hand, from the in-projection
        q, k = F.linear(x, mha.in_proj_weight[:16], mha.in_proj_bias[:16]), F.linear(x, mha.in_proj_weight[16:32],
                                                                                        mha.in_proj_bias[16:32])
        split = lambda t: t.view(2, 5, 4, 4).transpose(1, 2)  # noqa: E731
        expected = sdpa_reference(split(q), split(k), mask)
    assert_readings(readings_of(watcher), {"MultiheadAttention": expected})


class HandAttention(nn.Module):
    """Attention written by hand: ``softmax(q k^T / sqrt(d) + bias)`` (keeps its logits for the test)."""

    def __init__(self) -> None:
        super().__init__()
        self.qk = nn.Linear(8, 16)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        q, k = self.qk(x).view(*x.shape[:2], 2, 2, 4).permute(2, 0, 3, 1, 4)
        self.logits = q @ k.transpose(-1, -2) / 2.0 + bias
        return torch.softmax(self.logits, dim=-1).sum()


class HandModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.attn = HandAttention()

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        return self.encoder.attn(x, bias)


def test_hand_written_attention_opted_in_by_pattern_and_named_when_not(caplog: Any) -> None:
    model, x = HandModel(), rnd(2, 6, 8, s=2)
    bias = rnd(2, 1, 6, 6, s=3).masked_fill(rnd(1, 1, 6, 6) > 1, -math.inf)
    watcher = train_one_check(model, lambda m: m(x, bias), attention={"softmax": ["*.attn"]})
    assert_readings(readings_of(watcher), {"encoder.attn": logits_reference(model.encoder.attn.logits)})
    with caplog.at_level(logging.WARNING, logger="scalewatch"):
        watcher = train_one_check(model, lambda m: m(x, bias), attention=True)
    assert not watcher.last_readings
    warned = [r.getMessage() for r in caplog.records if "attention" in r.getMessage()]
    assert len(warned) == 1 and "encoder.attn (HandAttention" in warned[0] and "softmax" in warned[0], warned


def test_bert_eager_is_named_with_its_reason(caplog: Any) -> None:
    transformers = pytest.importorskip("transformers")
    model = transformers.BertModel(_tiny_bert_config(attn_implementation="eager"))
    ids = torch.randint(0, 100, (2, 5), generator=g)
    with caplog.at_level(logging.WARNING, logger="scalewatch"):
        train_one_check(model, lambda m: m(ids).last_hidden_state.sum())
    warned = [r.getMessage() for r in caplog.records if "attention" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "encoder.layer.0.attention.self" in warned[0] and "attn_implementation='eager'" in warned[0]


# ---- the schedule: armed for check-step forwards only ----------------------------------------------


def test_nothing_is_installed_off_check_steps() -> None:
    model, modules, loss_of = gqa()
    hooks = nn.modules.module
    seen: List[Tuple[bool, int]] = []
    model[1].register_forward_pre_hook(lambda m, a: seen.append(
        (F.scaled_dot_product_attention is not SDPA, len(hooks._global_forward_pre_hooks))))
    watcher = ScaleWatcher(model, every_n_steps=3, attention=True, plot=False)
    for step in range(7):
        loss_of(model).backward()
        watcher.step(step)
    watcher.close()
    installed = [s for s, (patched, n) in enumerate(seen) if patched or n]
    assert installed == [2, 5]  # the forwards of the two check steps, nothing else
    assert F.scaled_dot_product_attention is SDPA and not hooks._global_forward_pre_hooks
    assert not hooks._global_forward_hooks



def test_no_hook_once_the_attention_was_seen() -> None:
    """Calls are attributed through the running frames: no hook on every module, and once every
    attention module has been seen calling SDPA, none at all (the check step's cost)."""
    model, modules, loss_of = vit()
    hooks = nn.modules.module
    watcher = ScaleWatcher(model, every_n_steps=1, attention=True, plot=False)
    watcher.start()  # armed for step 0's forwards
    hooked = []
    for step in range(3):
        hooked.append(sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()))
        assert not hooks._global_forward_pre_hooks and not hooks._global_forward_hooks
        loss_of(model).backward()
        watcher.step(step)
    watcher.close()
    assert 0 < hooked[0] < len(list(model.modules())) / 4  # the attention modules (and the model's children)
    assert hooked[1:] == [0, 0]
    assert sum(1 for r in watcher.last_readings if r.name.startswith("blocks.")) == 2 * 3 * 3

class MLPWithBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.gen = AttentionBiasGenerator(bias_scale=2.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).sum() + self.gen(torch.sigmoid(x).unsqueeze(-1).expand(-1, -1, 4)).sum()


def test_a_model_without_attention_warns_once_and_records_nothing(tmp_path: Any, caplog: Any) -> None:
    model = MLPWithBias()
    with caplog.at_level(logging.WARNING, logger="scalewatch"):
        watcher = ScaleWatcher(model, log_dir=tmp_path, every_n_steps=1, attention=True, plot=False)
        watcher.start()
        for step in range(3):
            model(rnd(2, 4)).backward()
            watcher.step(step)
        watcher.close()
    warned = [r.getMessage() for r in caplog.records if "attention" in r.getMessage()]
    assert len(warned) == 1 and "MLPWithBias made no attention call" in warned[0], warned
    records = list(iter_history(watcher.history_path))
    assert records and not any(ATTENTION_FIELD in r for r in records)  # the scale is recorded, no empty panel


@pytest.mark.filterwarnings("ignore:Using `torch.compile\\(module\\)` when there are global hooks")
def test_a_compiled_model_is_named_and_trains_on(caplog: Any) -> None:
    model, _, loss_of = gqa()
    compiled = torch.compile(model, backend="eager")
    with caplog.at_level(logging.WARNING, logger="scalewatch"):
        ScaleWatcher(compiled, attention=True, plot=False).close()
        # the model watched, its compiled twin trained: the graph hides the calls, training goes on
        watcher = ScaleWatcher(model, every_n_steps=2, attention=True, plot=False)
        for step in range(4):
            loss_of(compiled).backward()
            watcher.step(step)
        watcher.close()
    warned = [r.getMessage() for r in caplog.records if "attention" in r.getMessage()]
    assert len(warned) == 2 and "torch.compile'd module" in warned[0] and "no module of Sequential" in warned[1]
    assert not watcher.last_readings and F.scaled_dot_product_attention is SDPA


def test_names_are_the_models_own_through_a_wrapper() -> None:
    model, modules, loss_of = gqa()
    wrapped = nn.DataParallel(model)  # on the CPU it just calls the module: paths gain "module."
    watcher = train_one_check(wrapped, lambda m: loss_of(model))
    assert "1.max_logit[0]" in readings_of(watcher)


# ---- records, rules, loggers, views ---------------------------------------------------------------


class Collect(ScaleSink):
    def __init__(self) -> None:
        self.starts: List[List[str]] = []
        self.metrics: Dict[int, Dict[str, float]] = {}

    def start(self, names: Any, summarised: Any = ()) -> None:
        self.starts.append(list(names) + list(summarised))

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        self.metrics[step] = dict(metrics)


def test_records_rules_loggers_and_views(tmp_path: Any, capsys: Any) -> None:
    from scalewatch.dashboards.cli import main as cli

    threshold = 0.5  # far below this model's logits: near_upper must fire, pinned never (no gradient)
    for run_name in ("run", "other"):
        model, modules, loss_of = gqa()
        sink, alerts = Collect(), []
        watcher = ScaleWatcher(model, log_dir=tmp_path / run_name, every_n_steps=2, loggers=[sink], plot=True,
                               attention={"max_logit": threshold}, alert_callback=alerts.append)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4)  # the loss is unbounded: a small step keeps it finite
        for step in range(6):
            loss_of(model).backward()
            watcher.step(step)
            opt.step()
            opt.zero_grad()
        watcher.close()
    records = [r for r in iter_history(watcher.history_path) if r["step"] == 1]
    by_name = {r["name"]: r for r in records}
    first = by_name["1.max_logit[3]"]
    assert first["tensor"] == "1.max_logit" and first["index"] == 3 and first[ATTENTION_FIELD] == "max_logit"
    assert first["scale"] == first["raw"] and first["grad"] is None and first["max"] == threshold
    assert first["min"] is None and first["alerts"] == ["near_upper"]
    ent = by_name["1.entropy[0]"]
    assert ent[ATTENTION_FIELD] == "entropy" and ent["max"] is None and ent["min"] is None
    assert by_name["1.saturated[5]"][ATTENTION_FIELD] == "saturated"
    assert len(records) == 3 * 6
    kinds = {(a.name.split("[")[0], a.kind) for a in alerts}
    assert kinds == {("1.max_logit", "near_upper")}  # one per crossing, never pinned
    # an alert says it is the softmax's statistic against its threshold, not a scale near max_scale
    from scalewatch.callbacks.notify_message import format_message

    assert all(a.attention == "max_logit" and a.message.startswith("Attention max_logit near its threshold!")
               and "max_scale" not in a.message and "threshold 0.5" in a.message for a in alerts), alerts[0].message
    _, body = format_message("run", 1, alerts[:1], {})
    assert f"max_logit {alerts[0].scale:.4g} · threshold 0.5" in body and "grad" not in body, body
    # logger keys, and the loggers learnt the names when they first appeared
    assert sink.metrics[1]["scalewatch/1.max_logit[0]/scale"] == by_name["1.max_logit[0]"]["scale"]
    assert sink.metrics[1]["scalewatch/1.max_logit[0]/max"] == threshold
    assert "scalewatch/1.entropy[0]/grad" not in sink.metrics[1]
    assert sink.starts[0] == [] and "1.saturated[5]" in sink.starts[-1]
    # the views read the records unchanged
    run = str(tmp_path / "run")
    assert os.path.exists(os.path.join(run, "scale_history.png"))
    for argv in (["report", run], ["watch", "--once", "--plain", run], ["compare", run, str(tmp_path / "other")],
                 ["plot", run, "-o", str(tmp_path / "p.png")]):
        assert cli(argv) == 0, argv
    out = capsys.readouterr().out
    assert "1.max_logit" in out and "1.entropy" in out
    # the report's bounds column: max_logit's threshold, no bound for the others (not a scale's open range)
    assert cli(["report", run]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("1.")}
    assert "threshold " in rows["1.max_logit"] and "no bound" in rows["1.entropy"] and "no bound" in rows[
        "1.saturated"] and "(-inf, inf)" not in out, rows
    # the watch's lines say what a statistic is, its threshold, and no gradient or open range
    assert cli(["watch", "--once", "--plain", run]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if ".max_logit" in line or ".entropy" in line]
    assert any(" 1.max_logit (6 heads)  max |logit|=" in line and "  threshold " in line for line in lines), lines
    assert any(" 1.entropy (6 heads)  row entropy (nats)=" in line for line in lines), lines
    assert not any("grad=" in line or "inf" in line for line in lines), lines



def test_the_plot_draws_no_gradient_strip_for_attention(tmp_path: Any) -> None:
    from matplotlib.image import imread

    from scalewatch.dashboards.plot import never_had_gradient, plot_history

    model, _, loss_of = fusion()  # its bias scale has a gradient; its attention statistics none
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    watcher = ScaleWatcher(model, log_dir=tmp_path, every_n_steps=2, attention=True, plot=True, max_plot_panels=8)
    for step in range(4):
        loss_of(model).backward()
        watcher.step(step)
        opt.step()
        opt.zero_grad()
    watcher.close()
    fig = plot_history(watcher.history_path, max_panels=None)
    try:
        strips = [ax for ax in fig.axes if "gradient" in ax.get_ylabel()]
        texts = [t.get_text() for ax in strips for t in ax.texts]
        height = fig.get_size_inches()[1]
        # each panel names what it shows: the scale, or the statistic (and max_logit's bound is a threshold)
        labels = [ax.get_ylabel() for ax in fig.axes if ax not in strips]
        legends = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        titles = [ax.get_title("left") for ax in fig.axes if ax not in strips]
        limits = [ax.get_ylim() for ax in fig.axes if ax not in strips][1:]
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    panels = len(fig.axes) - len(strips)
    assert panels == 1 + 3, [ax.get_title() for ax in fig.axes]  # the bias scale and the three statistics
    assert len(strips) == 1 and "no gradient readings" not in texts  # under the scale only: no empty strip
    assert labels == ["scale", "max |logit|", "row entropy (nats)", "rows with p > 0.99"], labels
    assert "threshold = 100" in legends and "max_scale = 100" not in legends, legends
    assert "near_upper above 0.9 x threshold = 90" in legends, legends
    # a statistic's band, title and bounds say what it is: heads, a threshold or no bound, not a scale's range
    assert "max |logit|, min..max\nof all 2 heads" in legends and "row entropy (nats), min..max\nof all 2 heads" \
        in legends and not any(lbl.startswith("scale, min..max") for lbl in legends), legends
    assert titles[1].endswith("threshold 100") and " 2 heads, " in titles[1], titles
    assert titles[2].endswith("no bound") and titles[3].endswith("no bound") and "inf" not in "".join(titles[1:])
    assert all(low >= -0.04 * high - 1e-12 for low, high in limits), limits  # never negative: the axis starts at ~0
    png = imread(os.path.join(tmp_path, "scale_history.png"))
    assert png.shape[0] == round(height * 110)  # the written PNG has this layout (dpi 110): no strip's height
    assert not never_had_gradient(watcher_series_of(watcher.history_path, "attention_bias"))


def watcher_series_of(path: str, part: str) -> Any:
    from scalewatch.dashboards.plot import load_series

    return next(t for t in load_series(path)[0] if part in t.name)

# ---- bad input ---------------------------------------------------------------------------------------

BAD = [({"max_logit": -1}, ValueError, "attention['max_logit']"), ({"max_logit": 0}, ValueError, "> 0"),
       ({"max_logit": "30"}, TypeError, "attention['max_logit']"), ({"max_logit": True}, TypeError, "number"),
       ({"max_logits": 30.0}, ValueError, "'max_logits'"), ({"samples": 0}, ValueError, "attention['samples']"),
       ({"memory_mib": float("nan")}, ValueError, "memory_mib"), ({"modules": 3}, TypeError, "modules"),
       ("yes", TypeError, "`attention` must be True, False or a dict")]


@pytest.mark.parametrize("attention, error, words", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_attention_is_named(attention: Any, error: type, words: str) -> None:
    with pytest.raises(error, match=_re(words)):
        check_attention(attention)
    with pytest.raises(error, match=_re(words)):
        ScaleWatcher(nn.Linear(2, 2), attention=attention)


def _re(words: str) -> str:
    import re

    return re.escape(words)


def test_defaults_and_doors_take_it() -> None:
    assert check_attention(True).max_logit == DEFAULT_MAX_LOGIT and check_attention(False) is None
    assert check_attention({"softmax": "*.attn"}).softmax == ("*.attn",)
    with pytest.raises(ValueError, match="match no module"):
        ScaleWatcher(nn.Linear(2, 2), attention={"softmax": ["*.attn"]})
    from scalewatch.callbacks.hf import ScaleMonitorCallback
    from scalewatch.callbacks.mmengine import ScaleMonitorHook
    from scalewatch.callbacks.scale_monitor import MisconfigurationException, ScaleMonitor

    assert ScaleMonitor(attention={"max_logit": 30.0}).settings.attention_options.max_logit == 30.0
    with pytest.raises(MisconfigurationException, match=_re("attention['max_logit']")):
        ScaleMonitor(attention={"max_logit": -1})
    assert ScaleMonitorCallback(attention=True).settings.attention_options is not None
    with pytest.raises(ValueError, match="'bogus'"):
        ScaleMonitorCallback(attention={"bogus": 1})
    assert ScaleMonitorHook(attention=dict(max_logit=30)).settings.attention_options.max_logit == 30.0


# ---- through every door -----------------------------------------------------------------------------


def _attention_records(path: str) -> List[Dict[str, Any]]:
    return [r for r in iter_history(path) if ATTENTION_FIELD in r]


def test_lightning_door(tmp_path: Any) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from models import modules_for
    from scalewatch.callbacks import ScaleMonitor

    class WithAttention(modules_for("lightning.pytorch")[0]):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.attn = GQAttention()

        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            (x,) = batch
            return super().training_step(batch, batch_idx) + self.attn(x.view(-1, 4, 2).repeat(1, 1, 8)).mean()

    monitor = ScaleMonitor(every_n_steps=2, attention={"max_logit": 30.0}, plot=False)
    trainer = pl.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=[monitor])
    trainer.fit(WithAttention())
    records = _attention_records(monitor.history_path)
    assert {r["step"] for r in records} == {1, 3} and {r["tensor"] for r in records} == {
        "attn.max_logit", "attn.entropy", "attn.saturated"}
    assert F.scaled_dot_product_attention is SDPA


def test_hf_door_with_bert(tmp_path: Any) -> None:
    transformers = pytest.importorskip("transformers")
    from scalewatch.callbacks.hf import ScaleMonitorCallback

    model = transformers.BertForSequenceClassification(_tiny_bert_config(attn_implementation="sdpa", num_labels=2))
    data = [{"input_ids": torch.randint(0, 100, (6,), generator=g), "labels": torch.tensor(i % 2)} for i in range(16)]
    callback = ScaleMonitorCallback(every_n_steps=2, attention=True, plot=False)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=4,
                                          per_device_train_batch_size=4, save_strategy="no", disable_tqdm=True,
                                          logging_steps=2, dataloader_num_workers=0)
    transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
    records = _attention_records(callback.watcher.history_path)
    assert {r["step"] for r in records} == {2, 4}
    assert "bert.encoder.layer.1.attention.self.max_logit" in {r["tensor"] for r in records}


def test_mmengine_door(tmp_path: Any) -> None:
    pytest.importorskip("mmengine")
    from mmengine_models import DriftNet, make_runner

    class AttnNet(DriftNet):
        def __init__(self) -> None:
            super().__init__()
            self.attn = GQAttention()

        def forward(self, x: Tensor, mode: str = "tensor") -> Any:
            out = super().forward(x, mode)
            if mode == "loss":
                out["loss"] = out["loss"] + self.attn(x.view(-1, 4, 2).repeat(1, 1, 8)).mean()
            return out

    runner = make_runner(str(tmp_path), hook=dict(interval=2, attention=dict(max_logit=30), plot=False),
                         max_iters=4, model=AttnNet(), name=f"attention-{os.getpid()}")
    runner.train()
    from scalewatch.callbacks.mmengine import ScaleMonitorHook

    hook = next(h for h in runner.hooks if isinstance(h, ScaleMonitorHook))
    records = _attention_records(hook.watcher.history_path)
    assert {r["step"] for r in records} == {2, 4} and records[0]["max"] == 30.0


def test_history_lines_are_json_with_the_field(tmp_path: Any) -> None:
    model, _, loss_of = gqa()
    train_one_check(model, loss_of, log_dir=tmp_path)
    with open(tmp_path / "scalewatch_history.jsonl", encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    assert {r[ATTENTION_FIELD] for r in lines} == {"max_logit", "entropy", "saturated"}


# ---- several processes -------------------------------------------------------------------------------


def test_ddp_records_the_global_batch(tmp_path: Any) -> None:
    """2 gloo ranks, each its part of the batch: every rank records, and rank 0 writes, what one process
    computes over the whole batch (max over ranks, row-weighted means), with and without a watched scale;
    each check is one collective (with a scale, the attention sums ride in the scales' one) once the ranks
    agreed on their modules; a module that runs on one rank only is recorded (that rank's rows), no
    collective of mismatched sizes."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import attention_ddp_script as script
    from front_doors import torchrun

    out = torchrun(os.path.join(os.path.dirname(os.path.abspath(__file__)), "attention_ddp_script.py"),
                   str(tmp_path / "ddp"), str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = []
    for rank in range(2):
        with open(tmp_path / f"rank{rank}.json") as f:
            ranks.append(json.load(f))
    for name, with_scale, uneven in script.RUNS:
        model = script.build(with_scale, uneven)
        watcher = ScaleWatcher(model, log_dir=tmp_path / "one" / name, every_n_steps=1, attention=True, plot=False)
        watcher.start()
        for step in range(script.STEPS):
            x, keep = script.batch(step)
            loss = model(x, keep)
            if uneven and step >= 1:  # the module rank 1 alone runs, over rank 1's samples
                loss = loss + model.extra(x[script.SPLIT:]).sum()
            loss.backward()
            watcher.step(step)
        watcher.close()

        def records(path: Any) -> Dict[Tuple[int, str], float]:
            return {(r["step"], r["name"]): r["scale"] for r in iter_history(path)}

        ddp, one = records(tmp_path / "ddp" / name / "scalewatch_history.jsonl"), records(watcher.history_path)
        extra = 3 * 2 * (script.STEPS - 1) if uneven else 0
        assert set(ddp) == set(one) and len(one) == script.STEPS * (3 * (4 + 4) + with_scale) + extra, name
        for key, want in one.items():
            assert ddp[key] == pytest.approx(want, rel=1e-5, abs=1e-6), (name, key)
        last = {n: v for (step, n), v in one.items() if step == script.STEPS - 1}
        for rank, result in enumerate(ranks):
            assert result[name]["last"] == pytest.approx(last, rel=1e-5, abs=1e-6), (name, rank)
            # one a check once the ranks agreed on their modules (the first check, and the one where a
            # module appears on one rank: an all_gather_object and a second all_reduce)
            agreements = [0, 1] if uneven else [0]
            assert result[name]["collectives"] == [1 + (s in agreements) for s in range(script.STEPS)], (name, rank)


def test_lightning_ddp_records_the_global_batch(tmp_path: Any) -> None:
    """Lightning's door under its DDP strategy (2 gloo processes, ScaleMonitor(attention=True) and a watched
    bias scale) records what one process records over the same global batches; one all_reduce a check
    once the ranks agreed on their modules."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    import lightning_attention_ddp_script as script

    runs: Dict[int, List[Dict[str, Any]]] = {}
    for devices in (1, 2):
        root = tmp_path / f"devices{devices}"
        root.mkdir()
        if devices == 1:  # the reference: one process, here
            script.main(str(root), 1)
        else:
            out = subprocess.run([sys.executable, script.__file__, str(root), str(devices)], capture_output=True,
                                 text=True, timeout=300, env=dict(os.environ, PYTHONWARNINGS="ignore"))
            assert out.returncode == 0, out.stderr[-3000:]
        runs[devices] = []
        for rank in range(devices):
            with open(root / f"rank{rank}.json") as f:
                runs[devices].append(json.load(f))
    one, ddp = runs[1][0], runs[2]

    def records(path: str) -> Dict[Tuple[int, str], float]:
        return {(r["step"], r["name"]): r["scale"] for r in iter_history(path)}

    want, got = records(one["history"]), records(ddp[0]["history"])
    steps = len(one["collectives"])
    assert steps == 2 and len(want) == steps * (3 * (4 + 4) + 1)  # two modules' statistics and the scale
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    for rank, result in enumerate(ddp):
        assert result["last"] == pytest.approx(one["last"], rel=1e-5, abs=1e-6), rank
        # the attention sums ride in the scales' one, once the ranks agreed on their modules (first check)
        assert result["collectives"] == [2] + [1] * (steps - 1), rank
    assert one["collectives"] == [0] * steps
