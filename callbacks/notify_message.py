"""The text of a notification: one message for the alerts of one check, readable on a phone."""
from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence, Tuple

from scalewatch.monitor.advice import alert_advice
from scalewatch.monitor.display import format_number, format_range
from scalewatch.monitor.saturation import NEAR_LOWER, NEAR_UPPER, NON_FINITE, PINNED, Alert

#: a message lists this many alerts in full; the rest are counted by kind
NOTIFY_MAX_LISTED = 10

#: what each alert means, in one line
MEANING = {
    NON_FINITE: "the raw value or its gradient is NaN/Inf: training has diverged or overflowed",
    PINNED: "the clamp has cut its gradient: the raw parameter sits at or past the bound and no update brings it back",
    NEAR_UPPER: "close to its upper bound: the softmax it feeds is near saturation",
    NEAR_LOWER: "close to its lower bound: little modulation is left",
}
#: the same, for an attention statistic (its bound is a threshold on the softmax itself)
ATTENTION_MEANING = {
    NON_FINITE: "the attention logits are NaN/Inf: training has diverged or overflowed",
    NEAR_UPPER: "the attention logits approach the threshold: the softmax is saturating (Kimi K2's MaxLogit, "
                "which QK-Clip caps)",
}
# Most urgent first, so a long message leads with what needs a person.
_ORDER = {kind: i for i, kind in enumerate(MEANING)}
_FAILURES = (NON_FINITE, PINNED)


def _counts(alerts: Sequence[Alert]) -> str:
    by_kind = Counter(a.kind for a in alerts)
    return ", ".join(f"{kind} ×{n}" for kind, n in sorted(by_kind.items(), key=lambda kv: _ORDER.get(kv[0], 99)))


def is_failure(alerts: Sequence[Alert]) -> bool:
    """Whether the message reports a failure (pinned, non-finite) rather than a warning."""
    return any(a.kind in _FAILURES for a in alerts)


def format_message(run_name: str, step: int, alerts: Sequence[Alert],
                   repeats: Mapping[Tuple[str, str], int], dropped: int = 0,
                   max_listed: int = NOTIFY_MAX_LISTED) -> Tuple[str, str]:
    """The title and body of one notification.

    Args:
        run_name: shown in the title, e.g. ``"runs/version_3"``.
        step: the optimizer step of the check.
        alerts: the alerts of that check to announce.
        repeats: ``(name, kind) -> n`` crossings held back by the rate limit since
            the last message about that scale and kind.
        dropped: earlier messages this endpoint lost because its queue was full.
        max_listed: how many alerts are listed in full; the rest are counted.

    Returns:
        ``(title, body)``.
    """
    ordered = sorted(alerts, key=lambda a: _ORDER.get(a.kind, 99))
    if len(ordered) == 1:
        what = f"{ordered[0].kind} {ordered[0].name}"
    else:
        what = f"{len(ordered)} alerts ({_counts(ordered)})"
    title = f"⚠️ scalewatch · {run_name}: {what} at step {step}"

    lines = []
    for a in ordered[:max_listed]:
        lines.append(f"{a.kind} · {a.name} · step {a.step}")
        scale, raw, grad = (format_number(v, missing="n/a") for v in (a.scale, a.raw, a.grad))
        if a.attention is not None:  # a statistic of the softmax: its value and threshold, no raw, no gradient
            top = "" if a.max is None else f" · threshold {format_number(a.max)}"
            lines.append(f"{a.attention} {scale}{top}")
            lines.append(f"→ {ATTENTION_MEANING.get(a.kind, a.message)}")
        else:
            lines.append(f"scale {scale} in {format_range(a.min, a.max, fmt='.4g')} · raw {raw} · grad {grad}")
            lines.append(f"→ {MEANING.get(a.kind, a.message)}")
        todo = alert_advice(a)  # the pinned alert's one line of what to change (monitor/advice.py)
        if todo:
            lines.append(f"→ {todo}")
        held = repeats.get((a.name, a.kind), 0)
        if held:
            lines.append(f"(crossed {held} more time(s) since the last message about it, not sent: rate limit)")
        lines.append("")
    rest = ordered[max_listed:]
    if rest:
        lines.append(f"… and {len(rest)} more at this check: {_counts(rest)}")
    if dropped:
        lines.append(f"{dropped} earlier message(s) were dropped: this endpoint did not keep up.")
    lines.append(f"Every alert is in scalewatch_history.jsonl of {run_name} (scalewatch report RUN_DIR).")
    return title, "\n".join(lines)
