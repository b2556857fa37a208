"""What a watcher is asked to do, checked once, before any model or trainer exists.

Every front door (Lightning, HF, mmengine, a plain loop) takes the same arguments;
checking them here means each door rejects bad input in its constructor with
the same message, which the door only re-raises as its framework's exception.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, TypeVar, Union

from scalewatch.monitor.attention_options import check_attention
from scalewatch.monitor.rules import DEFAULT_MAX_PLOT_PANELS, DEFAULT_PATIENCE, DEFAULT_WARN_FRACTION
from scalewatch.monitor.saturation import Alert, check_patience, check_warn_fraction
from scalewatch.monitor.schedule import check_every_n_steps
from scalewatch.monitor.watched_scale import check_param_bounds

T = TypeVar("T")

ON_SATURATION = ("warn", "stop")
#: multi-element scales (per-head) go to the loggers element by element while the watch holds
#: at most this many of their elements in all; beyond, each is logged as its per-tensor summary
MAX_LOGGED_ELEMENTS = 256


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
    return value


#: The Args text of every setting the doors share, written once: each door's docstring takes
#: it through :func:`document_settings` (``{settings}`` in the docstring), and ScaleWatcher's too.
SETTING_DOCS: Dict[str, str] = {
    "warn_fraction": """``near_upper`` fires when ``scale > warn_fraction * max``,
        ``near_lower`` when ``scale < min + (1 - warn_fraction) * (max - min)``.""",
    "patience": """consecutive checks a scale must be pinned (raw at/beyond a bound
        with a gradient that cannot bring it back) before ``pinned`` fires.""",
    "params": """bare parameters to watch, ``{"logit_scale": (0.0, 4.6052)}``:
        a name from ``named_parameters()`` (or buffers), or an fnmatch pattern
        (``"*.attn.logit_scale"``), -> ``(min, max)`` (either may be ``None``:
        one-sided), or ``{"min": ..., "max": ..., "display": "exp"}`` /
        :class:`~scalewatch.monitor.ScaleSpec` for a log-parametrised scale.
        A multi-element parameter is watched element by element (``NAME[i]``).""",
    "on_saturation": """``"warn"`` only alerts; ``"stop"`` also ends training
        cleanly at the step an alert fires (on every rank).""",
    "alert_callback": """called with each :class:`~scalewatch.monitor.Alert` (rank zero).""",
    "plot": """write ``scale_history.png`` in the log directory at the end of training
        and on an exception, and send it to the loggers (TensorBoard, W&B).""",
    "plot_every_n_checks": """also send the plot to the loggers every K checks.""",
    "max_plot_panels": """how many scales the plot draws (those closest to a bound
        or alerted); the rest are counted in its title.""",
    "notify": """apprise URL(s) alerts are sent to (Slack, ntfy, email, JSON webhooks,
        ...): one string or a list; ``None`` reads ``SCALEWATCH_NOTIFY`` (URLs
        separated by spaces or commas; keeps the secret out of code, YAML and the
        saved config), ``[]`` sends nothing. One message per check, sent from a
        background thread; the end of training waits at most 10 s for pending ones.
        Rank zero only.""",
    "max_logged_elements": """a multi-element scale (per-head, ``(H, 1, 1)``) is read
        element by element (``NAME[i]``, every one in the history and the alerts);
        loggers get per-element keys while the watch holds at most this many such
        elements in all (default 256: Swin V2's 138 heads), and beyond it one
        per-tensor summary each, ``scalewatch/NAME/{scale_min,scale_max,raw_min,
        raw_max,near_upper,near_lower,pinned,non_finite,elements,min,max}``.""",
    "attention": """watch the attention softmax itself, on the forwards of check steps only:
        per attention module ``M`` and head ``h``, ``M.max_logit[h]`` (largest |logit|, the
        threshold is its ``max``: ``near_upper`` warns above ``warn_fraction`` of it),
        ``M.entropy[h]`` (mean row entropy, nats) and ``M.saturated[h]`` (share of rows with top
        probability > 0.99), from every ``F.scaled_dot_product_attention`` call (timm, HF
        ``sdpa``, ``nn.MultiheadAttention``). ``True``, or a dict: ``{"max_logit": 100.0,
        "modules": [PATTERN], "softmax": [PATTERN] (hand-written attention: these modules'
        ``softmax(logits, dim=-1)``), "samples": None (first k of each batch), "memory_mib": 64}``.
        Off check steps nothing is installed.""",
}


def document_settings(obj: T) -> T:
    """Put :data:`SETTING_DOCS` where ``obj``'s docstring has a line ``{settings}``, at its indentation."""
    doc = obj.__doc__ or ""
    lines = []
    for line in doc.splitlines():
        if line.strip() != "{settings}":
            lines.append(line)
            continue
        indent = line[:len(line) - len(line.lstrip())]
        for name, text in SETTING_DOCS.items():
            first, *rest = text.splitlines()
            lines.append(f"{indent}{name}: {first}")
            lines.extend(f"{indent}    {r.strip()}" for r in rest)
    obj.__doc__ = "\n".join(lines)
    return obj


@dataclass
class WatchSettings:
    """The engine's arguments, validated: the one description every door's signature repeats.

    A door's ``__init__`` lists these as explicit, typed parameters (jsonargparse and
    mmengine read signatures), with these names, annotations and defaults; a test
    holds every door to it.

    Args:
        every_n_steps: read on optimizer steps N-1, 2N-1, ...; ``None`` lets the
            front door choose (Lightning: ``log_every_n_steps``; HF: ``logging_steps``;
            mmengine: LoggerHook's ``interval``).
        {settings}

    Raises:
        ValueError: naming the bad argument and its value.
    """

    every_n_steps: Optional[int] = None
    warn_fraction: float = DEFAULT_WARN_FRACTION
    patience: int = DEFAULT_PATIENCE
    params: Optional[Dict[str, Any]] = None
    on_saturation: str = "warn"
    alert_callback: Optional[Callable[[Alert], None]] = None
    plot: bool = True
    plot_every_n_checks: Optional[int] = None
    max_plot_panels: int = DEFAULT_MAX_PLOT_PANELS
    notify: Optional[Any] = field(default=None, repr=False)  # a URL holds a token: never in a repr
    max_logged_elements: int = MAX_LOGGED_ELEMENTS
    attention: Union[bool, Dict[str, Any]] = False

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> "WatchSettings":
        """The settings among a door's arguments (``locals()`` of its ``__init__``), checked."""
        return cls(**{f.name: arguments[f.name] for f in dataclasses.fields(cls) if f.name in arguments})

    def __post_init__(self) -> None:
        if self.every_n_steps is not None:
            self.every_n_steps = check_every_n_steps(self.every_n_steps)
        self.warn_fraction = check_warn_fraction(self.warn_fraction)
        self.patience = check_patience(self.patience)
        self.params = check_param_bounds(self.params if self.params is not None else {})
        if self.on_saturation not in ON_SATURATION:
            raise ValueError(f"`on_saturation` must be one of {ON_SATURATION}, got {self.on_saturation!r}")
        if self.alert_callback is not None and not callable(self.alert_callback):
            raise ValueError(f"`alert_callback` must be callable, got {self.alert_callback!r}")
        if self.plot_every_n_checks is not None:
            check_positive_int("plot_every_n_checks", self.plot_every_n_checks)
        check_positive_int("max_plot_panels", self.max_plot_panels)
        check_positive_int("max_logged_elements", self.max_logged_elements, minimum=0)
        self.notify_urls = _resolve_notify(self.notify)
        self.attention_options = check_attention(self.attention)


def _resolve_notify(notify: Any) -> Tuple[str, ...]:
    from scalewatch.callbacks.notifier import resolve_notify  # apprise loads only when URLs are given

    return tuple(resolve_notify(notify))


document_settings(WatchSettings)
