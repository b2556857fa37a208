"""An MLflow run as a source of readings: ``runs:/RUN_ID`` (or ``mlflow:RUN_ID``) and a tracking URI.

A run that kept scalewatch's history as its artifact (``scalewatch/scalewatch_history.jsonl``, what
every door's MLflow path uploads) is read from that file: in place when the run's artifacts are
local, else downloaded through ``MlflowClient`` into a temporary folder. A run that kept only the
``scalewatch/*`` metrics (``NAME[i]`` spelled ``NAME:i``, as MLflow refuses brackets) is rebuilt from
their metric histories through the key codec and :func:`~scalewatch.dashboards.sources.records_from_logged`,
like a TensorBoard or CSV run. The tracking URI is ``tracking_uri``, else ``MLFLOW_TRACKING_URI``,
else MLflow's default; a local store (sqlite, ``file:``) must exist (reading never creates one).

Every MLflow call here is bounded: unless the user set them, no HTTP retries and
:data:`HTTP_TIMEOUT` seconds a request, so an unreachable server is one error line, not a hang.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import unquote, urlparse

from scalewatch.monitor.history import HISTORY_FILENAME
from scalewatch.monitor.history.keys import parse_metric_key

#: the artifact folder of a run that holds scalewatch's history and plot
ARTIFACT_DIR = "scalewatch"
#: how a run is named on the command line: ``runs:/RUN_ID`` (MLflow's own) or ``mlflow:RUN_ID``
RUN_PREFIXES = ("runs:/", "mlflow:")
#: seconds an MLflow HTTP request may take when reading (``MLFLOW_HTTP_REQUEST_TIMEOUT`` wins if set)
HTTP_TIMEOUT = 10
#: the bounds set for a read unless the environment has them: no retries (MLflow's default backs off
#: for minutes), one timeout; and the file store allowed (MLflow 3 refuses it unless told; reading only)
READ_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(HTTP_TIMEOUT),
            "MLFLOW_ALLOW_FILE_STORE": "true"}

_RUN_ID = re.compile(r"^[A-Za-z0-9_-]+$")
_DIGITS = re.compile(r"(\d+)")


class MlflowReadError(Exception):
    """The run cannot be read; the message is one line, for a person (raised as a ``SourceError``)."""


def is_run_ref(text: str) -> bool:
    """Whether ``text`` names an MLflow run (``runs:/RUN_ID`` or ``mlflow:RUN_ID``)."""
    return text.startswith(RUN_PREFIXES)


def run_id_of(ref: str) -> str:
    """``runs:/RUN_ID``, ``mlflow:RUN_ID`` or a bare ``RUN_ID`` -> ``RUN_ID``.

    Raises:
        MlflowReadError: no run id in it.
    """
    run_id = ref
    for prefix in RUN_PREFIXES:
        if ref.startswith(prefix):
            run_id = ref[len(prefix):]
    run_id = run_id.strip("/")
    if not _RUN_ID.match(run_id):
        raise MlflowReadError(f"{ref}: not an MLflow run (give runs:/RUN_ID or mlflow:RUN_ID)")
    return run_id


@contextlib.contextmanager
def bounded_env() -> Iterator[None]:
    """:data:`READ_ENV` for the calls inside (each one the user has not set), then as before."""
    added = [k for k in READ_ENV if k not in os.environ]
    os.environ.update({k: READ_ENV[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def resolve_uri(tracking_uri: Optional[str]) -> str:
    """``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's default; a local store must exist.

    Raises:
        MlflowReadError: a local store (sqlite database, ``file:`` folder) that is not there.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        import mlflow

        uri = mlflow.get_tracking_uri()
    local = _local_store(uri)
    if local is not None and not os.path.exists(local):
        how = "" if tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") else \
            " (MLflow's default; give --tracking-uri or set MLFLOW_TRACKING_URI)"
        raise MlflowReadError(f"{uri}: no MLflow tracking store there{how}")
    return uri


def _local_store(uri: str) -> Optional[str]:
    """The file or folder a local tracking URI names (sqlite, ``file:``, a path); ``None`` for a server."""
    if uri.startswith("sqlite:///"):  # sqlite:///relative.db, sqlite:////absolute.db
        path = uri[len("sqlite:///"):].split("?", 1)[0]
        return None if path in ("", ":memory:") else path
    return local_path(uri)


def local_path(uri: Optional[str]) -> Optional[str]:
    """The local folder of a URI (``file:...`` or a plain path); ``None`` for a remote one."""
    if not uri:
        return None
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return uri
    return None


def short_reason(err: BaseException) -> str:
    """Why a call to a tracking server failed, short."""
    text = str(err)
    if "Connection refused" in text or "NewConnectionError" in text:
        return "connection refused"
    if "timed out" in text.lower() or "timeout" in text.lower():
        return f"no answer within {os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT', HTTP_TIMEOUT)} s"
    line = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def open_run(ref: str, tracking_uri: Optional[str]) -> Tuple[Any, Any, str]:
    """The run ``ref`` names: ``(client, run, uri)``.

    Raises:
        MlflowReadError: not a run reference, no such store, the server cannot be reached, no such run.
    """
    run_id = run_id_of(ref)
    uri = resolve_uri(tracking_uri)
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError as err:
        raise MlflowReadError(f"{ref}: reading an MLflow run needs mlflow (pip install \"scalewatch[mlflow]\")") \
            from err
    try:
        client = MlflowClient(tracking_uri=uri)
    except Exception as err:  # noqa: BLE001 - a scheme MLflow does not know, a store it cannot open
        raise MlflowReadError(f"{uri}: MLflow cannot open this tracking URI ({short_reason(err)})") from err
    try:
        return client, client.get_run(run_id), uri
    except MlflowException as err:
        if getattr(err, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            raise MlflowReadError(f"{ref}: no MLflow run {run_id} at {uri}") from err
        if "API request to" in str(err):
            raise MlflowReadError(f"{uri}: the MLflow tracking server cannot be reached ({short_reason(err)})") \
                from err
        raise MlflowReadError(f"{ref}: MLflow cannot read it at {uri} ({short_reason(err)})") from err


def local_artifacts(run: Any) -> Optional[str]:
    """The run's artifact folder when it is on this machine (``file:`` or a path), else ``None``."""
    path = local_path(run.info.artifact_uri)
    return path if path and os.path.isdir(path) else None


def history_artifact(client: Any, run: Any) -> Tuple[Optional[str], Any]:
    """The run's history file on this machine, ``(path, keep)``; ``(None, None)`` when it kept none.

    Local artifacts are read in place; remote ones are downloaded into a temporary folder, which
    lives as long as ``keep`` does.
    """
    wanted = f"{ARTIFACT_DIR}/{HISTORY_FILENAME}"
    local = local_artifacts(run)
    if local is not None:
        path = os.path.join(local, ARTIFACT_DIR, HISTORY_FILENAME)
        return (path, None) if os.path.isfile(path) else (None, None)
    if wanted not in {a.path for a in client.list_artifacts(run.info.run_id, ARTIFACT_DIR)}:
        return None, None
    keep = tempfile.TemporaryDirectory(prefix="scalewatch-mlflow-")
    return client.download_artifacts(run.info.run_id, wanted, keep.name), keep


def last_value(ref: str, tracking_uri: Optional[str], metric: str) -> Optional[Tuple[float, int]]:
    """``(value, step)`` of ``metric`` at the last step the run logged it (``compare``'s final metric);
    ``None`` when it never did or the run cannot be read now (bounded as every read here)."""
    with bounded_env():
        try:
            client, run, _ = open_run(ref, tracking_uri)
            if metric not in run.data.metrics:
                return None
            history = client.get_metric_history(run.info.run_id, metric)
        except Exception:  # noqa: BLE001 - a missing metric value, never an error of the comparison
            return None
    if not history:
        return None
    last = max(history, key=lambda m: (m.step, m.timestamp))
    return float(last.value), int(last.step)


def logged_rows(client: Any, run: Any) -> List[Tuple[int, str, Dict[str, float]]]:
    """The run's ``scalewatch/*`` metrics as ``(step, NAME, {FIELD: value})`` rows in step order, names
    in natural order (MLflow keeps no order: ``NAME[2]`` before ``NAME[10]``); a value logged twice at a
    step: the later one."""
    keys = [(key, parsed) for key, parsed in ((k, parse_metric_key(k, mlflow=True)) for k in run.data.metrics)
            if parsed is not None]
    keys.sort(key=lambda kp: [int(t) if t.isdigit() else t for t in _DIGITS.split(kp[1].name)])
    order: Dict[str, int] = {}
    values: Dict[Tuple[int, int], Dict[str, float]] = {}
    for key, parsed in keys:
        index = order.setdefault(parsed.name, len(order))
        for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.timestamp):
            values.setdefault((int(m.step), index), {})[parsed.field] = float(m.value)
    names = list(order)
    return [(step, names[index], fields) for (step, index), fields in sorted(values.items())]


__all__ = ["ARTIFACT_DIR", "HTTP_TIMEOUT", "MlflowReadError", "READ_ENV", "RUN_PREFIXES", "bounded_env",
           "history_artifact", "is_run_ref", "last_value", "local_artifacts", "local_path", "logged_rows", "open_run", "resolve_uri",
           "run_id_of", "short_reason"]
