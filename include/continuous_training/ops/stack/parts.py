"""The parts table of the embedded stack: names, start order, dependencies, timeouts and commands."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from continuous_training.credentials import MLFLOW_ENDPOINT, mlflow_client_env
from continuous_training.ops.hostname import PROCESS_NAME_VAR
from continuous_training.ops.stack.cluster import database_url, postgres_command, redis_command, server
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
from continuous_training.settings import TRAINING_QUEUE, Settings

#: Airflow's ``[operators] default_queue``: every task not sent elsewhere.
DEFAULT_QUEUE = "default"

#: The parts of the embedded stack, in start order.
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
#: Airflow's schedulers in the cluster (HA on PostgreSQL: they share the work through row locks).
CLUSTER_SCHEDULERS = 2


def parts_of(settings: Settings) -> tuple[str, ...]:
    """The parts of the deployment ``settings`` describe, in start order.

    Embedded: :data:`PARTS`. Cluster: the SMTP sink, PostgreSQL (unless ``CT_POSTGRES_URL`` names a
    running server), Redis, MLflow, Airflow's API server, two schedulers, dag-processor, triggerer,
    ``CT_CELERY_WORKERS`` Celery workers, and the endpoint.
    """
    if not settings.cluster:
        return PARTS
    return (
        "smtp",
        *(() if settings.postgres_url else ("postgres",)),
        "redis",
        "mlflow",
        "airflow-api-server",
        *(f"airflow-scheduler-{i}" for i in range(1, CLUSTER_SCHEDULERS + 1)),
        "airflow-dag-processor",
        "airflow-triggerer",
        *(f"airflow-worker-{i}" for i in range(1, settings.celery_workers + 1)),
        "endpoint",
    )


def part_kind(part: str) -> str:
    """What a part is, without its number: ``airflow-worker-2`` -> ``airflow-worker``."""
    head, _, tail = part.rpartition("-")
    return head if tail.isdigit() and head else part


def is_airflow(part: str) -> bool:
    return part.startswith("airflow-")


def process_name(part: str) -> str:
    """The name a part records as its host name in Airflow (``worker-1``, ``scheduler-2``, ...)."""
    return part.removeprefix("airflow-")


#: Seconds a part may take to become healthy, by kind. Generous: a cold API server (no bytecode
#: cache) took 60-70 s on 2 cores, and the others start while it does.
START_TIMEOUT_S = {
    "smtp": 30.0,
    "postgres": 60.0,
    "redis": 30.0,
    "mlflow": 180.0,
    "airflow-api-server": 300.0,
    "airflow-scheduler": 240.0,
    "airflow-dag-processor": 240.0,
    "airflow-triggerer": 240.0,
    "airflow-worker": 240.0,
    "endpoint": 180.0,
}


def start_timeout(part: str) -> float:
    return START_TIMEOUT_S[part_kind(part)]


def needs(settings: Settings, part: str) -> tuple[str, ...]:
    """Parts that must be healthy before ``part`` starts.

    The scheduler must not start before the execution API listens (tasks failed with Errno 111); the
    endpoint loads its model from MLflow; in the cluster, the API server's migration and MLflow need
    PostgreSQL, and whatever queues or runs tasks needs Redis.
    """
    kind = part_kind(part)
    data = ("postgres",) if settings.cluster and not settings.postgres_url else ()
    broker = ("redis",) if settings.cluster else ()
    if kind == "airflow-api-server":
        return data
    if kind == "mlflow":
        return data
    if kind in ("airflow-scheduler", "airflow-worker"):
        return ("airflow-api-server", *broker)
    if kind in ("airflow-dag-processor", "airflow-triggerer"):
        return ("airflow-api-server",)
    if kind == "endpoint":
        return ("mlflow",)
    return ()


def stop_waves(settings: Settings) -> tuple[tuple[str, ...], ...]:
    """Parts a stop handles together: workers first, then the servers they use, data services last."""
    parts = parts_of(settings)
    servers = {"airflow-api-server", "mlflow", "smtp"}
    data = {"postgres", "redis"}
    return (
        tuple(p for p in parts if p not in servers | data),
        tuple(p for p in parts if p in servers),
        tuple(p for p in parts if p in data),
    )


class _Markers(dict):
    """Part -> a word every process of the part has in its command line (looked up by kind)."""

    def __missing__(self, part: str) -> str:
        return super().__getitem__(part_kind(part))


#: Guards against a recycled pid.
_CMDLINE_MARKER = _Markers(
    {
        "smtp": "continuous_training.ops.mailsink",
        "postgres": "postgres",
        "redis": "redis-server",
        "mlflow": "mlflow",
        "endpoint": "uvicorn",
        **{kind: "airflow" for kind in START_TIMEOUT_S if kind.startswith("airflow-")},
        # Celery retitles its processes ("[celeryd: worker-1@host:MainProcess] ... (celery worker ...)").
        "airflow-worker": "celery worker",
    }
)


@dataclass(frozen=True)
class _Part:
    name: str
    command: list[str]
    env: dict[str, str]
    port: int | None
    url: str | None
    #: What stops the part cleanly. PostgreSQL's SIGTERM is a "smart" shutdown that waits for every
    #: client to disconnect; SIGINT is its "fast" one (transactions rolled back, a clean checkpoint).
    stop_signal: str = "SIGTERM"
    #: ``HOST:PORT`` of the services whose outage makes the part exit: its supervisor waits for them
    #: instead of spending its restarts (see :mod:`~continuous_training.ops.stack.supervise`).
    waits_for: tuple[str, ...] = ()


def restart_waits_for(settings: Settings, part: str) -> tuple[str, ...]:
    """What the supervisor of ``part`` waits for after an exit: PostgreSQL, for the parts that use it.

    In the cluster, the API server, the schedulers, the dag-processor, the triggerer and MLflow exit
    within seconds when PostgreSQL refuses connections (measured); the workers and the rest ride it out.
    """
    if not settings.cluster or part_kind(part) not in (
        "mlflow",
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
    ):
        return ()
    where = server(settings)
    return (f"{_url_host(where.host)}:{where.port}",)


def part_url(settings: Settings, part: str) -> str | None:
    """Where a part answers (None for the Airflow parts without a port of their own)."""
    if part == "smtp":
        return f"smtp://{_url_host(settings.host)}:{settings.smtp_port}"
    if part == "postgres":
        return f"postgresql://{_url_host(settings.host)}:{settings.postgres_port}"
    if part == "redis":
        return f"redis://{_url_host(settings.host)}:{settings.redis_port}"
    port = {
        "mlflow": settings.mlflow_port,
        "airflow-api-server": settings.airflow_port,
        "endpoint": settings.endpoint_port,
    }.get(part)
    return _local_url(settings, port) if port is not None else None


def _part_spec(settings: Settings, name: str, env_cache: dict[str, dict[str, str]]) -> _Part:
    part = _command_spec(settings, name, env_cache)
    waits = restart_waits_for(settings, name)
    return part if not waits else replace(part, waits_for=waits)


def _command_spec(settings: Settings, name: str, env_cache: dict[str, dict[str, str]]) -> _Part:
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
    if name == "postgres":
        return _Part(
            name,
            postgres_command(settings),
            env_for("plain"),
            settings.postgres_port,
            part_url(settings, name),
        )
    if name == "redis":
        return _Part(
            name, redis_command(settings), env_for("plain"), settings.redis_port, part_url(settings, name)
        )
    if name == "mlflow":
        env = env_for("mlflow")
        if settings.cluster:
            # PostgreSQL holds runs, registry and users (in the environment: the URL holds a password);
            # two workers, which SQLite could not take.
            backend: list[str] = []
            env = {**env, "MLFLOW_BACKEND_STORE_URI": database_url(settings, "mlflow")}
        else:
            backend = ["--backend-store-uri", f"sqlite:///{(settings.mlflow_dir / 'mlflow.db').resolve()}"]
        command = [
            str(bindir / "mlflow"),
            "server",
            "--host",
            host,
            "--port",
            str(settings.mlflow_port),
            *backend,
            "--artifacts-destination",
            str((settings.mlflow_dir / "artifacts").resolve()),
            "--serve-artifacts",
            "--workers",
            "2" if settings.cluster else "1",
            *server_args(settings),
        ]
        return _Part(name, command, env, settings.mlflow_port, part_url(settings, name))
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
    kind = part_kind(name)
    if is_airflow(name) and settings.cluster:
        # Each part records its own name as its host (see continuous_training.ops.hostname).
        airflow = {**env_for("airflow"), PROCESS_NAME_VAR: process_name(name)}
    else:
        airflow = env_for("airflow")
    if kind in ("airflow-scheduler", "airflow-triggerer"):
        # The log server binds all interfaces (hard-coded); task logs stay readable via the API.
        command = [str(bindir / "airflow"), kind.removeprefix("airflow-"), "--skip-serve-logs"]
        return _Part(name, command, airflow, None, None)
    if name == "airflow-dag-processor":
        return _Part(name, [str(bindir / "airflow"), "dag-processor"], airflow, None, None)
    if kind == "airflow-worker" and settings.cluster:
        command = [
            str(bindir / "airflow"),
            "celery",
            "worker",
            # Celery's own name of the worker (the default, celery@<host>, is the same for both).
            "--celery-hostname",
            f"{process_name(name)}@%h",
            "--queues",
            f"{DEFAULT_QUEUE},{TRAINING_QUEUE}",
            "--concurrency",
            str(settings.worker_concurrency),
            # Two workers on one host would clash on the log server's port; logs are in one folder.
            "--skip-serve-logs",
        ]
        return _Part(name, command, airflow, None, None)
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
    raise StackError(f"unknown stack part {name!r}; expected one of {list(parts_of(settings))}")


def aliases(settings: Settings) -> dict[str, tuple[str, ...]]:
    """Shorthands for a selection of parts: ``airflow``, ``all`` (and ``workers`` in the cluster)."""
    parts = parts_of(settings)
    found = {"airflow": tuple(p for p in parts if is_airflow(p)), "all": parts}
    if settings.cluster:
        found["workers"] = tuple(p for p in parts if part_kind(p) == "airflow-worker")
    return found


def resolve_parts(parts: Iterable[str] | None, settings: Settings | None = None) -> list[str]:
    """Expand and check a selection of parts, in start order.

    Args:
        parts: part names or aliases (see :func:`aliases`); None means all parts.
        settings: the deployment (default: the embedded one).

    Returns:
        The selected parts in the order of :func:`parts_of`.

    Raises:
        StackError: a name is neither a part nor an alias.
    """
    every = parts_of(settings) if settings is not None else PARTS
    shorthands = aliases(settings) if settings is not None else {"airflow": AIRFLOW_PARTS, "all": PARTS}
    if parts is None:
        return list(every)
    chosen: set[str] = set()
    for name in parts:
        name = name.strip()
        if name in shorthands:
            chosen.update(shorthands[name])
        elif name in every:
            chosen.add(name)
        elif name:
            raise StackError(
                f"unknown stack part {name!r}; expected some of {list(every)} or {sorted(shorthands)}"
            )
    return [p for p in every if p in chosen]


def _port_var(part: str) -> str:
    return {
        "smtp": "SMTP_PORT",
        "postgres": "POSTGRES_PORT",
        "redis": "REDIS_PORT",
        "mlflow": "MLFLOW_PORT",
        "airflow-api-server": "AIRFLOW_PORT",
        "endpoint": "ENDPOINT_PORT",
    }.get(part, "PORT")
