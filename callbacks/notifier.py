"""Notifications through apprise: URLs checked up front, delivered off the training thread, no secret shown.

The engine resolves ``notify`` once (:func:`resolve_notify`) and, on rank zero,
hands each check's alerts to a :class:`Notifier`. ``send`` only puts them in a
bounded queue; each endpoint has its own daemon thread that formats and sends,
with apprise's own per-request socket timeouts, a few retries with backoff, and
one log line per endpoint that fails. Nothing here raises into training.

Secrets: URLs (and so tokens) are shown only masked (:func:`mask_url`), apprise's
and urllib3's log records made while checking a URL or sending are held back
(their debug lines carry URL paths), and the raw URLs are kept only inside the
apprise service objects.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

from scalewatch.callbacks.notify_message import NOTIFY_MAX_LISTED, format_message, is_failure
from scalewatch.monitor.saturation import Alert

log = logging.getLogger("scalewatch")

#: environment variable read when ``notify`` is not given: URLs separated by spaces or commas
NOTIFY_ENV = "SCALEWATCH_NOTIFY"
#: seconds ``close()`` (the end of fit) waits for pending messages before giving up on them
NOTIFY_CLOSE_TIMEOUT = 10.0
#: per request, apprise's ``cto`` and ``rto`` (a URL's own ``?cto=``/``?rto=`` win)
NOTIFY_CONNECT_TIMEOUT = 5.0
NOTIFY_READ_TIMEOUT = 10.0
#: tries per message (the first and two retries), waiting 1 s then 2 s between them
NOTIFY_ATTEMPTS = 3
NOTIFY_BACKOFF = 1.0
#: messages waiting per endpoint; when full the oldest is dropped (and counted)
NOTIFY_QUEUE_SIZE = 100
#: one message per scale and alert kind at most this often (seconds); crossings in
#: between are counted in the next message about that scale and kind
NOTIFY_REPEAT_INTERVAL = 600.0

EXTRA_HINT = "pip install 'scalewatch[notify]'"
_WIKI = "https://github.com/caronc/apprise/wiki"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Spaces separate URLs; a comma does where a new URL follows it (mailto's ?to=a@x,b@y keeps its comma).
# A dotted name or address, or a bracketed IPv6 address: shown as is. Anything else in the
# host's place may be a token, or a password with an unescaped '/' that moved it there.
_HOST_NAME = re.compile(r"^([A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+|\[[0-9A-Fa-f:.]+\])$")
_SEPARATORS = re.compile(r"\s+|,+(?=\s*[A-Za-z][A-Za-z0-9+.-]*://)")
# Loggers whose records, made on our behalf, can carry a URL's path or tokens (urllib3 logs
# "POST /hook/TOKEN" at debug): held back while we check URLs or send.
_QUIET_LOGGERS = ("apprise", "urllib3.connectionpool", "urllib3.connection", "urllib3.util.retry")


# ---- URLs --------------------------------------------------------------------------------

def split_urls(text: str) -> List[str]:
    """URLs in ``text`` separated by spaces or commas (the ``SCALEWATCH_NOTIFY`` format)."""
    return [part.strip(", ") for part in _SEPARATORS.split(text) if part.strip(", ")]


def _mask_word(word: str) -> str:
    if "..." in word or set(word) <= {"*"}:
        return word  # masked already (apprise's privacy form)
    return f"{word[0]}...{word[-1]}" if len(word) >= 8 else "****"


def _hidden_parts(url: str) -> Tuple[str, Set[str]]:
    """``url`` masked, and the parts the mask hid (to scrub them from other text)."""
    hidden: Set[str] = set()

    def hide(word: str) -> str:
        masked = _mask_word(word) if word else word
        if masked != word:
            hidden.add(word)
        return masked

    url = url.strip()
    m = _SCHEME.match(url)
    if not m:
        return hide(url) or "''", hidden
    rest = url[m.end():]
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    host, _, port = hostport.rpartition(":") if re.search(r":\d+$", hostport) else (hostport, "", "")
    # A host name or address stays readable; a bare word there is a token (slack://TOKEN_A/...).
    readable_host = bool(_HOST_NAME.match(host)) or host.lower() == "localhost"
    shown = f"{m.group(1).lower()}://"
    if at:
        shown += hide(user) + (":****" if colon else "") + "@"
        if set(password) - {"*"}:
            hidden.add(password)
    shown += (host if readable_host else hide(host)) + (f":{port}" if port else "")
    shown += slash + "/".join(hide(seg) for seg in path.split("/"))
    if query:
        pairs = [pair.partition("=") for pair in query.split("&") if pair]
        shown += "?" + "&".join(f"{key}={hide(value)}" if eq else hide(key) for key, eq, value in pairs)
    if fragment:
        shown += "#" + hide(fragment)
    return shown, hidden


def mask_url(url: str) -> str:
    """``url`` with its secret parts hidden, for messages and logs.

    The scheme, a host name or address and the port stay; the user and password,
    every path segment, a host that is a bare token, query values and the fragment
    become ``x...y`` (8 characters or more) or ``****``.
    """
    return _hidden_parts(url)[0]


def _scrub(text: str, secrets: Set[str]) -> str:
    for word in sorted(secrets, key=len, reverse=True):
        if len(word) >= 5:  # shorter ones (method=POST) are settings, not tokens
            text = text.replace(word, "****")
    return text


# ---- apprise -----------------------------------------------------------------------------

_HELD: contextvars.ContextVar[Optional[List[str]]] = contextvars.ContextVar("scalewatch_notify_held", default=None)


class _HoldBack(logging.Filter):
    """Keeps records made while we use apprise out of the user's logs; keeps their warnings for us."""

    def filter(self, record: logging.LogRecord) -> bool:
        held = _HELD.get()
        if held is None:
            return True  # someone else's use of apprise or urllib3: untouched
        if record.levelno >= logging.WARNING and len(held) < 20:
            try:
                held.append(record.getMessage())
            except Exception:  # a malformed record must not break sending
                pass
        return False


_HOLD_BACK = _HoldBack()


@contextlib.contextmanager
def _held_back() -> Iterator[List[str]]:
    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if _HOLD_BACK not in logger.filters:
            logger.addFilter(_HOLD_BACK)
    held: List[str] = []
    token = _HELD.set(held)  # contextvars reach apprise's own worker threads too
    try:
        yield held
    finally:
        _HELD.reset(token)


def _import_apprise() -> Any:
    try:
        import apprise
    except ImportError as err:
        raise ImportError(f"`notify` needs apprise, which is not installed: {EXTRA_HINT}") from err
    return apprise


def _asset(apprise: Any) -> Any:
    # Requests run on our own daemon thread (no apprise worker pool, no call-level
    # deadline), so a hung endpoint never holds up the process's exit; sockets are
    # bounded by cto/rto. Nothing of apprise's is kept on disk.
    return apprise.AppriseAsset(async_mode=False, service_timeout=0, secure_logging=True,
                                storage_mode=apprise.PersistentStoreMode.MEMORY)


def _unusable(url: str, where: str) -> ValueError:
    m = _SCHEME.match(url.strip())
    scheme = m.group(1).lower() if m else None
    if scheme is None:
        reason = "it is not a URL (apprise URLs look like slack://TOKEN_A/TOKEN_B/TOKEN_C or ntfy://ntfy.sh/TOPIC)"
    elif scheme not in _import_apprise().NotificationManager():
        reason = f"apprise has no service for '{scheme}://'"
        if scheme in ("http", "https"):
            reason += "; for a plain webhook use json://HOST/PATH or form://HOST/PATH (jsons://, forms:// for https)"
    else:
        reason = f"apprise cannot build a '{scheme}://' service from it (a host, token or option is missing or malformed)"
    return ValueError(f"`notify`{where}: {mask_url(url)!r} is not a usable notification URL: {reason}. Services and "
                      f"their URL formats: {_WIKI}")


def _load_service(apprise: Any, url: str, where: str = "") -> Any:
    """The apprise service for ``url``, with scalewatch's per-request timeouts.

    Raises:
        ValueError: naming ``notify`` and showing ``url`` masked, when apprise cannot use it.
    """
    service = None
    if _SCHEME.match(url):
        with _held_back():  # apprise logs the URL it loads
            service = apprise.Apprise.instantiate(url, asset=_asset(apprise))
    if service is None:
        raise _unusable(url, where)
    query = url.partition("?")[2].lower()
    if not re.search(r"(^|&)cto=", query):
        service.socket_connect_timeout = NOTIFY_CONNECT_TIMEOUT
    if not re.search(r"(^|&)rto=", query):
        service.socket_read_timeout = NOTIFY_READ_TIMEOUT
    return service


def resolve_notify(notify: object) -> List[str]:
    """The notification URLs to use for ``notify`` as given.

    Args:
        notify: ``None`` (read ``SCALEWATCH_NOTIFY``: URLs separated by spaces or
            commas; unset or empty means no notifications), one apprise URL (a string;
            several separated by spaces or commas also work), or a list/tuple of them
            (``[]`` turns notifications off whatever the environment says).

    Returns:
        The URLs, each checked by apprise, duplicates removed, in order.

    Raises:
        ValueError: for an empty string, something that is not a string, or a URL
            apprise cannot use (unknown scheme, missing token); the message names
            ``notify`` and shows the URL masked.
        ImportError: URLs are given but apprise is not installed (``scalewatch[notify]``).
    """
    where = ""
    if notify is None:
        urls = split_urls(os.environ.get(NOTIFY_ENV, ""))
        where = f" (from ${NOTIFY_ENV})"
    elif isinstance(notify, str):
        urls = split_urls(notify)
        if not urls:
            raise ValueError("`notify` is an empty string: give an apprise URL such as 'ntfy://ntfy.sh/TOPIC' or "
                             f"'slack://TOKEN_A/TOKEN_B/TOKEN_C', a list of them, or None to read ${NOTIFY_ENV}")
    elif isinstance(notify, (list, tuple)):
        urls = []
        for i, url in enumerate(notify):
            if not isinstance(url, str):
                raise ValueError(f"`notify[{i}]` must be an apprise URL string, got {type(url).__name__}")
            if not url.strip():
                raise ValueError(f"`notify[{i}]` is an empty string: give an apprise URL such as "
                                 "'ntfy://ntfy.sh/TOPIC', or leave it out")
            urls.append(url.strip())
    else:  # the value itself is not shown: it may hold a secret
        raise ValueError("`notify` must be an apprise URL (a string), a list of them, or None to read "
                         f"${NOTIFY_ENV}; got {type(notify).__name__}")
    urls = list(dict.fromkeys(urls))
    if urls:
        apprise = _import_apprise()
        for url in urls:
            _load_service(apprise, url, where)
    return urls


# ---- delivery ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Batch:
    step: int
    alerts: Tuple[Alert, ...]
    repeats: Mapping[Tuple[str, str], int]


class _Endpoint:
    """One URL: its queue, its sender thread and what went wrong there."""

    def __init__(self, apprise: Any, url: str, index: int, owner: "Notifier") -> None:
        service = _load_service(apprise, url)
        self.apprise = apprise.Apprise(asset=_asset(apprise))
        self.apprise.add(service)
        self._failure_type = apprise.NotifyType.FAILURE
        self._warning_type = apprise.NotifyType.WARNING
        # Shown as apprise's privacy form (it masks each service's tokens), masked again
        # (it leaves e.g. an ntfy topic or a webhook path readable).
        self.label = mask_url(service.url(privacy=True).partition("?")[0])
        self._secrets = _hidden_parts(url)[1]
        self._index = index
        self._owner = owner
        self._queue: Deque[_Batch] = deque()
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._busy = False
        self._closing = False
        self._abandoned = False
        self._down = False  # the last message failed every try: the next gets one try
        self._unreported_drops = 0
        self.dropped = self.delivered = self.failed = 0
        self._said_full = self._said_failed = False

    def put(self, batch: _Batch) -> None:
        """Queue ``batch``; never waits (a full queue drops its oldest message)."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"scalewatch-notify-{self._index}", daemon=True)
                self._thread.start()
            full = len(self._queue) >= self._owner.queue_size
            if full:
                self._queue.popleft()
                self.dropped += 1
                self._unreported_drops += 1
            self._queue.append(batch)
            self._cond.notify_all()
            say = full and not self._said_full
            self._said_full = self._said_full or full
        if say:
            log.warning("scalewatch: notifications to %s are not keeping up (%d waiting); dropping the oldest, "
                        "counted in the next message. Every alert is still in the log and the history.",
                        self.label, self._owner.queue_size)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._abandoned or not self._queue:
                    return
                batch = self._queue.popleft()
                dropped, self._unreported_drops = self._unreported_drops, 0
                self._busy = True
            try:
                self._deliver(batch, dropped)
            except Exception as err:  # a bug here must not end the sender silently
                self._failed(1, f"{type(err).__name__}: {err}")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _deliver(self, batch: _Batch, dropped: int) -> None:
        owner = self._owner
        title, body = format_message(owner.run_name, batch.step, batch.alerts, batch.repeats, dropped,
                                     owner.max_listed)
        kind = self._failure_type if is_failure(batch.alerts) else self._warning_type
        tries = 1 if self._down else owner.attempts
        reason = "the service reported a failure"
        for attempt in range(tries):
            if attempt:
                with self._cond:  # back off; close() giving up ends the wait early
                    if self._cond.wait_for(lambda: self._abandoned, timeout=owner.backoff * 2 ** (attempt - 1)):
                        return
            with _held_back() as held:
                try:
                    ok = bool(self.apprise.notify(body=body, title=title, notify_type=kind))
                except Exception as err:  # apprise reports failures by value; be safe anyway
                    ok = False
                    held.insert(0, f"{type(err).__name__}: {err}")
            if ok:
                self.delivered += 1
                self._down = False
                return
            reason = held[0] if held else reason
        self._failed(tries, reason)

    def _failed(self, tries: int, reason: str) -> None:
        self.failed += 1
        self._down = True
        if self._said_failed or self._abandoned:  # close() has already said what it gave up on
            return
        self._said_failed = True
        log.warning("scalewatch: could not send a notification to %s (%d attempt(s)): %s. Later failures to this "
                    "endpoint are not logged; every alert is still in the log and the history.",
                    self.label, tries, _scrub(reason, self._secrets).rstrip("."))

    def finish(self) -> None:
        """Let the sender end once its queue is empty."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def wait(self, deadline: float) -> int:
        """Wait until ``deadline`` for the queue to empty; return the messages given up on."""
        thread = self._thread
        if thread is None:
            return 0
        thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            if not thread.is_alive():
                return 0
            self._abandoned = True  # the sender stops after the request in flight
            self._cond.notify_all()
            return len(self._queue) + int(self._busy)


class Notifier:
    """Sends each check's alerts, as one message, to apprise URLs from a background thread.

    Args:
        urls: apprise URLs, as :func:`resolve_notify` returns them.
        run_name: shown in every message's title (the engine passes the log
            directory's last two path components).
        repeat_interval: seconds between two messages about the same scale and
            alert kind; crossings in between are counted in the next one.
        attempts: tries per message and endpoint (after a message failed every
            try, the next gets one try until one succeeds again).
        backoff: seconds before the first retry; doubled for each further one.
        queue_size: messages waiting per endpoint before the oldest is dropped.
        max_listed: alerts listed in full in one message; the rest are counted.

    Raises:
        ValueError: for a URL apprise cannot use (shown masked).
        ImportError: apprise is not installed.
    """

    def __init__(self, urls: Sequence[str], run_name: str, *, repeat_interval: float = NOTIFY_REPEAT_INTERVAL,
                 attempts: int = NOTIFY_ATTEMPTS, backoff: float = NOTIFY_BACKOFF,
                 queue_size: int = NOTIFY_QUEUE_SIZE, max_listed: int = NOTIFY_MAX_LISTED) -> None:
        apprise = _import_apprise()
        self.run_name = run_name
        self.repeat_interval = repeat_interval
        self.attempts = max(1, int(attempts))
        self.backoff = backoff
        self.queue_size = max(1, int(queue_size))
        self.max_listed = max_listed
        # The sender threads start with the first message: a run without alerts starts none.
        with _held_back():  # apprise logs as it sets up
            self.endpoints = [_Endpoint(apprise, url, i, self) for i, url in enumerate(urls)]
        self._last_sent: Dict[Tuple[str, str], float] = {}
        self._held_repeats: Dict[Tuple[str, str], int] = {}
        self._closed = False
        self._said_error = False

    def send(self, alerts: Sequence[Alert], step: int) -> None:
        """Queue one message for the alerts of one check; returns at once, never raises.

        Args:
            alerts: the alerts that fired at the check (one message, however many).
            step: the check's optimizer step.
        """
        try:
            if self._closed or not alerts:
                return
            batch = self._rate_limited(alerts, step)
            if batch is not None:
                for endpoint in self.endpoints:
                    endpoint.put(batch)
        except Exception as err:  # nothing reaches training
            if not self._said_error:
                self._said_error = True
                log.warning("scalewatch: could not queue a notification: %s: %s", type(err).__name__, err)

    def _rate_limited(self, alerts: Sequence[Alert], step: int) -> Optional[_Batch]:
        now = time.monotonic()
        fresh, repeats = [], {}
        for alert in alerts:
            key = (alert.name, alert.kind)
            last = self._last_sent.get(key)
            if last is not None and now - last < self.repeat_interval:
                self._held_repeats[key] = self._held_repeats.get(key, 0) + 1
                continue
            self._last_sent[key] = now
            held = self._held_repeats.pop(key, 0)
            if held:
                repeats[key] = held
            fresh.append(alert)
        return _Batch(step, tuple(fresh), repeats) if fresh else None

    def close(self, timeout: float = NOTIFY_CLOSE_TIMEOUT) -> None:
        """Wait up to ``timeout`` seconds in all for pending messages, then give up on the rest.

        Every endpoint's sender finishes in parallel under one deadline; what is
        still pending then is abandoned with one warning. Safe to call twice.
        """
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + max(0.0, timeout)
        for endpoint in self.endpoints:
            endpoint.finish()
        left = [(endpoint.label, endpoint.wait(deadline)) for endpoint in self.endpoints]
        left = [(label, n) for label, n in left if n]
        if left:
            log.warning("scalewatch: gave up on %d notification(s) after waiting %g s at the end (%s); every alert is "
                        "still in the log and the history.", sum(n for _, n in left), timeout,
                        ", ".join(f"{n} to {label}" for label, n in left))

    def __repr__(self) -> str:
        return f"Notifier({', '.join(e.label for e in self.endpoints)}; run={self.run_name!r})"
