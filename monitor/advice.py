"""Advice from the record: what a scale did, with the record's numbers, and what to change.

Every condition is the rule book's (:mod:`scalewatch.monitor.rules`): this module
only counts where the rules held, quotes the numbers of those readings, and turns
them into a sentence. So it is deterministic, names the scale, and says nothing but
"nothing to change" for a scale no rule ever held for.

What it knows is the seed's own configuration notes (DESIGN.md): a hard clamp that
holds the raw parameter beyond a bound has a zero gradient, so the scale has stopped
learning; ``bound="soft"`` (``min + (max - min)·sigmoid(raw)``) keeps a gradient; a
wider ``max_scale`` (the aggressive preset's 8.0) still leaves the bias generator's
bias clamped to ``±min(5, max_scale)``; a lower learning rate for the scale alone is
a parameter group. Where #19's attention records exist (``M.max_logit[h]``,
``M.entropy[h]``), a max logit near its threshold τ gets QK-layernorm / QK-clip with
that τ, and an entropy that collapses while a scale pins is said so.

Input is anything shaped like the dashboards' ``ScaleSeries`` (duck-typed: this module
imports no dashboards): ``name``, ``steps``, ``scale``, ``raw``, ``grad`` (float
arrays), ``no_grad``, ``skipped``, ``min``/``max`` (NaN where missing), ``bound``,
``warn_fraction``, ``alerts``, ``display``, ``tensor``, ``index``. Numpy only; no torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Collection, Dict, Iterable, List, Optional, Sequence, Tuple

from scalewatch.monitor import rules
from scalewatch.monitor.display import IDENTITY, display_value, format_number, format_range
from scalewatch.monitor.presets import PRESETS
from scalewatch.monitor.rules import NEAR_LOWER, NEAR_UPPER, NON_FINITE, PINNED

# ---- what advice is about -------------------------------------------------------------

PINNED_HIGH = "pinned_high"
PINNED_LOW = "pinned_low"
NEAR_HIGH = "near_high"
NEAR_LOW = "near_low"
NOT_FINITE = "non_finite"
MAX_LOGIT = "max_logit"
ENTROPY_COLLAPSE = "entropy_collapse"
QUIET = "quiet"
#: most urgent first: the order advice is listed in
ADVICE_KINDS = (NOT_FINITE, PINNED_HIGH, PINNED_LOW, MAX_LOGIT, ENTROPY_COLLAPSE, NEAR_HIGH, NEAR_LOW, QUIET)

#: the bias generator's final clamp never exceeds this (``monitor.attention_bias.SOFTMAX_EDGE``, kept torch-free
#: here; a test holds the two equal)
BIAS_EDGE = 5.0
#: the preset whose wider ``max_scale`` the advice names
WIDER_PRESET = "aggressive"
#: #19's per-head attention readings: a tensor ``M.max_logit`` (against its threshold τ as ``max``), ``M.entropy``
ATTENTION_MAX_LOGIT = ".max_logit"
ATTENTION_ENTROPY = ".entropy"
#: an entropy that ends below this share of where it started has collapsed
ENTROPY_COLLAPSE_SHARE = 0.5


@dataclass(frozen=True)
class Advice:
    """One piece of advice about one scale (or tensor).

    Attributes:
        scale: the scale's or tensor's name.
        kind: one of :data:`ADVICE_KINDS`.
        happened: what the record shows, with its numbers.
        change: what to change; empty for :data:`QUIET`.
        short: a few words for a table cell (``compare``).
        step: the first step it concerns (``None`` for quiet).
        elements: for a per-head tensor, the elements it concerns.
    """

    scale: str
    kind: str
    happened: str
    change: str = ""
    short: str = "-"
    step: Optional[int] = None
    elements: Tuple[int, ...] = ()

    @property
    def text(self) -> str:
        """One line: ``NAME: what happened → what to change``."""
        return f"{self.scale}: {self.happened}" + (f" → {self.change}" if self.change else "")

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"scale": self.scale, "kind": self.kind, "happened": self.happened,
                               "change": self.change or None, "short": self.short, "step": self.step}
        if self.elements:
            out["elements"] = list(self.elements)
        return out


def is_quiet(advice: Iterable[Advice]) -> bool:
    """Whether the advice asks for no change at all."""
    return all(a.kind == QUIET for a in advice)


# ---- numbers as text --------------------------------------------------------------------


def _pct(part: int, whole: int) -> str:
    return f"{part} of {whole} checks ({100.0 * part / whole:.0f}%)" if whole else f"{part} checks"


class _Units:
    """How one scale's values read: shown units for the scale and bounds, raw units for raw and grad."""

    def __init__(self, display: str) -> None:
        self.display = display or IDENTITY

    def shown(self, value: float) -> str:
        return format_number(value if self.display == IDENTITY else display_value(value, self.display))

    def raw(self, value: float) -> str:
        if self.display == IDENTITY:
            return format_number(value)
        return f"{format_number(value)} ({self.display} {format_number(display_value(value, self.display))})"

    def bound(self, value: float) -> str:
        if self.display == IDENTITY:
            return format_number(value)
        return f"{self.shown(value)} (raw {format_number(value)})"

    def past(self, raw: float, bound: float) -> str:
        """How far ``raw`` went beyond ``bound``, in raw units (where the optimizer moves it)."""
        return f"{format_number(abs(raw - bound))} beyond the bound" + ("" if self.display == IDENTITY else " in raw units")


# ---- the facts of one scale ---------------------------------------------------------------


def _array(values: Any) -> Any:
    import numpy as np

    return np.asarray(values, dtype=np.float64)


def _nan(value: Optional[float]) -> float:
    return math.nan if value is None else float(value)


@dataclass
class _Facts:
    """Where the rule book's conditions held over one scale's readings."""

    name: str
    steps: Any
    scale: Any
    raw: Any
    grad: Any
    lo: float
    hi: float
    bound: str
    display: str
    held: Dict[str, Any]
    pinned_high: Any
    pinned_low: Any
    skipped_non_finite: int
    alerts: List[Tuple[int, str, float]] = field(default_factory=list)
    index: Optional[int] = None

    @property
    def n(self) -> int:
        return len(self.steps)

    def first_alert(self, kind: str) -> Optional[int]:
        return min((st for st, k, _ in self.alerts if k == kind), default=None)


def _facts(s: Any) -> Optional[_Facts]:
    """Judge every reading of series ``s`` with the rule book (by the bounds it was recorded with)."""
    import numpy as np

    steps = _array(s.steps)
    n = len(steps)
    if n == 0:
        return None
    scale = _array(s.scale)
    if len(s.raw) == n and len(s.grad) == n:
        raw, grad = _array(s.raw), _array(s.grad)
        no_grad = getattr(s, "no_grad", b"")
        has_grad = (np.frombuffer(bytes(no_grad), dtype=np.uint8) == 0) if len(no_grad) == n else ~np.isnan(grad)
    else:  # read without raw values and gradients: the rules judge the scale alone, as for a logger source
        raw, grad, has_grad = scale.copy(), np.full(n, np.nan), np.zeros(n, dtype=bool)
    checked = np.ones(n, dtype=bool)
    checked[list(getattr(s, "skipped", []) or [])] = False
    hard = s.bound == "hard"
    spans = s.bound_spans() if callable(getattr(s, "bound_spans", None)) else [(0, n, s.min, s.max, s.warn_fraction)]
    held = {k: np.zeros(n, dtype=bool) for k in rules.ALERT_KINDS}
    high, low = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    nan = math.nan
    for start, end, lo, hi, w in spans or [(0, n, s.min, s.max, s.warn_fraction)]:
        part = slice(start, end)
        args = (scale[part], raw[part], grad[part], has_grad[part])
        both = rules.condition_columns(*args, lo, hi, hard, w, checked[part])
        for k in rules.ALERT_KINDS:
            held[k][part] = both[k]
        # the side a reading is pinned at: the same rule with only that bound
        high[part] = rules.condition_columns(*args, nan, hi, hard, w, checked[part])[PINNED] & both[PINNED]
        low[part] = rules.condition_columns(*args, lo, nan, hard, w, checked[part])[PINNED] & both[PINNED]
    # a non-finite gradient on a check a gradient scaler skipped: by design, not a non_finite reading
    skipped_bad = int(np.count_nonzero(~checked & has_grad & ~np.isfinite(grad)))
    return _Facts(name=s.name, steps=steps, scale=scale, raw=raw, grad=grad, lo=_nan(s.min), hi=_nan(s.max),
                  bound=s.bound, display=getattr(s, "display", IDENTITY) or IDENTITY, held=held, pinned_high=high,
                  pinned_low=low, skipped_non_finite=skipped_bad, alerts=list(s.alerts or []),
                  index=getattr(s, "index", None))


def _last_run_start(mask: Any) -> int:
    """Index where the last run of True in ``mask`` starts (``mask`` must hold a True)."""
    import numpy as np

    idx = np.flatnonzero(mask)
    breaks = np.flatnonzero(np.diff(idx) != 1)
    return int(idx[breaks[-1] + 1]) if len(breaks) else int(idx[0])


# ---- what to change ---------------------------------------------------------------------


def _wider_max(hi: float, generator: Optional[bool], shown: str) -> str:
    """A wider upper bound; for a bias generator its max_scale and what stays clamped (``None``: not
    known whether it is one, so both)."""
    if generator is False:
        return f"a wider upper bound (above {shown})"
    wider = PRESETS[WIDER_PRESET]["max_scale"]
    target = wider if wider > hi else 2 * hi
    preset = f", the {WIDER_PRESET} preset's" if target == wider else ""
    edge = min(BIAS_EDGE, target)
    if generator is None:
        return (f"a wider upper bound (above {shown}; an AttentionBiasGenerator's max_scale={format_number(target)}{preset}, "
                f"its bias itself still clamped to ±min({format_number(BIAS_EDGE)}, max_scale) = ±{format_number(edge)})")
    return (f"a wider max_scale (e.g. {format_number(target)}{preset}; the bias itself stays clamped to "
            f"±min({format_number(BIAS_EDGE)}, max_scale) = ±{format_number(edge)}, so more of its entries sit at that clamp)")


def _lower_lr(what: str) -> str:
    return f"a lower learning rate for {what} alone (its own parameter group, e.g. a tenth)"


def pinned_change(side: str, hi: float, lo: float, generator: Optional[bool], soft_already: bool = False,
                  display: str = IDENTITY) -> str:
    """What to change for a scale pinned at (``side="high"``) or near its upper/lower bound.

    ``bound="soft"`` is offered only where it exists (both bounds: ``min + (max - min)·sigmoid``) and
    is not already used; bounds are named in shown units. ``generator``: whether the scale is an
    AttentionBiasGenerator's (``None``: not known, as for an alert).
    """
    u = _Units(display)
    options = [] if soft_already or lo != lo or hi != hi else \
        ['bound="soft" (min + (max - min)·sigmoid(raw) keeps a gradient at the bound)']
    if side == "high":
        options.append(_wider_max(hi, generator, u.shown(hi)) if hi == hi else "a wider upper bound")
    else:
        options.append(f"a lower min_scale (below {u.shown(lo)})" if generator is True else
                       (f"a lower lower bound (below {u.shown(lo)})" if lo == lo else "a lower lower bound"))
    options.append(_lower_lr("the scale"))
    return "; or ".join(options)


def alert_advice(alert: Any) -> str:
    """One line of what to do for an alert (the ``pinned`` notification's line); ``""`` for other kinds.

    As specific as the report's advice with what an alert holds: the scale, the bound, how far the
    raw parameter went, the gradient, and the change with its numbers (:func:`pinned_change`). An
    :class:`~scalewatch.monitor.saturation.Alert` does not say whether the scale is an
    AttentionBiasGenerator's, so the wider bound is given both ways.

    Example::

        what to do: head.gen pinned at its upper bound 5 at step 24 (raw 5.251, 0.251 beyond the bound;
        gradient exactly 0: the hard clamp cuts it) → bound="soft" (...); or a wider upper bound (above 5;
        an AttentionBiasGenerator's max_scale=8, ...); or a lower learning rate for the scale alone (...)
    """
    if getattr(alert, "kind", None) != PINNED:
        return ""
    hi, lo = _nan(alert.max), _nan(alert.min)
    grad = alert.grad
    high = rules.conditions(alert.scale, alert.raw, grad, None, alert.max)[PINNED] if alert.max is not None else False
    bound = hi if high else lo
    u = _Units(IDENTITY)
    if grad is None:
        cut = "no gradient read"
    elif abs(grad) <= rules.ZERO_GRAD_ATOL:
        cut = "gradient exactly 0: the hard clamp cuts it"
    else:
        cut = f"gradient {format_number(grad)} pushing further out: a clamp after the step undoes every update"
    what = (f"{alert.name} pinned at its {'upper' if high else 'lower'} bound {format_number(bound)} at step {alert.step} "
            f"(raw {format_number(alert.raw)}, {u.past(alert.raw, bound)}; {cut})")
    generator = None if lo == lo else False  # a one-sided scale is never a bias generator's
    return f"what to do: {what} → {pinned_change('high' if high else 'low', hi, lo, generator)}"


# ---- one scale ----------------------------------------------------------------------------


def _pinned(f: _Facts, side: str, generator: bool) -> Optional[Advice]:
    import numpy as np

    mask = f.pinned_high if side == "high" else f.pinned_low
    count = int(np.count_nonzero(mask))
    if not count:
        return None
    u = _Units(f.display)
    bound = f.hi if side == "high" else f.lo
    which = "upper" if side == "high" else "lower"
    first = _last_run_start(mask)
    still = bool(mask[-1])
    since = (f"since step {int(f.steps[first])}, still at the last check" if still
             else f"from step {int(f.steps[np.flatnonzero(mask)[0]])} (released by step {int(f.steps[-1])})")
    alert = f.first_alert(PINNED)
    alert_text = f", pinned alert at step {alert}" if alert is not None else ""
    raws = f.raw[mask & np.isfinite(f.raw)]
    far = float(raws.max() if side == "high" else raws.min()) if len(raws) else math.nan
    reach = f"the raw parameter went to {u.raw(far)}, {u.past(far, bound)}" if far == far else ""
    grads = f.grad[mask]
    zero = int(np.count_nonzero(np.abs(grads) <= rules.ZERO_GRAD_ATOL))
    why = (f"gradient exactly 0 at {'all ' if zero == count else ''}{zero} of them (the hard clamp cuts it: the "
           "scale has stopped learning)" if zero else "")
    out = count - zero
    if out:
        why += ("; " if why else "") + f"gradient pushing further out at {out} (a clamp after the step undoes " \
                                       "every update)"
    happened = (f"pinned at its {which} bound {u.bound(bound)} {since}{alert_text}: {_pct(count, f.n)}"
                + (f"; {reach}" if reach else "") + (f"; {why}" if why else ""))
    change = pinned_change(side, f.hi, f.lo, generator, display=f.display)
    short = f"pinned {'high' if side == 'high' else 'low'}: " + ("soft bound" if change.startswith("bound=") else
                                                                  "wider bound" if side == "high" else "lower bound")
    return Advice(f.name, PINNED_HIGH if side == "high" else PINNED_LOW, happened, change, short,
                  int(f.steps[first]), () if f.index is None else (f.index,))


def _near(f: _Facts, side: str, generator: bool) -> Optional[Advice]:
    import numpy as np

    mask = f.held[NEAR_UPPER if side == "high" else NEAR_LOWER]
    count = int(np.count_nonzero(mask))
    if not count:
        return None
    u = _Units(f.display)
    which = "upper" if side == "high" else "lower"
    first = int(f.steps[np.flatnonzero(mask)[0]])
    entries = int(np.count_nonzero(np.diff(np.concatenate(([0], mask.astype(np.int8)))) == 1))
    extreme = float(np.nanmax(f.scale[mask]) if side == "high" else np.nanmin(f.scale[mask]))
    bound = f.hi if side == "high" else f.lo
    crossings = "" if entries == 1 else f", in {entries} separate stretches"
    happened = (f"near its {which} bound {u.bound(bound)} at {_pct(count, f.n)} from step {first}{crossings} "
                f"(closest {u.shown(extreme)}), never pinned: its gradient stayed alive")
    change = ("nothing needs to change while the loss improves; for more headroom "
              + pinned_change(side, f.hi, f.lo, generator, soft_already=f.bound != "hard", display=f.display))
    return Advice(f.name, NEAR_HIGH if side == "high" else NEAR_LOW, happened, change,
                  f"near {'high' if side == 'high' else 'low'}", first, () if f.index is None else (f.index,))


def _non_finite(f: _Facts) -> Optional[Advice]:
    import numpy as np

    mask = f.held[NON_FINITE]
    count = int(np.count_nonzero(mask))
    if not count:
        return None
    i = int(np.flatnonzero(mask)[0])
    skips = (f"; {f.skipped_non_finite} more check(s) had a non-finite gradient on steps a GradScaler skipped "
             "(by design, no alert)") if f.skipped_non_finite else ""
    happened = (f"non-finite at {_pct(count, f.n)}, first at step {int(f.steps[i])} (scale={format_number(f.scale[i])}, "
                f"raw={format_number(f.raw[i])}, grad={format_number(f.grad[i])}){skips}")
    change = ("training diverged or overflowed there: lower the learning rate or clip gradients "
              "(max_norm); under fp16 use a GradScaler or bf16")
    return Advice(f.name, NOT_FINITE, happened, change, "non-finite: lower lr", int(f.steps[i]),
                  () if f.index is None else (f.index,))


def _quiet(f: _Facts) -> Advice:
    import numpy as np

    u = _Units(f.display)
    finite = f.scale[np.isfinite(f.scale)]
    span = f" ({u.shown(float(finite.min()))} to {u.shown(float(finite.max()))})" if len(finite) else ""
    lo = None if f.lo != f.lo else f.lo
    hi = None if f.hi != f.hi else f.hi
    skips = (f"; {f.skipped_non_finite} GradScaler-skipped check(s), by design" if f.skipped_non_finite else "")
    happened = (f"stayed well inside {format_range(lo, hi, f.display, '.4g')}{span}, no rule ever held{skips}: "
                "nothing to change")
    return Advice(f.name, QUIET, happened)


def quiet_advice(s: Any) -> Advice:
    """The :data:`QUIET` line of a series the caller has judged quiet with the rule book (no rule held at
    any reading, e.g. :func:`~scalewatch.monitor.rules.near_counts` zero, no alert, every value finite)."""
    scale = _array(s.scale)
    f = _Facts(name=s.name, steps=_array(s.steps), scale=scale, raw=scale, grad=scale, lo=_nan(s.min),
               hi=_nan(s.max), bound=s.bound, display=getattr(s, "display", IDENTITY) or IDENTITY, held={},
               pinned_high=None, pinned_low=None,
               skipped_non_finite=len(getattr(s, "skipped", []) or []), index=getattr(s, "index", None))
    return _quiet(f)


def scale_advice(s: Any, generator: bool = False) -> List[Advice]:
    """The advice for one scale's (or element's) series, most urgent first; one :data:`QUIET` line when none.

    Args:
        s: the series (see the module docstring).
        generator: whether it is an ``AttentionBiasGenerator``'s scale (its records carry
            ``clamp_fraction``): the advice then speaks of ``max_scale``/``min_scale`` and the
            bias clamp ``±min(5, max_scale)``.
    """
    f = _facts(s)
    if f is None:
        return []
    found = [_non_finite(f), _pinned(f, "high", generator), _pinned(f, "low", generator)]
    if found[1] is None:
        found.append(_near(f, "high", generator))
    if found[2] is None:
        found.append(_near(f, "low", generator))
    advice = [a for a in found if a is not None]
    return sorted(advice, key=lambda a: ADVICE_KINDS.index(a.kind)) or [_quiet(f)]


# ---- a tensor, the attention records, a run -------------------------------------------------


def _merge(tensor: str, per_element: List[List[Advice]], count: int) -> List[Advice]:
    """A per-head tensor's advice: per kind, the first element's words, naming every element it concerns."""
    by_kind: Dict[str, List[Advice]] = {}
    for advice in per_element:
        for a in advice:
            by_kind.setdefault(a.kind, []).append(a)
    out = []
    for kind in ADVICE_KINDS:
        found = by_kind.get(kind)
        if not found:
            continue
        if kind == QUIET and len(by_kind) > 1:
            continue  # the other elements' advice says it
        indices = tuple(sorted(i for a in found for i in a.elements))
        first = min(found, key=lambda a: (a.step if a.step is not None else math.inf, a.elements))
        if kind == QUIET:
            out.append(Advice(tensor, QUIET, f"all {count} elements {first.happened}"))
            continue
        which = f"elements {list(indices)} ({len(indices)} of {count})" if len(indices) > 1 else \
            f"element [{indices[0]}] (1 of {count})" if indices else f"{len(found)} of {count} elements"
        happened = f"{which}; e.g. [{first.elements[0]}] " if first.elements else f"{which}: "
        out.append(Advice(tensor, kind, happened + first.happened, first.change, first.short, first.step, indices))
    return out


def _attention(tensor: str, elements: List[Any], pinned: List[Advice]) -> List[Advice]:
    """#19's per-head attention statistics: a max logit near its threshold, an entropy collapsing while a scale pins."""
    import numpy as np

    facts = [f for f in (_facts(s) for s in elements) if f is not None]
    if not facts:
        return []
    if tensor.endswith(ATTENTION_MAX_LOGIT):
        hit = [f for f in facts if f.held[NEAR_UPPER].any()]
        if not hit:
            return [Advice(tensor, QUIET, f"max logit stayed below its warning line (threshold τ="
                                          f"{format_number(facts[0].hi)}): nothing to change")]
        worst = max(hit, key=lambda f: float(np.nanmax(f.scale)))
        tau = worst.hi
        peak_i = int(np.nanargmax(worst.scale))
        first = min(int(f.steps[np.flatnonzero(f.held[NEAR_UPPER])[0]]) for f in hit)
        count = sum(int(np.count_nonzero(f.held[NEAR_UPPER])) for f in hit)
        total = sum(f.n for f in facts)
        past = "past" if worst.scale[peak_i] > tau else "near"
        heads = sorted(f.index for f in hit if f.index is not None)
        happened = (f"max logit {past} its threshold τ={format_number(tau)}: up to {format_number(worst.scale[peak_i])} at step "
                    f"{int(worst.steps[peak_i])}, from step {first}, in {count} of {total} head readings"
                    + (f" (heads {heads})" if heads else ""))
        change = (f"QK-layernorm (normalise q and k before their product) or QK-clip with τ={format_number(tau)} "
                  "(rescale the query/key weights of a head whose max logit passes τ)")
        return [Advice(tensor, MAX_LOGIT, happened, change, f"max logit: QK-clip τ={format_number(tau)}", first,
                       tuple(heads))]
    if tensor.endswith(ATTENTION_ENTROPY) and pinned:
        start = float(np.nanmean([f.scale[0] for f in facts]))
        end = float(np.nanmean([f.scale[-1] for f in facts]))
        if start > 0 and end < ENTROPY_COLLAPSE_SHARE * start:
            p = pinned[0]
            happened = (f"mean row entropy fell from {format_number(start)} to {format_number(end)} nats while {p.scale} pinned "
                        f"(from step {p.step}): the softmax saturates and the pinned scale keeps it there")
            change = (f"{pinned_change('high' if p.kind == PINNED_HIGH else 'low', math.nan, math.nan, False)}; "
                      "QK-layernorm keeps the logits in the softmax's sensitive range")
            return [Advice(tensor, ENTROPY_COLLAPSE, happened, change, "entropy collapse", p.step)]
    return []


def run_advice(series: Iterable[Any], generators: Collection[str] = (), quiet: Collection[str] = ()) -> List[Advice]:
    """The advice for a whole run: per scale (a per-head tensor once), most urgent first, quiet ones last.

    Args:
        series: every scale's (and element's) series.
        generators: names of the bias generators' scales (or their tensors): see :func:`scale_advice`.
        quiet: names of series the caller judged quiet with the rule book (their raw values and
            gradients need not be read): :func:`quiet_advice`.
    """
    quiet = set(quiet)
    tensors: Dict[str, List[Any]] = {}
    for s in series:
        tensors.setdefault(getattr(s, "tensor", None) or s.name, []).append(s)
    gens = set(generators)
    advice: List[Advice] = []
    attention: List[Tuple[str, List[Any]]] = []
    for tensor, elements in tensors.items():
        if tensor.endswith(ATTENTION_MAX_LOGIT) or tensor.endswith(ATTENTION_ENTROPY):
            attention.append((tensor, elements))
            continue
        if any(tensor.endswith(suffix) for suffix in (".saturated",)):
            continue  # #19's share of saturated rows: told through the entropy's advice
        generator = tensor in gens or any(s.name in gens for s in elements)
        def one(s: Any) -> List[Advice]:
            return [quiet_advice(s)] if s.name in quiet else scale_advice(s, generator)

        if len(elements) == 1 and getattr(elements[0], "index", None) is None:
            advice.extend(one(elements[0]))
        else:
            ordered = sorted(elements, key=lambda s: (getattr(s, "index", None) or 0))
            advice.extend(_merge(tensor, [one(s) for s in ordered], len(ordered)))
    pinned = [a for a in advice if a.kind in (PINNED_HIGH, PINNED_LOW)]
    for tensor, elements in attention:
        advice.extend(_attention(tensor, sorted(elements, key=lambda s: getattr(s, "index", None) or 0), pinned))
    rank = {k: i for i, k in enumerate(ADVICE_KINDS)}
    return sorted(advice, key=lambda a: (rank[a.kind], a.step if a.step is not None else math.inf, a.scale))


def advice_lines(advice: Sequence[Advice], max_quiet: int = 3, max_loud: Optional[int] = None,
                 more: str = "scalewatch report") -> List[str]:
    """The advice as text lines: per piece what happened, then ``  → what to change`` on its own line;
    more than ``max_quiet`` quiet scales are one line. With ``max_loud``, only the first (most urgent)
    pieces are written out and one line says how many more there are and where to read them (``more``)."""
    loud_advice = [a for a in advice if a.kind != QUIET]
    shown = loud_advice if max_loud is None else loud_advice[:max_loud]
    loud = [line for a in shown
            for line in [f"{a.scale}: {a.happened}"] + ([f"  → {a.change}"] if a.change else [])]
    if len(shown) < len(loud_advice):
        loud.append(f"... and {len(loud_advice) - len(shown)} more pieces of advice: {more}")
    quiet = [a for a in advice if a.kind == QUIET]
    if len(quiet) > max_quiet:
        return loud + [f"{len(quiet)} {'other ' if loud else ''}scales stayed well inside their bounds: "
                       "nothing to change"]
    return loud + [a.text for a in quiet]


def short_cell(advice: Sequence[Advice], scale: str) -> str:
    """The most urgent advice about ``scale`` in a few words (``compare``'s column); ``-`` when quiet."""
    loud = [a for a in advice if a.scale == scale and a.kind != QUIET]
    return loud[0].short if loud else "-"


__all__ = ["ADVICE_KINDS", "Advice", "BIAS_EDGE", "ENTROPY_COLLAPSE", "MAX_LOGIT", "NEAR_HIGH", "NEAR_LOW",
           "NOT_FINITE", "PINNED_HIGH", "PINNED_LOW", "QUIET", "advice_lines", "alert_advice", "is_quiet",
           "pinned_change", "quiet_advice", "run_advice", "scale_advice", "short_cell"]
