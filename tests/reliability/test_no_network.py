"""No network: a run with W&B offline opens no socket other than loopback or Unix sockets.

The training runs in a subprocess with an audit hook (``sys.addaudithook``) that records
every socket connect/sendto/getaddrinfo of the Python process. W&B's service (wandb-core)
is a separate Go process the hook cannot see, so where ``strace`` exists the whole process
tree is traced as well and every address it connects or sends to is checked.
"""
from __future__ import annotations

import ast
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scalewatch.callbacks import metric_key
from scalewatch.monitor import HISTORY_FILENAME

from . import support
from .support import GEN, read_jsonl, read_wandb, wandb_series

LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}

HOOK = """
import atexit, json, socket, sys
_events = []
def _hook(event, args):
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        sock, address = args[0], args[-1]
        _events.append({"event": event, "family": int(sock.family), "address": repr(address)})
    elif event == "socket.getaddrinfo":
        _events.append({"event": event, "family": None, "address": repr(args[0])})
    elif event == "socket.gethostbyname":
        _events.append({"event": event, "family": None, "address": repr(args[0])})
sys.addaudithook(_hook)
atexit.register(lambda: open(sys.argv[2], "w").write(json.dumps(_events)))
sys.path.insert(0, sys.argv[1])
import support
support.main(["wandb-run", sys.argv[3]])
"""


def _is_local_host(host: str) -> bool:
    host = host.strip("[]")
    if host in LOCAL_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


STRACE_FLAGS = ["-f", "-qq", "--seccomp-bpf", "-e", "trace=connect,sendto,sendmsg"]


def _working_strace():
    """(strace, None) if it is installed and may trace here, else (None, why not)
    (containers often forbid ptrace)."""
    strace = shutil.which("strace")
    if strace is None:
        return None, "strace is not installed"
    probe = subprocess.run([strace, *STRACE_FLAGS, "-o", os.devnull, "true"], capture_output=True, text=True,
                           timeout=60)
    if probe.returncode != 0:
        return None, f"strace cannot trace here (exit {probe.returncode}): {probe.stderr.strip()[-300:]}"
    return strace, None


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("offline_run")
    events_file = root / "audit.json"
    strace_file = root / "strace.txt"
    env = support.subprocess_env(HOME=str(root / "home"), WANDB_CONFIG_DIR=str(root / "wandb_config"),
                                 WANDB_CACHE_DIR=str(root / "wandb_cache"), WANDB_DATA_DIR=str(root / "wandb_data"))
    cmd = [sys.executable, "-c", HOOK, str(support.HERE), str(events_file), str(root)]
    strace, no_strace = _working_strace()
    if strace:
        cmd = [strace, *STRACE_FLAGS, "-o", str(strace_file), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=str(support.REPO_ROOT))
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[len("RESULT "):])
    return {"root": root, "result": result, "events": json.loads(events_file.read_text()),
            "strace": strace_file.read_text() if strace else None, "no_strace": no_strace}


def test_the_offline_run_trained_and_logged_to_wandb(offline_run):
    result = offline_run["result"]
    assert result["global_step"] == 8 and result["alerts"] == ["near_upper", "pinned"]
    history = read_jsonl(Path(result["log_dir"]) / HISTORY_FILENAME)
    rows, alerts = read_wandb(offline_run["root"])
    assert wandb_series(rows, metric_key(GEN, "scale")) == pytest.approx({r["step"]: r["scale"] for r in history})
    assert [a.title for a in alerts] == [f"scalewatch near_upper: {GEN}", f"scalewatch pinned: {GEN}"]


def test_python_opens_only_loopback_or_unix_sockets(offline_run):
    events = offline_run["events"]
    assert any(e["event"] == "socket.connect" for e in events), "the audit hook saw nothing: is it installed?"
    bad = []
    for e in events:
        if e["event"] in ("socket.getaddrinfo", "socket.gethostbyname"):
            host = ast.literal_eval(e["address"])  # repr of a str/bytes/None
            host = host.decode() if isinstance(host, bytes) else (host or "")
            if not _is_local_host(host):
                bad.append(e)
            continue
        family = e["family"]
        if family == 1:  # AF_UNIX
            continue
        if family in (2, 10):  # AF_INET, AF_INET6: (host, port, ...)
            address = ast.literal_eval(e["address"])
            if address is None or _is_local_host(str(address[0])):
                continue
        bad.append(e)
    assert not bad, f"non-local network use: {bad}"


_ADDR = re.compile(r'sa_family=(AF_\w+)(?:.*?inet_addr\("([^"]+)"\))?(?:.*?inet_pton\(AF_INET6, "([^"]+)")?')


def test_no_process_of_the_run_connects_beyond_loopback(offline_run):
    """All processes (Python and the W&B service), traced with strace."""
    trace = offline_run["strace"]
    if trace is None:  # the Python-side audit above still ran; this check did not
        pytest.skip(f"{offline_run['no_strace']}: W&B's service process was not traced")
    bad = []
    for line in trace.splitlines():
        m = _ADDR.search(line)
        if not m:
            continue
        family, ip4, ip6 = m.groups()
        if family in ("AF_UNIX", "AF_NETLINK", "AF_UNSPEC"):
            continue
        if family in ("AF_INET", "AF_INET6") and _is_local_host(ip4 or ip6 or "?"):
            continue
        bad.append(line)
    assert not bad, "non-local network use:\n" + "\n".join(bad)
    assert "connect(" in trace  # strace saw the run (it talks to its W&B service)
