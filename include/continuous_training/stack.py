"""The embedded stack: ``ct stack up|status|down`` as native processes on loopback.

Parts, started in this order, each in its own session (process group) with its output in
``$CT_HOME/logs/<part>.log`` and its pid in ``$CT_HOME/run/<part>.pid``:

1. ``smtp``: :mod:`continuous_training.mailsink` writing to ``$CT_HOME/mail``.
2. ``mlflow``: ``mlflow server`` on a SQLite backend with proxied artifacts under ``$CT_HOME/mlflow``.
3. Airflow 3 on SQLite with the LocalExecutor: ``airflow db migrate`` once, then the API server,
   then (once the API answers, see AIRFLOW-NOTES.md) the scheduler, dag-processor and triggerer.
4. ``endpoint``: the prediction service (uvicorn, 2 workers).

Nothing listens beyond ``settings.host``. Secrets (JWT secret, Fernet key, API secret key, the admin
password) are generated once per state directory and kept in files with mode 0600.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from continuous_training.settings import Settings, load_settings

log = logging.getLogger(__name__)

PARTS = (
    "smtp",
    "mlflow",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "endpoint",
)
AIRFLOW_PARTS = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
#: Shorthands accepted by :func:`stack_up`'s ``parts``.
ALIASES = {"airflow": AIRFLOW_PARTS, "all": PARTS}

#: Seconds a part may take to become healthy. Generous: a cold API server (no bytecode cache) took
#: 60-70 s on 2 cores, and the others start while it does.
START_TIMEOUT_S = {
    "smtp": 30.0,
    "mlflow": 180.0,
    "airflow-api-server": 300.0,
    "airflow-scheduler": 240.0,
    "airflow-dag-processor": 240.0,
    "airflow-triggerer": 240.0,
    "endpoint": 180.0,
}
#: Seconds between SIGTERM and SIGKILL in :func:`stack_down` (Airflow needs 7-17 s to stop).
STOP_TIMEOUT_S = 45.0
MIGRATE_TIMEOUT_S = 600.0
ADMIN_USER = "admin"
#: Parts a part needs healthy before it may start (the scheduler must not start before the
#: execution API listens, or tasks fail with Errno 111; the endpoint loads its model from MLflow).
_NEEDS = {
    "airflow-scheduler": ("airflow-api-server",),
    "airflow-dag-processor": ("airflow-api-server",),
    "airflow-triggerer": ("airflow-api-server",),
    "endpoint": ("mlflow",),
}
#: Parts a stop wave handles together: workers first, then the servers they talk to.
_STOP_WAVES = (
    ("endpoint", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"),
    ("airflow-api-server", "mlflow", "smtp"),
)
#: A word every process of the part has in its command line; guards against a recycled pid.
_CMDLINE_MARKER = {
    "smtp": "continuous_training.mailsink",
    "mlflow": "mlflow",
    "endpoint": "uvicorn",
    **{part: "airflow" for part in AIRFLOW_PARTS},
}
_HEALTH_KEY = {
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag_processor",
    "airflow-triggerer": "triggerer",
}
_LOG_TAIL_LINES = 20

#: Processes started by this Python process, so their exit codes can be read (and zombies reaped).
_LAUNCHED: dict[int, subprocess.Popen[bytes]] = {}


class StackError(RuntimeError):
    """A part of the embedded stack could not be started, checked or stopped."""


# --------------------------------------------------------------------------------------------------
# Environment and secrets
# --------------------------------------------------------------------------------------------------


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _local_url(settings: Settings, port: int) -> str:
    return f"http://{_url_host(settings.host)}:{port}"


def bin_dir() -> Path:
    """The folder holding this interpreter's executables (the venv's ``bin``).

    Returns:
        ``Path(sys.executable).parent``, not resolved, so a venv's symlinked python keeps its venv.
    """
    return Path(sys.executable).parent


def _read_json_object(path: Path, expected: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StackError(f"{path}: cannot read it as JSON ({exc}); expected {expected}") from exc
    if not isinstance(data, dict):
        raise StackError(f"{path}: expected {expected}, found {type(data).__name__}")
    return data


def _write_private_json(path: Path, data: dict[str, Any], *, replace: bool) -> bool:
    """Write ``data`` with mode 0600 atomically; without ``replace``, only if ``path`` is absent.

    Returns:
        True if this call wrote the file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        if replace:
            os.replace(tmp, path)
            return True
        try:
            # link() fails if the name exists, so two concurrent first runs agree on one secret.
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _private_json(path: Path, makers: dict[str, Callable[[], str]], expected: str) -> dict[str, str]:
    """Load a 0600 JSON file of secrets, generating (once) any entry that is missing."""
    if not path.exists():
        _write_private_json(path, {key: make() for key, make in makers.items()}, replace=False)
    data = _read_json_object(path, expected)
    missing = [key for key in makers if not isinstance(data.get(key), str) or not data[key]]
    if missing:
        data.update({key: makers[key]() for key in missing})
        _write_private_json(path, data, replace=True)
    if path.stat().st_mode & 0o077:
        # Someone loosened it; these are credentials.
        os.chmod(path, 0o600)
    return data


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def stack_secrets(settings: Settings) -> dict[str, str]:
    """The Airflow secrets of this state directory, generated on first use.

    Stored in ``<home>/airflow/secrets.json`` (mode 0600): ``jwt_secret`` (64 random bytes,
    url-safe base64), ``fernet_key`` and ``api_secret_key``.

    Args:
        settings: the stack settings (``settings.airflow_home`` holds the file).

    Returns:
        The secrets by name.

    Raises:
        StackError: the file exists but is not a JSON object.
    """
    makers: dict[str, Callable[[], str]] = {
        # Airflow warns (InsecureKeyLengthWarning, repeatedly) below 64 bytes.
        "jwt_secret": lambda: secrets.token_urlsafe(64),
        "fernet_key": _fernet_key,
        "api_secret_key": lambda: secrets.token_urlsafe(32),
    }
    return _private_json(
        settings.airflow_home / "secrets.json",
        makers,
        "an object with jwt_secret, fernet_key, api_secret_key",
    )


def passwords_file(settings: Settings) -> Path:
    """The simple auth manager's password file, ``<home>/airflow/passwords.json``."""
    return settings.airflow_home / "passwords.json"


def airflow_password(settings: Settings) -> str:
    """The Airflow UI/API password of user ``admin``, generated once per state directory.

    Args:
        settings: the stack settings.

    Returns:
        The password (``secrets.token_urlsafe(16)``), as stored in :func:`passwords_file`.

    Raises:
        StackError: the password file exists but is not a JSON object.
    """
    data = _private_json(
        passwords_file(settings),
        {ADMIN_USER: lambda: secrets.token_urlsafe(16)},
        f'an object like {{"{ADMIN_USER}": "<password>"}}',
    )
    return data[ADMIN_USER]


def service_env(settings: Settings) -> dict[str, str]:
    """The ``CT_*`` variables (and ``MLFLOW_TRACKING_URI``) the endpoint and the tasks need.

    With them, :func:`~continuous_training.settings.load_settings` in a child process sees the same
    settings as the process that started the stack.

    Args:
        settings: the stack settings.

    Returns:
        Variable name -> value (not merged with ``os.environ``).
    """
    return {
        "CT_HOME": str(settings.home),
        "CT_LAKE": str(settings.lake),
        "CT_CONFIG_DIR": str(settings.config_dir),
        "CT_HOST": settings.host,
        "CT_AIRFLOW_PORT": str(settings.airflow_port),
        "CT_MLFLOW_PORT": str(settings.mlflow_port),
        "CT_ENDPOINT_PORT": str(settings.endpoint_port),
        "CT_SMTP_PORT": str(settings.smtp_port),
        "CT_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "CT_ENDPOINT_URL": settings.endpoint_url,
        "CT_AIRFLOW_URL": settings.airflow_url,
        "CT_SMTP_CONN_ID": settings.smtp_conn_id,
        "CT_ENDPOINT_WORKERS": str(settings.endpoint_workers),
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
    }


def smtp_connection(settings: Settings) -> dict[str, Any]:
    """The Airflow connection (JSON form) for the embedded SMTP sink.

    The extra field names are those read by ``airflow.providers.smtp.hooks.smtp.SmtpHook``
    (``disable_ssl``, ``disable_tls``, ``from_email``); a plain loopback server needs both TLS
    switches off.

    Args:
        settings: the stack settings.

    Returns:
        The connection as a dict, ready for ``json.dumps`` into ``AIRFLOW_CONN_<ID>``.
    """
    from continuous_training.config import load_policy

    return {
        "conn_type": "smtp",
        "host": settings.host,
        "port": settings.smtp_port,
        "extra": {
            "disable_ssl": True,
            "disable_tls": True,
            "from_email": load_policy(settings.config_dir).alerts.from_email,
        },
    }


def airflow_env(settings: Settings) -> dict[str, str]:
    """The environment of every Airflow process of the embedded stack (without ``os.environ``).

    Generates the secrets and the admin password file on first use (see :func:`stack_secrets`,
    :func:`airflow_password`).

    Args:
        settings: the stack settings.

    Returns:
        Variable name -> value: ``AIRFLOW_HOME``, ``AIRFLOW__*`` settings, the SMTP connection
        ``AIRFLOW_CONN_<ID>``, ``PYTHONPYCACHEPREFIX`` and :func:`service_env`.

    Raises:
        StackError: a secrets file is unreadable.
    """
    keys = stack_secrets(settings)
    airflow_password(settings)  # creates the password file the auth manager reads
    home = settings.airflow_home
    base_url = _local_url(settings, settings.airflow_port)
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.dags_folder),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(settings.plugins_folder),
        # Four slashes: SQLAlchemy needs an absolute path here, a relative one breaks per cwd.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{(home / 'airflow.db').resolve()}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # LocalExecutor pre-forks this many workers; 32 (the default) is too many for 2 cores.
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__API__HOST": settings.host,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        # Without it, workers call http://localhost:8080/execution/.
        "AIRFLOW__API__BASE_URL": base_url,
        "AIRFLOW__API__SECRET_KEY": keys["api_secret_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
        "AIRFLOW__CORE__FERNET_KEY": keys["fernet_key"],
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file(settings)),
        # Look for new DAG files every 20 s instead of every 5 minutes.
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "20",
        f"AIRFLOW_CONN_{settings.smtp_conn_id.upper()}": json.dumps(smtp_connection(settings)),
        "PYTHONPYCACHEPREFIX": str(settings.home / "pycache"),
    }
    env.update(service_env(settings))
    return env


def _process_env(settings: Settings, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    # With PYTHONDONTWRITEBYTECODE set, PYTHONPYCACHEPREFIX alone writes no cache at all, and
    # every start re-compiles airflow/mlflow (import airflow: ~8 s instead of ~3.5 s).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(settings.home / "pycache")
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    # Artifact downloads (the endpoint and tasks load models) otherwise fill the logs with progress bars.
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    env.update(extra)
    env["PATH"] = os.pathsep.join([str(bin_dir()), env.get("PATH", "")]).rstrip(os.pathsep)
    no_proxy = [h for h in env.get("NO_PROXY", env.get("no_proxy", "")).split(",") if h]
    for host in (settings.host, "127.0.0.1", "localhost"):
        if host not in no_proxy:
            no_proxy.append(host)
    env["NO_PROXY"] = env["no_proxy"] = ",".join(no_proxy)
    return env


# --------------------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    name: str
    command: list[str]
    env: dict[str, str]
    port: int | None
    url: str | None


def part_url(settings: Settings, part: str) -> str | None:
    """Where a part answers (None for the Airflow parts without a port of their own)."""
    if part == "smtp":
        return f"smtp://{_url_host(settings.host)}:{settings.smtp_port}"
    port = {
        "mlflow": settings.mlflow_port,
        "airflow-api-server": settings.airflow_port,
        "endpoint": settings.endpoint_port,
    }.get(part)
    return _local_url(settings, port) if port is not None else None


def _part_spec(settings: Settings, name: str, env_cache: dict[str, dict[str, str]]) -> _Part:
    bindir = bin_dir()
    host = settings.host

    def env_for(kind: str) -> dict[str, str]:
        if kind not in env_cache:
            if kind == "airflow":
                env_cache[kind] = _process_env(settings, airflow_env(settings))
            elif kind == "endpoint":
                # One OpenMP thread per worker: the default spin-waits collapsed throughput (notes).
                # Few client retries: a registry outage must not stall the alias poller for minutes.
                env_cache[kind] = _process_env(
                    settings,
                    {**service_env(settings), "OMP_NUM_THREADS": "1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"},
                )
            elif kind == "mlflow":
                # Job execution serves GenAI scorers and trace archival, which this project does not
                # use; it costs 6 more processes (huey consumers, ~170 MB RSS each) on a 2-core machine.
                env_cache[kind] = _process_env(
                    settings, {**service_env(settings), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
                )
            else:
                env_cache[kind] = _process_env(settings, service_env(settings))
        return env_cache[kind]

    if name == "smtp":
        command = [
            str(bindir / "python"),
            "-m",
            "continuous_training.mailsink",
            "--host",
            host,
            "--port",
            str(settings.smtp_port),
            "--dir",
            str(settings.mail_dir),
        ]
        return _Part(name, command, env_for("plain"), settings.smtp_port, part_url(settings, name))
    if name == "mlflow":
        db = (settings.mlflow_dir / "mlflow.db").resolve()
        command = [
            str(bindir / "mlflow"),
            "server",
            "--host",
            host,
            "--port",
            str(settings.mlflow_port),
            "--backend-store-uri",
            f"sqlite:///{db}",
            "--artifacts-destination",
            str((settings.mlflow_dir / "artifacts").resolve()),
            "--serve-artifacts",
            "--workers",
            "1",
        ]
        return _Part(name, command, env_for("mlflow"), settings.mlflow_port, part_url(settings, name))
    if name == "airflow-api-server":
        command = [
            str(bindir / "airflow"),
            "api-server",
            "--host",
            host,
            "--port",
            str(settings.airflow_port),
        ]
        return _Part(name, command, env_for("airflow"), settings.airflow_port, part_url(settings, name))
    if name in ("airflow-scheduler", "airflow-triggerer"):
        # The log server binds all interfaces (hard-coded); task logs stay readable via the API.
        command = [str(bindir / "airflow"), name.removeprefix("airflow-"), "--skip-serve-logs"]
        return _Part(name, command, env_for("airflow"), None, None)
    if name == "airflow-dag-processor":
        return _Part(name, [str(bindir / "airflow"), "dag-processor"], env_for("airflow"), None, None)
    if name == "endpoint":
        command = [
            str(bindir / "uvicorn"),
            "continuous_training.serving.app:create_app",
            "--factory",
            "--host",
            host,
            "--port",
            str(settings.endpoint_port),
            "--workers",
            str(settings.endpoint_workers),
            # uvicorn's C parser and event loop (both in the lock), named so a missing one fails
            # loudly instead of falling back to the slower pure-Python ones.
            "--http",
            "httptools",
            "--loop",
            "uvloop",
            # One formatted log line per request cost ~10% of a worker's CPU under load (profiled);
            # every scored row is in the prediction log, and failures are logged by the app.
            "--no-access-log",
        ]
        return _Part(name, command, env_for("endpoint"), settings.endpoint_port, part_url(settings, name))
    raise StackError(f"unknown stack part {name!r}; expected one of {list(PARTS)}")


def resolve_parts(parts: Iterable[str] | None) -> list[str]:
    """Expand and check a selection of parts, in start order.

    Args:
        parts: part names or aliases (``airflow``, ``all``); None means all parts.

    Returns:
        The selected parts in the order of :data:`PARTS`.

    Raises:
        StackError: a name is neither a part nor an alias.
    """
    if parts is None:
        return list(PARTS)
    chosen: set[str] = set()
    for name in parts:
        name = name.strip()
        if name in ALIASES:
            chosen.update(ALIASES[name])
        elif name in PARTS:
            chosen.add(name)
        elif name:
            raise StackError(
                f"unknown stack part {name!r}; expected some of {list(PARTS)} or {sorted(ALIASES)}"
            )
    return [p for p in PARTS if p in chosen]


# --------------------------------------------------------------------------------------------------
# Processes, pid files, ports
# --------------------------------------------------------------------------------------------------


def pid_file(settings: Settings, part: str) -> Path:
    """``$CT_HOME/run/<part>.pid``."""
    return settings.run_dir / f"{part}.pid"


def log_file(settings: Settings, part: str) -> Path:
    """``$CT_HOME/logs/<part>.log``."""
    return settings.log_dir / f"{part}.log"


def read_pid(settings: Settings, part: str) -> int | None:
    """The pid recorded for a part, or None without a (valid) pid file."""
    try:
        text = pid_file(settings, part).read_text().strip()
    except FileNotFoundError:
        return None
    try:
        pid = int(text)
    except ValueError:
        log.warning("%s: expected a process id, found %r; ignoring it", pid_file(settings, part), text)
        return None
    return pid if pid > 0 else None


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state is [0], ppid [1], pgid [2])."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (reaping it if it is our child).

    Args:
        pid: a process id.

    Returns:
        True if the process runs.
    """
    proc = _LAUNCHED.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            return False
    else:
        with contextlib.suppress(ChildProcessError, OSError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _proc_stat(pid)
    return not (stat is not None and stat[0] in ("Z", "X"))


def _is_our_process(part: str, pid: int) -> bool:
    """Whether ``pid`` is alive and still the part we started, not a recycled pid."""
    if not pid_alive(pid):
        return False
    with contextlib.suppress(OSError):
        # Every part was started with start_new_session=True, so it leads its own group.
        if os.getpgid(pid) != pid:
            return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return True  # no /proc to check against (not Linux): trust the process group check
    return _CMDLINE_MARKER[part] in cmdline


def _running_pid(settings: Settings, part: str) -> int | None:
    """The pid of the part if its pid file names a live process of that part; stale files go."""
    pid = read_pid(settings, part)
    path = pid_file(settings, part)
    if pid is not None and _is_our_process(part, pid):
        return pid
    if path.exists():
        log.info("%s: removing stale pid file %s (pid %s is gone)", part, path, pid)
        path.unlink(missing_ok=True)
    return None


def port_in_use(host: str, port: int) -> bool:
    """Whether ``host:port`` is already bound by some process (listening or not).

    Binds a test socket with ``SO_REUSEADDR`` so connections of a just-stopped server lingering in
    TIME_WAIT do not count as taken.

    Args:
        host: the address to test.
        port: the TCP port.

    Returns:
        True if the bind fails with "address in use".
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _fail(settings: Settings, part: str, reason: str) -> StackError:
    path = log_file(settings, part)
    return StackError(
        f"stack part {part!r} did not come up: {reason}.\nLog: {path} (last {_LOG_TAIL_LINES} lines):\n"
        f"{_log_tail(path)}\nFix the cause, then run `ct stack up` again (parts already up are left "
        "alone) or `ct stack down`."
    )


def _launch(settings: Settings, spec: _Part) -> int:
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    path = log_file(settings, spec.name)
    with open(path, "ab") as out:
        out.write(f"\n==== {datetime.now(UTC).isoformat()} starting: {' '.join(spec.command)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            spec.command,
            env=spec.env,
            cwd=settings.home,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Own session = own process group: `down` signals the whole tree, and a Ctrl-C in the
            # shell that ran `ct stack up` does not reach the services.
            start_new_session=True,
        )
    _LAUNCHED[proc.pid] = proc
    pid_file(settings, spec.name).write_text(f"{proc.pid}\n")
    log.info("%s: started (pid %s), log %s", spec.name, proc.pid, path)
    return proc.pid


def _exit_code(pid: int) -> int | None:
    proc = _LAUNCHED.get(pid)
    return proc.poll() if proc is not None else None


# --------------------------------------------------------------------------------------------------
# Health
# --------------------------------------------------------------------------------------------------


def _http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes] | None:
    """GET without any proxy; (status, body), or None when nothing answers."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ValueError):
        return None


def _smtp_health(host: str, port: int) -> tuple[bool, str]:
    try:
        with socket.create_connection((host, port), timeout=3.0) as sock:
            banner = sock.recv(512)
            with contextlib.suppress(OSError):
                sock.sendall(b"QUIT\r\n")
    except OSError as exc:
        return False, f"no SMTP answer ({exc})"
    if banner.startswith(b"220"):
        return True, "220 banner"
    return False, f"unexpected banner {banner[:60]!r}"


def airflow_health(settings: Settings) -> dict[str, Any] | None:
    """The API server's ``/api/v2/monitor/health`` JSON, or None if it does not answer 200.

    Args:
        settings: the stack settings.

    Returns:
        The health document (``metadatabase``, ``scheduler``, ``triggerer``, ``dag_processor``).
    """
    got = _http_get(_local_url(settings, settings.airflow_port) + "/api/v2/monitor/health")
    if got is None or got[0] != 200:
        return None
    try:
        data = json.loads(got[1])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _part_health(settings: Settings, part: str, airflow: dict[str, Any] | None) -> tuple[bool, str]:
    """(healthy, detail) of one part; ``airflow`` is the API health JSON, fetched once per round."""
    if part == "smtp":
        return _smtp_health(settings.host, settings.smtp_port)
    if part == "mlflow":
        got = _http_get(_local_url(settings, settings.mlflow_port) + "/health")
        if got is None:
            return False, "no answer on /health"
        return got[0] == 200, f"/health {got[0]}"
    if part == "airflow-api-server":
        if airflow is None:
            return False, "no 200 from /api/v2/monitor/health"
        db = (airflow.get("metadatabase") or {}).get("status")
        return db == "healthy", f"metadatabase {db}"
    if part in _HEALTH_KEY:
        if airflow is None:
            return False, "API server not answering"
        status = (airflow.get(_HEALTH_KEY[part]) or {}).get("status")
        return status == "healthy", f"{_HEALTH_KEY[part]} {status}"
    if part == "endpoint":
        got = _http_get(_local_url(settings, settings.endpoint_port) + "/health")
        if got is None:
            return False, "no answer on /health"
        try:
            status = json.loads(got[1]).get("status")
        except (ValueError, AttributeError):
            status = None
        # "no_model" is up too: the endpoint answers, it just has no champion to serve yet.
        return got[0] == 200 and status in ("ok", "no_model"), f"/health {got[0]} status={status}"
    raise StackError(f"unknown stack part {part!r}; expected one of {list(PARTS)}")


def _warm_execution_api(settings: Settings) -> None:
    """Call ``/execution/health`` once: the execution API starts lazily and blocks for 5-7 s."""
    started = time.monotonic()
    got = _http_get(_local_url(settings, settings.airflow_port) + "/execution/health", timeout=120.0)
    log.info(
        "airflow-api-server: /execution/health -> %s in %.1f s",
        got[0] if got else "no answer",
        time.monotonic() - started,
    )


def _wait_healthy(
    settings: Settings, parts: list[str], pids: dict[str, int], deadlines: dict[str, float]
) -> None:
    """Wait until every part in ``parts`` is healthy; raise naming the first part that is not."""
    pending = list(parts)
    while pending:
        airflow = airflow_health(settings) if any(p in AIRFLOW_PARTS for p in pending) else None
        now = time.monotonic()
        for part in list(pending):
            pid = pids[part]
            healthy, detail = _part_health(settings, part, airflow)
            if healthy and _is_our_process(part, pid):
                log.info("%s: healthy (%s)", part, detail)
                pending.remove(part)
                continue
            if not pid_alive(pid):
                code = _exit_code(pid)
                pid_file(settings, part).unlink(missing_ok=True)
                reason = (
                    f"process exited with code {code} before it answered its health check"
                    if code is not None
                    else f"process {pid} died before it answered its health check"
                )
                raise _fail(settings, part, reason)
            if now > deadlines[part]:
                raise _fail(
                    settings, part, f"not healthy after {START_TIMEOUT_S[part]:.0f} s (last check: {detail})"
                )
        if pending:
            time.sleep(0.5)


# --------------------------------------------------------------------------------------------------
# Up / down / status
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _stack_lock(settings: Settings) -> Iterator[None]:
    """One `up`/`down` at a time per state directory."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.run_dir / "stack.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another `ct stack` command on %s to finish", settings.home)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _airflow_version() -> str:
    from importlib.metadata import version

    return version("apache-airflow")


def _migrate_airflow_db(settings: Settings, env: dict[str, str]) -> None:
    """``airflow db migrate`` unless this Airflow version already migrated this DB (marker file)."""
    home = settings.airflow_home
    marker = home / ".ct-db-migrated"
    wanted = _airflow_version()
    if (home / "airflow.db").exists() and marker.exists() and marker.read_text().strip() == wanted:
        return
    home.mkdir(parents=True, exist_ok=True)
    path = log_file(settings, "airflow-db-migrate")
    log.info("airflow: migrating the metadata DB %s (about 15 s) ...", home / "airflow.db")
    started = time.monotonic()
    with open(path, "ab") as out:
        out.write(f"\n==== {datetime.now(UTC).isoformat()} airflow db migrate\n".encode())
        out.flush()
        try:
            result = subprocess.run(
                [str(bin_dir() / "airflow"), "db", "migrate"],
                env=env,
                cwd=settings.home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=MIGRATE_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise StackError(
                f"`airflow db migrate` did not finish within {MIGRATE_TIMEOUT_S:.0f} s; "
                f"log {path}:\n{_log_tail(path)}"
            ) from exc
    if result.returncode != 0:
        raise StackError(
            f"`airflow db migrate` exited with code {result.returncode}; log {path} "
            f"(last {_LOG_TAIL_LINES} lines):\n{_log_tail(path)}"
        )
    marker.write_text(wanted + "\n")
    log.info("airflow: metadata DB migrated in %.1f s", time.monotonic() - started)


def stack_up(settings: Settings | None = None, parts: Iterable[str] | None = None) -> None:
    """Start the embedded stack (or the selected parts) and wait until every part is healthy.

    Idempotent: parts already running (per their pid file) are left alone, only waited for.
    Dependencies are respected: the Airflow scheduler, dag-processor and triggerer start only once the
    API server answers (and its execution API was warmed up); the endpoint once MLflow answers.

    Args:
        settings: the stack settings (default :func:`load_settings`).
        parts: names from :data:`PARTS` or aliases (``airflow``, ``all``); default all.

    Raises:
        StackError: naming the part and the reason (port taken by another process, process exited
            with its code, or not healthy in time) with the tail of its log.
    """
    settings = settings or load_settings()
    selected = resolve_parts(parts)
    started_at = time.monotonic()
    # The mail folder is the sink's to create: a failure there shows in its own log.
    for path in (
        settings.home,
        settings.log_dir,
        settings.run_dir,
        settings.mlflow_dir,
        settings.airflow_home,
    ):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StackError(f"cannot create the state folder {path}: {exc}") from exc
    with _stack_lock(settings):
        env_cache: dict[str, dict[str, str]] = {}
        pids: dict[str, int] = {}
        deadlines: dict[str, float] = {}
        healthy: set[str] = set()
        for part in selected:
            for need in _NEEDS.get(part, ()):
                if need in healthy:
                    continue
                if need not in pids:
                    running = _running_pid(settings, need)
                    if running is not None:
                        pids[need] = running
                        deadlines[need] = time.monotonic() + START_TIMEOUT_S[need]
                if need in pids:
                    _wait_healthy(settings, [need], pids, deadlines)
                    healthy.add(need)
                    if need == "airflow-api-server":
                        _warm_execution_api(settings)
                elif need in AIRFLOW_PARTS:
                    raise StackError(
                        f"stack part {part!r} needs {need!r} running; start it too "
                        f"(`ct stack up --parts airflow`)"
                    )
                else:
                    log.warning("%s: %s is not running; starting anyway", part, need)
            spec = _part_spec(settings, part, env_cache)
            pid = _running_pid(settings, part)
            if pid is not None:
                log.info("%s: already running (pid %s)", part, pid)
            else:
                if spec.port is not None and port_in_use(settings.host, spec.port):
                    raise StackError(
                        f"stack part {part!r} cannot start: port {settings.host}:{spec.port} is already taken by "
                        f"another process (not one this stack started; see `ss -ltnp 'sport = :{spec.port}'`). "
                        f"Stop it or choose another port (CT_{_port_var(part)}). Log: {log_file(settings, part)}"
                    )
                if part == "airflow-api-server":
                    _migrate_airflow_db(settings, spec.env)
                pid = _launch(settings, spec)
            pids[part] = pid
            deadlines[part] = time.monotonic() + START_TIMEOUT_S[part]
        _wait_healthy(settings, [p for p in selected if p not in healthy], pids, deadlines)
        if "airflow-api-server" in selected and "airflow-api-server" not in healthy:
            _warm_execution_api(settings)
    log.info("stack up: %s healthy in %.1f s", ", ".join(selected), time.monotonic() - started_at)


def _port_var(part: str) -> str:
    return {
        "smtp": "SMTP_PORT",
        "mlflow": "MLFLOW_PORT",
        "airflow-api-server": "AIRFLOW_PORT",
        "endpoint": "ENDPOINT_PORT",
    }.get(part, "PORT")


def _process_tree(root: int) -> dict[int, str]:
    """``root`` and its descendants as pid -> start time (to tell a recycled pid apart later)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            stat = _proc_stat(int(entry.name))
            if stat is None:
                continue
            children.setdefault(int(stat[1]), []).append(int(entry.name))
            starts[int(entry.name)] = stat[19]
    tree: dict[int, str] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in tree:
            continue
        tree[pid] = starts.get(pid, "")
        todo.extend(children.get(pid, []))
    return tree


def _tree_alive(tree: dict[int, str]) -> list[int]:
    alive = []
    for pid, start in tree.items():
        if not pid_alive(pid):
            continue
        stat = _proc_stat(pid)
        if stat is None or not start or stat[19] == start:
            alive.append(pid)
    return alive


def _group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process is left in process group ``pgid``."""
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # killpg(pgid, 0) also succeeds for zombies, and an orphan's zombie lingers until the init
    # process reaps it (here that took up to a second), so read the states instead.
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                stat = _proc_stat(int(entry.name))
                if stat is not None and int(stat[2]) == pgid and stat[0] not in ("Z", "X"):
                    return True
    return False


def _stop_wave(settings: Settings, parts: Iterable[str]) -> None:
    """SIGTERM each part's process group, wait, SIGKILL what is left, remove the pid files."""
    targets: dict[str, tuple[int, dict[int, str]]] = {}
    for part in parts:
        pid = _running_pid(settings, part)
        if pid is None:
            continue
        # Snapshot the tree first: Airflow's task supervisors move into their own process groups.
        targets[part] = (pid, _process_tree(pid))
        log.info("%s: stopping (pid %s, %s processes)", part, pid, len(targets[part][1]))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    started = time.monotonic()
    pending = dict(targets)
    while pending:
        for part, (pid, tree) in list(pending.items()):
            pid_alive(pid)  # reaps our own child, so a zombie leader does not keep the group alive
            if not _tree_alive(tree) and not _group_alive(pid):
                log.info("%s: stopped after %.1f s", part, time.monotonic() - started)
                del pending[part]
        if not pending:
            break
        if time.monotonic() > deadline:
            for part, (pid, tree) in pending.items():
                log.warning("%s: still running %.0f s after SIGTERM; sending SIGKILL", part, STOP_TIMEOUT_S)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                for straggler in _tree_alive(tree):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(straggler, signal.SIGKILL)
            kill_deadline = time.monotonic() + 10.0
            while any(_tree_alive(tree) or _group_alive(pid) for pid, tree in pending.values()):
                if time.monotonic() > kill_deadline:
                    raise StackError(
                        f"could not stop {sorted(pending)} even with SIGKILL; pid files kept in "
                        f"{settings.run_dir}"
                    )
                for pid, _tree in pending.values():
                    pid_alive(pid)
                time.sleep(0.2)
            break
        time.sleep(0.25)
    for part, (pid, _tree) in targets.items():
        pid_file(settings, part).unlink(missing_ok=True)
        _LAUNCHED.pop(pid, None)


def stack_down(settings: Settings | None = None, parts: Iterable[str] | None = None) -> None:
    """Stop the parts recorded in the pid files: workers first, then the servers.

    SIGTERM to each part's process group, up to :data:`STOP_TIMEOUT_S` to exit, then SIGKILL. Stale
    pid files (process gone) are just removed. Idempotent.

    Args:
        settings: the stack settings (default :func:`load_settings`).
        parts: part names or aliases (see :func:`resolve_parts`); None stops every part.

    Raises:
        StackError: a process survived SIGKILL, or a part name is unknown.
    """
    settings = settings or load_settings()
    chosen = set(resolve_parts(parts))
    if not settings.run_dir.is_dir():
        log.info("stack down: nothing to stop (no %s)", settings.run_dir)
        return
    started = time.monotonic()
    with _stack_lock(settings):
        for wave in _STOP_WAVES:
            _stop_wave(settings, [p for p in wave if p in chosen])
    log.info("stack down: done in %.1f s", time.monotonic() - started)


def stack_status(settings: Settings | None = None) -> dict[str, dict]:
    """Each part's state.

    Args:
        settings: the stack settings (default :func:`load_settings`).

    Returns:
        Part -> ``{"state": "running"|"stopped", "pid": int|None, "url": str|None, "healthy": bool,
        "health": str, "log": str}``; a stale pid file is removed on the way.
    """
    settings = settings or load_settings()
    pids = {part: _running_pid(settings, part) for part in PARTS}
    airflow = airflow_health(settings) if pids["airflow-api-server"] is not None else None
    result: dict[str, dict] = {}
    for part in PARTS:
        pid = pids[part]
        if pid is None:
            healthy, detail = False, "not running"
        else:
            healthy, detail = _part_health(settings, part, airflow)
        result[part] = {
            "state": "running" if pid is not None else "stopped",
            "pid": pid,
            "url": part_url(settings, part),
            "healthy": healthy,
            "health": detail,
            "log": str(log_file(settings, part)),
        }
    return result
