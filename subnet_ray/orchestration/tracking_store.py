"""The MLflow tracking store of a sweep: its URI, the check that it is usable, and the local UI over it.

`default_tracking_uri` names a sweep root's embedded SQLite store; `check_tracking_uri` fails
within a timeout, naming the URI (password hidden), when a store cannot be reached or written;
`start_ui` / `stop_ui` / `open_ui` serve a store with `mlflow ui` in its own process group.
Logging runs into the store is tracking.py's job. This module does not import mlflow.
"""
from __future__ import annotations

import errno
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

_DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
_SCHEMES = ("sqlite", "file", "http", "https", "databricks", *_DB_PORTS)


class TrackingUnreachable(ConnectionError):
    """A tracking store that cannot be reached or written; the message names the URI."""


class UIError(ValueError):
    """The local UI cannot start: its port is taken or there is no store to serve; the message says which."""


def default_tracking_uri(root: str | os.PathLike) -> str:
    """Returns the embedded tracking store of a sweep root: `sqlite:///<root>/mlflow.db`."""
    root_s = str(root)
    if "://" in root_s and not root_s.startswith("file://"):
        raise ValueError(f"store root {root_s} is remote: give a tracking URI (--tracking-uri) for MLflow")
    return f"sqlite:///{Path(root_s.removeprefix('file://')).resolve()}/mlflow.db"


def uri_scheme(uri: str) -> str:
    """Returns the scheme of a tracking URI without its driver (`postgresql+psycopg2` -> `postgresql`); `file` for a path."""
    return uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else "file"


def redact(uri: str) -> str:
    """Returns `uri` with any password replaced by ***, so messages can name it."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return uri.replace(f":{parts.password}@", ":***@", 1)


def _bounded(uri: str, timeout: float, probe: Callable[[float], None], what: str = "server") -> None:
    # urllib's timeout covers each socket operation but not name resolution, so the probe
    # runs in a daemon thread and we stop waiting for it at the deadline.
    err: list[BaseException] = []

    def run() -> None:
        try:
            probe(timeout)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            err.append(e)

    t = threading.Thread(target=run, daemon=True, name="tracking-uri-check")
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TrackingUnreachable(f"MLflow tracking {what} {redact(uri)} unreachable: no answer within {timeout:g} s")
    if err:
        e = err[0]
        if isinstance(e, TrackingUnreachable):
            raise e
        reason = getattr(e, "reason", None) or e
        raise TrackingUnreachable(f"MLflow tracking {what} {redact(uri)} unreachable: {reason}") from e


def _http_probe(uri: str) -> Callable[[float], None]:
    base = uri.rstrip("/")
    ctx = None
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        ctx = ssl._create_unverified_context()  # the user asked mlflow to skip verification too

    def status(url: str, deadline: float) -> int:
        req = urllib.request.Request(url, headers={"User-Agent": "subnet-ray"})
        try:
            with urllib.request.urlopen(req, timeout=max(deadline - time.monotonic(), 0.1), context=ctx) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def probe(timeout: float) -> None:
        deadline = time.monotonic() + timeout
        health = status(f"{base}/health", deadline)
        if health == 200:
            return
        # Behind a proxy /health may be hidden; the REST API answering (even 401/403: the
        # server is there, credentials are mlflow's business) is enough.
        api = status(f"{base}/api/2.0/mlflow/experiments/search?max_results=1", deadline)
        if api in (200, 401, 403):
            return
        raise TrackingUnreachable(
            f"MLflow tracking server {redact(uri)} unreachable: HTTP {health} from /health and HTTP {api} "
            "from the experiments API (is this an MLflow tracking server?)"
        )

    return probe


def _tcp_probe(uri: str) -> Callable[[float], None] | None:
    parts = urlsplit(uri)
    if not parts.hostname:  # a unix-socket DSN: nothing to dial
        return None
    port = parts.port or _DB_PORTS[uri_scheme(uri)]

    def probe(timeout: float) -> None:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()

    return probe


def _check_folder(uri: str, folder: Path) -> None:
    p = folder.absolute()
    while not p.exists():  # the nearest existing ancestor decides whether the folder is creatable
        p = p.parent
    if not p.is_dir():
        raise TrackingUnreachable(f"MLflow tracking store {redact(uri)} unusable: {p} is not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise TrackingUnreachable(f"MLflow tracking store {redact(uri)} unusable: cannot create or write in {p}")


def check_tracking_uri(uri: str, timeout: float = 30) -> None:
    """Returns None if the tracking store at `uri` is usable; raises TrackingUnreachable within `timeout` s if not.

    http(s): GET /health (else the experiments API); sqlite / file: the folder exists or can be
    created and is writable; postgresql / mysql / mssql: the database port accepts a connection.
    Nothing is created.
    """
    scheme = uri_scheme(uri)
    if scheme not in _SCHEMES:
        raise ValueError(f"tracking URI {redact(uri)}: unsupported scheme {scheme!r}; expected one of {', '.join(_SCHEMES)}")
    if scheme in ("http", "https"):
        _bounded(uri, timeout, _http_probe(uri))
    elif scheme in _DB_PORTS:
        probe = _tcp_probe(uri)
        if probe is not None:
            _bounded(uri, timeout, probe, what="database")
    elif scheme == "sqlite":
        path = uri.split("://", 1)[1].split("?", 1)[0]
        if path in ("", "/", "/:memory:"):
            raise ValueError(f"tracking URI {uri}: an in-memory SQLite store would lose the runs; give a file")
        db = Path(path[1:])  # sqlite:///rel.db -> rel.db ; sqlite:////abs.db -> /abs.db
        if db.is_dir():
            raise TrackingUnreachable(f"MLflow tracking store {uri} unusable: {db} is a folder, not a database file")
        if db.exists() and not os.access(db, os.W_OK):
            raise TrackingUnreachable(f"MLflow tracking store {uri} unusable: {db} is not writable")
        _check_folder(uri, db.parent)  # SQLite writes its journal beside the database
    elif scheme == "file":
        _check_folder(uri, Path(urlsplit(uri).path if "://" in uri else uri))


def ui_command(root: str | os.PathLike, tracking_uri: str | None = None, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """Returns the `mlflow ui` command line that serves the sweep store under `root` on host:port."""
    uri = tracking_uri or default_tracking_uri(root)
    if uri_scheme(uri) in ("http", "https", "databricks"):
        raise ValueError(f"tracking URI {uri} is a server already: open it in a browser, no local UI needed")
    if not 0 < int(port) < 65536:
        raise ValueError(f"port {port}: expected 1-65535")
    if uri_scheme(uri) == "sqlite":
        db = Path(uri.split("://", 1)[1].split("?", 1)[0][1:])
        if not db.is_file():
            raise FileNotFoundError(f"no MLflow store at {db}, --root / --tracking-uri; expected the root of a sweep that has run")
    # New experiments created from the UI would otherwise put artifacts in ./mlartifacts of the cwd.
    artifacts = (Path(str(root).removeprefix("file://")).resolve() / "mlartifacts").as_uri()
    return [
        sys.executable, "-m", "mlflow", "ui",
        "--backend-store-uri", uri,
        "--artifacts-destination", artifacts,
        "--host", host, "--port", str(int(port)),
        "--workers", "1",  # a browsing UI for one user; the default 4 crowd small machines
    ]


# mlflow 3's server also starts seven background job consumers (GenAI features), which a
# browsing UI does not need and which outlive a plain SIGTERM to the server.
UI_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def start_ui(root: str | os.PathLike, tracking_uri: str | None = None, host: str = "127.0.0.1", port: int = 5000) -> subprocess.Popen:
    """Returns the running MLflow UI process (in its own process group, so stop_ui ends all of it)."""
    cmd = ui_command(root, tracking_uri, host, port)
    return subprocess.Popen(cmd, env={**os.environ, **UI_ENV}, start_new_session=True)


def stop_ui(proc: subprocess.Popen, grace: float = 10) -> int:
    """Returns the exit code of the UI after ending its whole process group (SIGTERM, then SIGKILL)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break  # the whole group is gone already
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # the server's own workers may linger briefly after it exits
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.wait()


def check_port(host: str, port: int) -> None:
    """Raises UIError unless `port` on `host` is free to listen on (mlflow's server exits 0 when it is not)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a TIME_WAIT port is free
        try:
            sock.bind((host, int(port)))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UIError(f"port {port} on {host} is in use ({e.strerror}), --port; expected a free port") from None
            raise UIError(f"cannot listen on {host}:{port} ({e.strerror or e}), --host / --port; expected an address of this machine") from None


def ui_host(host: str) -> str:
    """Returns the address a browser on this machine reaches a server listening on `host` at."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


class _Stop(Exception):
    """SIGTERM or SIGHUP arrived while the UI ran."""


def open_when_up(base: str, url: str, timeout: float = 300, out=None) -> threading.Thread:
    """Returns the (daemon) thread that opens `url` in the user's web browser once the MLflow UI at `base` answers."""
    import webbrowser

    def run() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                check_tracking_uri(base, timeout=5)
                break
            except TrackingUnreachable:
                time.sleep(0.5)
        else:
            return
        if not webbrowser.open(url):
            print(f"no web browser to open here: open {url}", file=out or sys.stdout, flush=True)

    t = threading.Thread(target=run, daemon=True, name="open-ui")
    t.start()
    return t


def open_ui(root: str | os.PathLike, tracking_uri: str | None = None, host: str = "127.0.0.1", port: int = 5000,
            out=None, urls: list[str] = (), browse: str | None = None) -> int:
    """Returns the exit status of the MLflow UI, run in the foreground until it stops, Ctrl-C, SIGTERM or SIGHUP.

    Prints the UI's address and then `urls` (lines naming the sweeps' views); with `browse`, opens that URL
    in a web browser once the server answers. Raises UIError / FileNotFoundError before starting anything
    when the port is taken or there is no store. A signal stops the server's whole process group (130 for
    Ctrl-C, 128 + signal otherwise); a server that exits by itself failed, so its status is never 0.
    """
    ui_command(root, tracking_uri, host, port)  # no store, bad URI or port: fail before starting anything
    check_port(host, port)
    got: list[int] = []

    def stop(signum, frame):
        if not got:
            got.append(signum)
            raise _Stop
    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        proc = start_ui(root, tracking_uri, host, port)
        print(f"MLflow UI: http://{host}:{port} (store {tracking_uri or default_tracking_uri(root)}); "
              "Ctrl-C stops it", *urls, sep="\n", file=out or sys.stdout, flush=True)
        if browse:
            open_when_up(f"http://{ui_host(host)}:{port}", browse, out=out)
        rc = proc.wait()
        return rc or 1  # it stopped unasked (mlflow exits 0 when it cannot bind): that is a failure
    except (KeyboardInterrupt, _Stop):
        for sig in old:
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        if "proc" in locals():
            stop_ui(proc)
        return 128 + got[0] if got else 130
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
