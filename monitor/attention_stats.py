"""The attention softmax itself, per head: the largest |logit|, the mean row entropy, the saturated rows.

The scale bounds exist to keep the attention softmax in its sensitive range (DESIGN.md:
beyond a logit gap of about 5 the softmax gradient ``p(1 - p)`` is below 0.007). These
statistics measure that range on the live model instead of its proxy, from the inputs of
``torch.nn.functional.scaled_dot_product_attention`` (:func:`sdpa_statistics`) or from the
logits a hand-written softmax is given (:func:`logit_statistics`), per head ``h``:

- ``max_logit[h]``: the largest ``|logit|`` over batch, queries and un-masked keys, with
  ``logit = scale * q @ k^T + attn_mask`` (a float mask, e.g. an attention bias, adds in);
  Kimi K2's QK-Clip watches this number, "MaxLogit" (arXiv 2507.20534);
- ``entropy[h]``: the mean entropy of the attention rows, in nats;
- ``saturated[h]``: the share of rows whose top probability exceeds 0.99
  (:data:`SATURATED_ROW_THRESHOLD`).

A key is masked when a boolean mask says ``False``, ``is_causal`` hides it (key index >
query index, SDPA's top-left alignment), or its float mask (or logit) is ``-inf`` or at most
half the dtype's lowest value (the ``finfo(dtype).min`` fill HF Transformers and others use).
A row with no un-masked key counts in no statistic. Dropout is not applied (it acts after the
softmax).

Everything is computed in float32 under ``no_grad`` with autocast off, a chunk of rows at a time,
so that the logits held at once stay within a memory budget; the results are per-head sums kept
on the input's device (:class:`HeadStatistics`), so nothing here reads a value on the host.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor

#: a row counts as saturated when its largest probability exceeds this (softmax gradient < 0.01)
SATURATED_ROW_THRESHOLD = 0.99
#: the three statistics, as the readings name them: ``MODULE.max_logit[h]``, ...
MAX_LOGIT, ENTROPY, SATURATED = "max_logit", "entropy", "saturated"
STATISTICS = (MAX_LOGIT, ENTROPY, SATURATED)
#: bytes of working memory per logit in a chunk: the float32 logits, their probabilities, the
#: log-sum-exp's temporary, the boolean mask and a converted float mask (measured: ~17)
BYTES_PER_LOGIT = 20
#: on a CPU, the working bytes of one pass at most (:func:`stacked_bytes`, at least one call or row):
#: the statistics sweep the logits about eight times, which then run from the cache instead of main
#: memory (ViT-tiny at 224x224, batch 2, twelve calls of 197 tokens, each 5 MiB by that estimate, at
#: a training loop's check: 27-33 ms in one pass of 28 MiB, fresh pages at each check; 16-21 ms a
#: call a pass, 2.4 MiB kept)
CPU_PASS_BYTES = 8 << 20

_LOG_SATURATED = math.log(SATURATED_ROW_THRESHOLD)

# ---- "is scalewatch computing attention statistics right now?" ---------------------------

_computing = 0


class _Computing:
    """``with computing():`` counts in and out (a class, not a generator: it runs for every kept SDPA call)."""

    __slots__ = ()

    def __enter__(self) -> None:
        global _computing
        _computing += 1

    def __exit__(self, *_: object) -> None:
        global _computing
        _computing -= 1


_COMPUTING = _Computing()


def computing() -> _Computing:
    """Marks the tensor work of the attention statistics (an op log tells it from training's own)."""
    return _COMPUTING


def is_computing() -> bool:
    """True inside :func:`computing`: the tensor work running now is scalewatch's attention statistics."""
    return _computing > 0


# ---- per-head sums ----------------------------------------------------------------------------


@dataclass
class HeadStatistics:
    """Per-head sums over every row seen, on the device of the attention's inputs (float32).

    ``max_logit`` is a running maximum; ``entropy_sum``, ``saturated_rows`` and ``rows``
    are sums over rows.
    """

    max_logit: Tensor
    entropy_sum: Tensor
    saturated_rows: Tensor
    #: rows counted per head (float32: exact up to 2**24 a check), or one number for every head
    rows: "Tensor | float"

    @property
    def heads(self) -> int:
        return self.max_logit.numel()

    @classmethod
    def zeros(cls, heads: int, device: torch.device) -> "HeadStatistics":
        sums = torch.zeros(4, heads, device=device)
        return cls(sums[0], sums[1], sums[2], sums[3])

    def add_(self, other: "HeadStatistics", heads: slice = slice(None)) -> "HeadStatistics":
        """Fold ``other`` (statistics of the heads ``heads`` of these) in, in place."""
        top = self.max_logit[heads]
        torch.maximum(top, other.max_logit, out=top)
        self.entropy_sum[heads] += other.entropy_sum
        self.saturated_rows[heads] += other.saturated_rows
        if isinstance(self.rows, Tensor):
            self.rows[heads] += other.rows
        elif heads == slice(None) and not isinstance(other.rows, Tensor):
            self.rows += other.rows
        else:  # per head from here on
            self.rows = torch.full_like(self.entropy_sum, self.rows)
            self.rows[heads] += other.rows
        return self

    def values(self) -> Tuple[Tensor, Tensor, Tensor]:
        """``(max_logit, mean entropy, saturated share)`` per head, float32 (rows never seen: 0)."""
        rows = self.rows.clamp_min(1) if isinstance(self.rows, Tensor) else max(self.rows, 1.0)
        return self.max_logit, self.entropy_sum / rows, self.saturated_rows / rows


# ---- the statistics of one chunk of logits -----------------------------------------------------


#: what a masked logit is set to: finite, so that ``exp(-FILL - top)`` is 0 and ``0 * (-FILL)`` is 0, not NaN
FILL = 1e30


def _chunk(x: Tensor, invalid: Optional[Tensor]) -> HeadStatistics:
    """Statistics of float32 logits ``x`` ``[b, h, l, S]`` (overwritten), ``invalid`` broadcastable to it.

    A handful of passes over the logits and one exponential each (no logarithm per logit):
    with ``x`` shifted by its row's top logit, ``s = sum(exp(x))`` is in ``[1, S]``, the top
    probability is ``1 / s`` and the entropy ``log s - sum(exp(x) * x) / s``; the shift keeps
    both terms small, so their difference loses little to cancellation.
    """
    b, h, l, _ = x.shape
    if invalid is not None:
        x.masked_fill_(invalid, FILL)  # the smallest logit is an un-masked one
    low = x.amin(dim=(0, 2, 3))
    if invalid is not None:
        x.masked_fill_(invalid, -FILL)
    top = x.amax(dim=-1, keepdim=True)  # a row with no un-masked key: -FILL
    max_logit = torch.maximum(top.amax(dim=(0, 2, 3)), low.neg_()).clamp_min_(0.0)
    x.sub_(top)
    p = x.exp()  # masked keys: exp(-FILL - top) = 0
    s = p.sum(dim=-1)
    entropy = s.log().sub_(p.mul_(x).sum(dim=-1).div_(s))  # p is spent here
    saturated = s < 1.0 / SATURATED_ROW_THRESHOLD  # top probability 1 / s > 0.99
    rows: "Tensor | float" = float(b * l)
    if invalid is not None:
        has_key = top.squeeze(-1) > -FILL / 2  # rows with no un-masked key count nowhere
        entropy.masked_fill_(~has_key, 0.0)
        saturated.logical_and_(has_key)
        rows = has_key.sum(dim=(0, 2), dtype=x.dtype)
    return HeadStatistics(max_logit=max_logit, entropy_sum=entropy.sum(dim=(0, 2)),
                          saturated_rows=saturated.sum(dim=(0, 2), dtype=x.dtype), rows=rows)


def _masked_fill_value(mask: Tensor) -> Tensor:
    """Where a float mask (or logit) hides its key: ``-inf``, or at most half the dtype's lowest value."""
    return mask <= torch.finfo(mask.dtype).min / 2


def _apply_mask(logits: Tensor, mask: Tensor) -> Tensor:
    """Apply SDPA's ``attn_mask`` to ``logits`` as SDPA does; the keys it hides (``True`` = hidden).

    A bool mask says which keys take part; a float one is added to the logits (in place), and the
    keys it hides are where it holds ``-inf`` or a value as low (:func:`_masked_fill_value`).
    """
    if mask.dtype == torch.bool:
        return ~mask
    logits += mask
    return _masked_fill_value(mask)


def _or_above_diagonal(invalid: Optional[Tensor], keys: int, start: int, stop: int, device: torch.device) -> Tensor:
    """``invalid`` with the keys after each query hidden too (``is_causal``), for query rows ``start:stop``."""
    above = torch.arange(keys, device=device) > torch.arange(start, stop, device=device).unsqueeze(-1)
    return above if invalid is None else invalid | above


def pass_bytes(memory_bytes: int, device: torch.device) -> int:
    """The working bytes of one pass: the memory budget, on a CPU at most :data:`CPU_PASS_BYTES`."""
    return min(memory_bytes, CPU_PASS_BYTES) if device.type == "cpu" else memory_bytes


def _chunk_shape(batch: int, heads: int, queries: int, keys: int, budget: int) -> Tuple[int, int, int]:
    """(batch, heads, queries) of a chunk whose logits fit ``budget`` bytes (at least one row)."""
    rows = max(1, budget // (BYTES_PER_LOGIT * max(keys, 1)))
    if rows >= heads * queries:
        return min(batch, rows // (heads * queries)), heads, queries
    if rows >= queries:
        return 1, min(heads, rows // queries), queries
    return 1, 1, rows


def _blocks(batch: int, heads: int, queries: int, shape: Tuple[int, int, int]) -> Iterator[Tuple[slice, slice, slice]]:
    cb, ch, cl = shape
    for b in range(0, batch, cb):
        for h in range(0, heads, ch):
            for l0 in range(0, queries, cl):
                yield slice(b, min(b + cb, batch)), slice(h, min(h + ch, heads)), slice(l0, min(l0 + cl, queries))


def _align(mask: Tensor, dims: int) -> Tensor:
    """``mask`` with leading size-1 dims up to ``dims`` (broadcasting aligns from the right)."""
    return mask.reshape((1,) * (dims - mask.dim()) + tuple(mask.shape)) if mask.dim() < dims else mask


@contextlib.contextmanager
def _quiet_math(device: torch.device) -> Iterator[None]:
    with torch.no_grad(), computing():
        if torch.is_autocast_enabled(device.type):  # float32 whatever the forward runs in
            with torch.autocast(device_type=device.type, enabled=False):
                yield
        else:
            yield


def sdpa_statistics(query: Tensor, key: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False,
                    scale: Optional[float] = None, enable_gqa: bool = False, *, max_samples: Optional[int] = None,
                    memory_bytes: int = 64 << 20) -> HeadStatistics:
    """Per-head statistics of the softmax ``scaled_dot_product_attention(query, key, ...)`` computes.

    Takes SDPA's own arguments (``value`` and ``dropout_p`` do not change the softmax):
    ``query`` ``(N, ..., H, L, E)`` (or ``(N, L, E)``, ``(L, E)``: one head), ``key``
    ``(N, ..., H_k, S, E)``; ``attn_mask`` boolean (``True`` takes part) or float (added),
    broadcastable to ``(N, ..., H, L, S)``; ``is_causal`` (top-left: query ``i`` sees keys
    ``j <= i``); ``scale`` (default ``1/sqrt(E)``); ``enable_gqa``: ``H`` a multiple of
    ``H_k``, query head ``h`` attends with key head ``h // (H / H_k)``.

    Args:
        max_samples: only the first ``max_samples`` entries of the batch dimension (dim 0).
        memory_bytes: the logits of one chunk (and their working copies) stay within this, on a
            CPU within :data:`CPU_PASS_BYTES` too (:func:`pass_bytes`); at least one row of ``S``
            logits is computed at a time.

    Returns:
        :class:`HeadStatistics` of ``H`` heads, on ``query``'s device.
    """
    with _quiet_math(query.device):
        return _sdpa(query, key, attn_mask, is_causal, scale, enable_gqa, max_samples, memory_bytes)


def _sdpa(q: Tensor, k: Tensor, mask: Optional[Tensor], is_causal: bool, scale: Optional[float], gqa: bool,
          max_samples: Optional[int], memory_bytes: int) -> HeadStatistics:
    if mask is not None:
        mask = _align(mask, q.dim())
    if max_samples is not None and q.dim() >= 3:
        q, k = q[:max_samples], k[:max_samples]
        if mask is not None and mask.dim() >= 3 and mask.shape[0] > 1:
            mask = mask[:max_samples]
    if q.dim() > 4:  # (N, ..., H, L, E): one leading index at a time, so no mask is materialised
        total: Optional[HeadStatistics] = None
        for i in range(q.shape[0]):
            m = None if mask is None else mask[i if mask.shape[0] > 1 else 0]
            part = _sdpa(q[i], k[i], m, is_causal, scale, gqa, None, memory_bytes)
            total = part if total is None else total.add_(part)
        assert total is not None
        return total
    while q.dim() < 4:  # (L, E) -> (1, L, E) -> (N, 1, L, E): one head
        q, k = q.unsqueeze(-3), k.unsqueeze(-3)
        if mask is not None:
            mask = mask.unsqueeze(-3)
    batch, heads, queries, dim = q.shape
    keys = k.shape[-2]
    group = heads // k.shape[1] if gqa and k.shape[1] != heads else 1
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    full = None if mask is None else mask.expand(batch, heads, queries, keys)  # a view: nothing materialised
    shape = _chunk_shape(batch, heads, queries, keys, pass_bytes(memory_bytes, q.device))
    total = None if shape == (batch, heads, queries) else HeadStatistics.zeros(heads, q.device)
    for bs, hs, ls in _blocks(batch, heads, queries, shape):
        if group == 1:
            kc = k[bs, hs]
        else:  # grouped-query attention: query head h uses key head h // group
            first = hs.start // group
            kc = k[bs, first:(hs.stop - 1) // group + 1].repeat_interleave(group, dim=1)
            kc = kc[:, hs.start - first * group:hs.start - first * group + (hs.stop - hs.start)]
        qc = q[bs, hs, ls].float()
        kt = kc.float().transpose(-1, -2)
        # scale * q @ k^T as one batched matmul ([b * h] matrices: views of the usual layouts)
        x = torch.baddbmm(qc.new_empty(()), qc.reshape(-1, *qc.shape[-2:]), kt.reshape(-1, *kt.shape[-2:]),
                          beta=0.0, alpha=scale).view(*qc.shape[:-1], keys)
        invalid = None if full is None else _apply_mask(x, full[bs, hs, ls])
        if is_causal:
            invalid = _or_above_diagonal(invalid, keys, ls.start, ls.stop, x.device)
        if total is None:  # one chunk holds it all
            return _chunk(x, invalid)
        total.add_(_chunk(x, invalid), hs)
    assert total is not None
    return total


#: rows of the per-call sums :func:`stacked_sdpa_sums` returns: ``[calls, SUM_ROWS, heads]``
SUM_ROWS = 4  # max_logit, entropy_sum, saturated_rows, rows


def as_sums(stats: HeadStatistics) -> Tensor:
    """``stats`` as one ``[1, 4, heads]`` tensor: max_logit, entropy_sum, saturated_rows, rows."""
    rows = stats.rows if isinstance(stats.rows, Tensor) else torch.full_like(stats.entropy_sum, stats.rows)
    return torch.stack((stats.max_logit, stats.entropy_sum, stats.saturated_rows, rows)).unsqueeze(0)


def sums_values(sums: Tensor) -> Tensor:
    """``[..., 4, H]`` sums -> ``[..., 3, H]`` values: max_logit, mean entropy, saturated share (no row: 0)."""
    return torch.cat((sums[..., :1, :], sums[..., 1:3, :] / sums[..., 3:4, :].clamp_min(1.0)), dim=-2)


class Workspace:
    """Buffers the batched pass writes its large tensors into, kept from one check to the next.

    On a CPU, memory freshly mapped at every check costs a page fault per 4 KiB first written
    (glibc maps a fresh block for every allocation above its mmap threshold, 128 KiB and up):
    on a small model, more than the statistics themselves. A buffer grows to the largest use
    and is reused; :meth:`clear` gives it back.
    """

    def __init__(self) -> None:
        self._buffers: Dict[str, Tensor] = {}

    def take(self, name: str, shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """Buffer ``name`` as a contiguous tensor of ``shape`` (its values are whatever it held)."""
        numel = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            buf = self._buffers[name] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel].view(shape)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buffers.values())

    def clear(self) -> None:
        self._buffers = {}


def _stacked_chunk(x: Tensor, invalid: Optional[Tensor], workspace: Optional[Workspace] = None) -> Tensor:
    """:func:`_chunk` for logits ``[C, b, h, l, S]`` of ``C`` calls at once (overwritten) -> ``[C, 4, h]``.

    About fifteen operations for all the calls together: on the small shapes of a check
    step's many attention calls, the cost is per operation, not per logit.
    """
    calls, b, h, l, _ = x.shape
    # max |logit| as max(top, -lowest): a read of the logits, no |x| copy written
    if invalid is not None:
        x.masked_fill_(invalid, FILL)  # the lowest logit is an un-masked one
    low = x.amin(dim=(1, 3, 4))
    if invalid is not None:
        x.masked_fill_(invalid, -FILL)
    top = x.amax(dim=-1, keepdim=True)  # a row with no un-masked key: -FILL
    max_logit = torch.maximum(top.amax(dim=(1, 3, 4)), low.neg_()).clamp_min_(0.0)
    x.sub_(top)
    # masked keys: exp(-FILL - top) = 0
    p = x.exp() if workspace is None else torch.exp(x, out=workspace.take("p", x.shape, x.dtype, x.device))
    s = p.sum(dim=-1)
    entropy = s.log().sub_(p.mul_(x).sum(dim=-1).div_(s))
    del p
    saturated = s < 1.0 / SATURATED_ROW_THRESHOLD
    if invalid is not None:
        has_key = top.squeeze(-1) > -FILL / 2  # rows with no un-masked key count nowhere
        entropy.masked_fill_(~has_key, 0.0)
        saturated.logical_and_(has_key)
        rows = has_key.sum(dim=(1, 3), dtype=x.dtype)
    else:
        rows = max_logit.new_full((calls, h), float(b * l))
    return torch.stack((max_logit, entropy.sum(dim=(1, 3)), saturated.sum(dim=(1, 3), dtype=x.dtype), rows), dim=1)


def stacked_bytes(query: Tensor, key: Tensor) -> int:
    """Working bytes of one call in :func:`stacked_sdpa_sums`: its logits and its float32 copies of ``q``, ``k``."""
    *lead, heads, queries, dim = query.shape
    keys = key.shape[-2]
    n = math.prod(lead) * heads
    return n * (queries * keys * BYTES_PER_LOGIT + (queries + keys) * dim * 4)


def _stacked(name: str, parts: List[Tensor], workspace: Optional[Workspace]) -> Tensor:
    if workspace is None:
        return torch.stack(parts) if len(parts) > 1 else parts[0].unsqueeze(0)
    first = parts[0]
    return torch.stack(parts, out=workspace.take(name, (len(parts), *first.shape), first.dtype, first.device))


def _stacked_logits(queries: List[Tensor], keys: List[Tensor], scale: Optional[float], gqa: bool,
                    workspace: Optional[Workspace] = None) -> Tensor:
    """``scale * q @ k^T`` of every call, float32 ``[C, N, H, L, S]``, as one batched matmul.

    Its own function so that, without a workspace, the stacked copies of ``q`` and ``k`` are
    freed before the statistics' passes allocate theirs: the working memory's peak is the
    logits and one copy of them, not the inputs' copies as well.
    """
    q, k = _stacked("q", queries, workspace), _stacked("k", keys, workspace)
    calls, batch, heads, l, dim = q.shape
    if gqa and k.shape[2] != heads:  # grouped-query attention: query head h uses key head h // group
        k = k.repeat_interleave(heads // k.shape[2], dim=2)
    s = k.shape[-2]
    q, kt = q.float(), k.float().transpose(-1, -2)
    alpha = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    out = None if workspace is None else workspace.take("logits", (calls * batch * heads, l, s), q.dtype, q.device)
    return torch.baddbmm(q.new_empty(()), q.reshape(-1, l, dim), kt.reshape(-1, dim, s), beta=0.0, alpha=alpha,
                         out=out).view(calls, batch, heads, l, s)


def stacked_sdpa_sums(queries: List[Tensor], keys: List[Tensor], masks: Optional[List[Tensor]], is_causal: bool,
                      scale: Optional[float], enable_gqa: bool, workspace: Optional[Workspace] = None) -> Tensor:
    """Per call, per head sums of several SDPA calls of one signature at once: ``[C, 4, H]``.

    The calls' ``query`` ``(N, H, L, E)`` tensors share one shape, as do their ``key`` tensors
    and their masks (``None`` or all given: boolean or float, or one tensor for every call),
    ``is_causal``, ``scale`` and ``enable_gqa``. The caller keeps the calls within the memory
    budget (:func:`stacked_bytes` each); each call's rows are exactly those
    :func:`sdpa_statistics` reads. Rows: max_logit, entropy_sum, saturated_rows, rows.
    ``workspace``: the stacked inputs, the logits and their probabilities go into its buffers.
    """
    with _quiet_math(queries[0].device):
        x = _stacked_logits(queries, keys, scale, enable_gqa, workspace)  # [C, N, H, L, S]
        l, s = x.shape[-2:]
        invalid: Optional[Tensor] = None
        if masks is not None:
            first = masks[0]
            if all(m.data_ptr() == first.data_ptr() and m.stride() == first.stride() for m in masks):
                # one mask for every call (HF: the same padding mask, in every layer)
                m = _align(first, 4).unsqueeze(0)
            else:
                m = torch.stack([_align(m, 4) for m in masks])
            invalid = _apply_mask(x, m)
        if is_causal:
            invalid = _or_above_diagonal(invalid, s, 0, l, x.device)
        return _stacked_chunk(x, invalid, workspace)


def logit_statistics(logits: Tensor, heads: Optional[int] = None, *, max_samples: Optional[int] = None,
                     memory_bytes: int = 64 << 20) -> HeadStatistics:
    """Per-head statistics of ``softmax(logits, dim=-1)``, for attention that writes its softmax by hand.

    ``logits`` already hold the scale and any mask or bias; a key is masked where its logit is
    ``-inf`` (or at most half the dtype's lowest value). The heads are dim ``-3`` of a tensor
    of 4 or more dims (``(N, ..., H, L, S)``); with ``heads`` given, dim 0 of a 3-dim tensor is
    read as ``N * heads`` (``nn.MultiheadAttention``'s ``(N * H, L, S)``); otherwise one head.
    """
    with _quiet_math(logits.device):
        x = logits
        if heads is not None and x.dim() == 3:
            x = x.reshape(-1, heads, x.shape[-2], x.shape[-1])
        while x.dim() < 4:
            x = x.unsqueeze(-3)
        if max_samples is not None:
            x = x[:max_samples]
        if x.dim() > 4:
            x = x.flatten(0, -4)  # real logits, not a broadcast view: no copy beyond the input's own
        batch, h, queries, keys = x.shape
        total = HeadStatistics.zeros(h, x.device)
        shape = _chunk_shape(batch, h, queries, keys, pass_bytes(memory_bytes, x.device))
        for bs, hs, ls in _blocks(batch, h, queries, shape):
            part = x[bs, hs, ls]
            chunk = part.float() if part.dtype != torch.float32 else part.clone()
            total.add_(_chunk(chunk, _masked_fill_value(part)), hs)
        return total


__all__ = ["BYTES_PER_LOGIT", "CPU_PASS_BYTES", "ENTROPY", "HeadStatistics", "MAX_LOGIT", "SATURATED",
           "SATURATED_ROW_THRESHOLD", "STATISTICS", "SUM_ROWS", "Workspace", "as_sums", "computing", "is_computing",
           "logit_statistics", "pass_bytes", "sdpa_statistics", "stacked_bytes", "stacked_sdpa_sums", "sums_values"]
