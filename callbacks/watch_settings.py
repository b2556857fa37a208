"""What a watcher is asked to do, checked once, before any model or trainer exists.

Every front door (Lightning, HF, mmengine, a plain loop) takes the same arguments;
checking them here means each door rejects bad input in its constructor with
the same message, which the door only re-raises as its framework's exception.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Tuple

from scalewatch.monitor.saturation import Alert, check_patience, check_warn_fraction
from scalewatch.monitor.schedule import check_every_n_steps
from scalewatch.monitor.watched_scale import check_param_bounds

ON_SATURATION = ("warn", "stop")
#: multi-element scales (per-head) go to the loggers element by element while the watch holds
#: at most this many of their elements in all; beyond, each is logged as its per-tensor summary
MAX_LOGGED_ELEMENTS = 256


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass
class WatchSettings:
    """The engine's arguments, validated.

    Args:
        every_n_steps: read on optimizer steps N-1, 2N-1, ...; ``None`` lets the
            front door choose (Lightning: ``log_every_n_steps``; HF: ``logging_steps``).
        warn_fraction: ``near_upper`` fires when ``scale > warn_fraction * max``.
        patience: consecutive pinned checks before ``pinned`` fires.
        params: bare parameters to watch, ``{name: (min, max)}``.
        on_saturation: ``"warn"`` or ``"stop"`` (end training at the alert's step).
        alert_callback: called with each :class:`~scalewatch.monitor.Alert` on rank zero.
        plot: write ``scale_history.png`` at the end and send it to the loggers.
        plot_every_n_checks: also send the plot to the loggers every K checks.
        max_plot_panels: how many scales the plot draws.
        notify: notification URL(s) (apprise); ``None`` reads ``SCALEWATCH_NOTIFY``.
        max_logged_elements: the per-element key cap for multi-element scales (the
            history always holds every element).

    Raises:
        ValueError: naming the bad argument and its value.
    """

    every_n_steps: Optional[int] = None
    warn_fraction: float = 0.9
    patience: int = 3
    params: Mapping[str, Any] = field(default_factory=dict)
    on_saturation: str = "warn"
    alert_callback: Optional[Callable[[Alert], None]] = None
    plot: bool = True
    plot_every_n_checks: Optional[int] = None
    max_plot_panels: int = 6
    notify: Any = field(default=None, repr=False)  # a URL holds a token: never in a repr
    max_logged_elements: int = MAX_LOGGED_ELEMENTS

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


def _resolve_notify(notify: Any) -> Tuple[str, ...]:
    from scalewatch.callbacks.notifier import resolve_notify  # apprise loads only when URLs are given

    return tuple(resolve_notify(notify))
