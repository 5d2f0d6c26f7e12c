"""The parts table of the embedded stack: names, start order, dependencies, timeouts and commands."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from continuous_training.credentials import MLFLOW_ENDPOINT, mlflow_client_env
from continuous_training.ops.stack.env import (
    _local_url,
    _process_env,
    _url_host,
    airflow_env,
    bin_dir,
    service_env,
)
from continuous_training.ops.stack.errors import StackError
from continuous_training.ops.stack.mlflow_auth import server_args, server_env
from continuous_training.settings import Settings

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
#: Shorthands accepted by :func:`~continuous_training.ops.stack.control.stack_up`'s ``parts``.
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
    "smtp": "continuous_training.ops.mailsink",
    "mlflow": "mlflow",
    "endpoint": "uvicorn",
    **{part: "airflow" for part in AIRFLOW_PARTS},
}


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
                # One OpenMP thread per worker: the default spin-waits collapsed throughput (measured).
                # Few client retries: a registry outage must not stall the alias poller for minutes.
                # The endpoint reads the registry as the read-only account.
                env_cache[kind] = _process_env(
                    settings,
                    {
                        **service_env(settings),
                        **mlflow_client_env(settings, MLFLOW_ENDPOINT),
                        "OMP_NUM_THREADS": "1",
                        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                    },
                )
            elif kind == "mlflow":
                # Job execution serves GenAI scorers and trace archival, which this project does not
                # use; it costs 6 more processes (huey consumers, ~170 MB RSS each) on a 2-core machine.
                env_cache[kind] = _process_env(
                    settings,
                    {
                        **service_env(settings),
                        **server_env(settings),
                        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                    },
                )
            else:
                env_cache[kind] = _process_env(settings, service_env(settings))
        return env_cache[kind]

    if name == "smtp":
        command = [
            str(bindir / "python"),
            "-m",
            "continuous_training.ops.mailsink",
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
            *server_args(settings),
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


def _port_var(part: str) -> str:
    return {
        "smtp": "SMTP_PORT",
        "mlflow": "MLFLOW_PORT",
        "airflow-api-server": "AIRFLOW_PORT",
        "endpoint": "ENDPOINT_PORT",
    }.get(part, "PORT")
