"""Runtime settings: typed defaults < ``include/config/*.yaml`` < ``CT_*`` environment variables.

This is the one module that reads ``CT_*`` variables: every address, path, secret location and tuning
knob the project uses comes from :class:`Settings`. Loading is cheap and has no side effects (no
directory is created, no tracking URI is set), so it is safe at DAG-parse time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: The repository root (``include/continuous_training/settings.py`` -> three parents up).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: The Airflow connection alert mail goes through unless ``CT_SMTP_CONN_ID`` names another.
DEFAULT_SMTP_CONN_ID = "ct_smtp"
#: The deployment modes (``CT_DEPLOYMENT``); the first is the default.
DEPLOYMENTS = ("embedded", "cluster")
#: The Airflow pool (one slot) and Celery queue of the training task: one training at a time across
#: DAG runs and workers. The stack creates the pool; every Celery worker of the cluster listens on the
#: queue besides Airflow's default one.
TRAINING_POOL = "training"
TRAINING_QUEUE = "training"


class _Env:
    """Typed reads of ``CT_*`` variables; an empty value counts as unset."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str, default: str) -> str:
        value = self._environ.get(name)
        return value if value not in (None, "") else default

    def optional(self, name: str) -> str | None:
        value = self._environ.get(name)
        return value if value not in (None, "") else None

    def integer(self, name: str, default: int, what: str = "an integer") -> int:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError as exc:
            raise ValueError(f"environment variable {name}={raw!r}: expected {what}") from exc

    def seconds(self, name: str, default: float) -> float:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError as exc:
            raise ValueError(f"environment variable {name}={raw!r}: expected a number of seconds") from exc
        if not value > 0:
            raise ValueError(f"environment variable {name}={raw!r}: expected a positive number of seconds")
        return value

    def choice(self, name: str, allowed: tuple[str, ...]) -> str:
        """One of ``allowed`` (the first is the default)."""
        value = self.text(name, allowed[0])
        if value not in allowed:
            raise ValueError(f"environment variable {name}={value!r}: expected one of {list(allowed)}")
        return value

    def names(self, name: str) -> tuple[str, ...] | None:
        raw = self.optional(name)
        if raw is None:
            return None
        return tuple(part.strip() for part in raw.split(",") if part.strip()) or None


@dataclass(frozen=True)
class Settings:
    """Where everything lives and listens, and the knobs a deployment turns without editing code.

    Attributes:
        home: the state directory (``CT_HOME``); the embedded stack writes only below it.
        config_dir: folder with ``dataset.yaml`` and ``policy.yaml`` (``CT_CONFIG_DIR``).
        lake: root of the data lake (``CT_LAKE``), default ``<home>/lake``.
        host: the loopback address every embedded service binds to (``CT_HOST``).
        airflow_port, mlflow_port, endpoint_port, smtp_port: ports of the embedded services
            (``CT_AIRFLOW_PORT``, ``CT_MLFLOW_PORT``, ``CT_ENDPOINT_PORT``, ``CT_SMTP_PORT``).
        mlflow_tracking_uri: MLflow tracking server (``CT_MLFLOW_TRACKING_URI``).
        endpoint_url: the prediction endpoint (``CT_ENDPOINT_URL``).
        airflow_url: the Airflow API server / UI (``CT_AIRFLOW_URL``).
        public_url: where people reach the Airflow UI, and with it the project's pages (``CT_PUBLIC_URL``,
            default ``airflow_url``): the base of every link in a mail. Set it to the address on-call
            opens from their own machine (a DNS name behind the team's proxy).
        smtp_conn_id: Airflow connection used for alert mail (``CT_SMTP_CONN_ID``).
        endpoint_workers: worker processes of the prediction endpoint (``CT_ENDPOINT_WORKERS``); a deploy
            waits until each of them serves the new champion.
        endpoint_poll_seconds: how often each endpoint worker checks the ``champion`` alias
            (``CT_ENDPOINT_POLL_SECONDS``).
        endpoint_flush_seconds: the longest a served row waits before it is written to the prediction
            log (``CT_ENDPOINT_FLUSH_SECONDS``).
        task_retries, task_retry_delay_seconds: retries of every task (``CT_TASK_RETRIES``,
            ``CT_TASK_RETRY_DELAY_SECONDS``).
        model_name: overrides ``model.name`` of ``policy.yaml`` (``CT_MODEL_NAME``).
        alert_to: overrides ``alerts.on_call`` of ``policy.yaml`` (``CT_ALERT_TO``, comma-separated).
        git_commit: the code version recorded on models (``CT_GIT_COMMIT``); default ``git rev-parse``.
        smtp_host: the SMTP server the endpoint mails security alerts through (``CT_SMTP_HOST``,
            default ``host``; Airflow's tasks use the ``smtp_conn_id`` connection).
        secrets_root: folder of the generated credentials (``CT_SECRETS_DIR``), default
            ``<home>/secrets``; see :attr:`secrets_dir`.
        deployment: ``embedded`` (default: LocalExecutor, SQLite, local files) or ``cluster``
            (CeleryExecutor, PostgreSQL, Redis, DAGs from git), ``CT_DEPLOYMENT``. Only configuration
            differs between the two (see ``ct stack``); ``deployment_given`` says whether
            ``CT_DEPLOYMENT`` was set (else ``ct stack`` uses the mode recorded in ``CT_HOME``).
        postgres_port, redis_port: ports of the cluster's own PostgreSQL and Redis (``CT_POSTGRES_PORT``,
            ``CT_REDIS_PORT``).
        postgres_url: an administrator URL of a PostgreSQL server that is already running
            (``CT_POSTGRES_URL``, e.g. ``postgresql://admin:pw@db:5432/postgres``); the cluster then
            creates its databases there instead of starting a server of its own.
        celery_workers, worker_concurrency: Celery workers of the cluster and task slots of each
            (``CT_CELERY_WORKERS``, ``CT_WORKER_CONCURRENCY``).
        dags_repo, dags_ref, dags_subdir: the git repository the cluster's dag-processor reads DAGs from
            (``CT_DAGS_REPO``, default this repository), the branch it tracks (``CT_DAGS_REF``) and the
            folder in it (``CT_DAGS_SUBDIR``).
    """

    home: Path
    config_dir: Path
    lake: Path
    host: str
    airflow_port: int
    mlflow_port: int
    endpoint_port: int
    smtp_port: int
    mlflow_tracking_uri: str
    endpoint_url: str
    airflow_url: str
    public_url: str = ""
    smtp_conn_id: str = DEFAULT_SMTP_CONN_ID
    endpoint_workers: int = 2
    endpoint_poll_seconds: float = 2.0
    endpoint_flush_seconds: float = 2.0
    task_retries: int = 1
    task_retry_delay_seconds: int = 60
    model_name: str | None = None
    alert_to: tuple[str, ...] | None = None
    git_commit: str | None = None
    smtp_host: str | None = None
    secrets_root: Path | None = None
    deployment: str = "embedded"
    deployment_given: bool = False
    postgres_port: int = 5433
    redis_port: int = 6380
    postgres_url: str | None = None
    celery_workers: int = 2
    worker_concurrency: int = 2
    dags_repo: str = str(REPO_ROOT)
    dags_ref: str = "main"
    dags_subdir: str = "dags"
    repo_root: Path = field(default=REPO_ROOT)

    def __post_init__(self) -> None:
        if not self.public_url:  # people reach the UI where the stack serves it
            object.__setattr__(self, "public_url", self.airflow_url.rstrip("/"))

    @property
    def cluster(self) -> bool:
        """Whether this is the scaled-out deployment (``CT_DEPLOYMENT=cluster``)."""
        return self.deployment == "cluster"

    @property
    def postgres_dir(self) -> Path:
        return self.home / "postgres"

    @property
    def redis_dir(self) -> Path:
        return self.home / "redis"

    @property
    def secrets_dir(self) -> Path:
        """Where the credentials live (mode 0700, each file 0600): ``CT_SECRETS_DIR`` or ``<home>/secrets``."""
        return self.secrets_root or self.home / "secrets"

    @property
    def smtp_server(self) -> str:
        """The SMTP host the endpoint mails through (``CT_SMTP_HOST``, default the loopback ``host``)."""
        return self.smtp_host or self.host

    @property
    def mail_dir(self) -> Path:
        return self.home / "mail"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def pycache_dir(self) -> Path:
        return self.home / "pycache"

    @property
    def demo_dir(self) -> Path:
        return self.home / "demo"

    @property
    def dags_folder(self) -> Path:
        return self.repo_root / "dags"

    @property
    def plugins_folder(self) -> Path:
        return self.repo_root / "plugins"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from the environment (cheap; call it wherever you need them).

    Args:
        environ: the variables to read (default ``os.environ``).

    Raises:
        ValueError: a numeric variable does not parse (the variable is named).
    """
    env = _Env(os.environ if environ is None else environ)
    home = Path(env.text("CT_HOME", str(REPO_ROOT / ".ct"))).expanduser().resolve()
    host = env.text("CT_HOST", "127.0.0.1")
    port = "an integer port"
    airflow_port = env.integer("CT_AIRFLOW_PORT", 8080, port)
    mlflow_port = env.integer("CT_MLFLOW_PORT", 5000, port)
    endpoint_port = env.integer("CT_ENDPOINT_PORT", 8000, port)
    smtp_port = env.integer("CT_SMTP_PORT", 8025, port)
    return Settings(
        home=home,
        config_dir=Path(env.text("CT_CONFIG_DIR", str(REPO_ROOT / "include" / "config")))
        .expanduser()
        .resolve(),
        lake=Path(env.text("CT_LAKE", str(home / "lake"))).expanduser().resolve(),
        host=host,
        airflow_port=airflow_port,
        mlflow_port=mlflow_port,
        endpoint_port=endpoint_port,
        smtp_port=smtp_port,
        mlflow_tracking_uri=env.text("CT_MLFLOW_TRACKING_URI", f"http://{host}:{mlflow_port}"),
        endpoint_url=env.text("CT_ENDPOINT_URL", f"http://{host}:{endpoint_port}"),
        airflow_url=(airflow_url := env.text("CT_AIRFLOW_URL", f"http://{host}:{airflow_port}")),
        public_url=env.text("CT_PUBLIC_URL", airflow_url).rstrip("/"),
        smtp_conn_id=env.text("CT_SMTP_CONN_ID", DEFAULT_SMTP_CONN_ID),
        endpoint_workers=env.integer("CT_ENDPOINT_WORKERS", 2, "a number of worker processes"),
        endpoint_poll_seconds=env.seconds("CT_ENDPOINT_POLL_SECONDS", 2.0),
        endpoint_flush_seconds=env.seconds("CT_ENDPOINT_FLUSH_SECONDS", 2.0),
        task_retries=env.integer("CT_TASK_RETRIES", 1, "a number of retries"),
        task_retry_delay_seconds=env.integer("CT_TASK_RETRY_DELAY_SECONDS", 60, "a whole number of seconds"),
        model_name=env.optional("CT_MODEL_NAME"),
        alert_to=env.names("CT_ALERT_TO"),
        git_commit=env.optional("CT_GIT_COMMIT"),
        smtp_host=env.optional("CT_SMTP_HOST"),
        secrets_root=Path(secrets).expanduser().resolve()
        if (secrets := env.optional("CT_SECRETS_DIR"))
        else None,
        deployment=env.choice("CT_DEPLOYMENT", DEPLOYMENTS),
        deployment_given=env.optional("CT_DEPLOYMENT") is not None,
        postgres_port=env.integer("CT_POSTGRES_PORT", 5433, port),
        redis_port=env.integer("CT_REDIS_PORT", 6380, port),
        postgres_url=env.optional("CT_POSTGRES_URL"),
        celery_workers=env.integer("CT_CELERY_WORKERS", 2, "a number of Celery workers"),
        worker_concurrency=env.integer("CT_WORKER_CONCURRENCY", 2, "a number of task slots per worker"),
        dags_repo=env.text("CT_DAGS_REPO", str(REPO_ROOT)),
        dags_ref=env.text("CT_DAGS_REF", "main"),
        dags_subdir=env.text("CT_DAGS_SUBDIR", "dags"),
    )
