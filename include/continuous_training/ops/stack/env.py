"""The embedded stack's environment: what every Airflow process, the endpoint and the tasks are given.

:func:`airflow_config` is the whole Airflow configuration except what needs I/O: a pure function of
:class:`~continuous_training.settings.Settings` (no file read or written, no secret generated), so
the same settings can later be rendered for another deployment as plain data. :func:`airflow_env`
adds the two parts that do need I/O: the secrets (generated once, kept in 0600 files, see
:mod:`continuous_training.ops.stack.secrets`) and the SMTP connection, whose sender comes from
``policy.yaml``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from continuous_training.credentials import MLFLOW_PIPELINE, mlflow_client_env
from continuous_training.ops.stack.secrets import AIRFLOW_USERS, passwords_file, secret_env
from continuous_training.ops.stack.sqlite import sqlite_airflow_config
from continuous_training.ops.stack.task_env import broker_config, task_runtime_config
from continuous_training.settings import Settings


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


def service_env(settings: Settings) -> dict[str, str]:
    """The ``CT_*`` variables (and ``MLFLOW_TRACKING_URI``) the endpoint and the tasks need.

    With them, :func:`~continuous_training.settings.load_settings` in a child process sees the same
    settings as the process that started the stack.

    Args:
        settings: the stack settings.

    Returns:
        Variable name -> value (not merged with ``os.environ``).
    """
    env = {
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
        "CT_PUBLIC_URL": settings.public_url,
        "CT_SMTP_CONN_ID": settings.smtp_conn_id,
        "CT_ENDPOINT_WORKERS": str(settings.endpoint_workers),
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        # No process of the stack unpickles a model: loading reads skops files with an explicit list of
        # trusted types (continuous_training.modelstore).
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    }
    env["CT_DEPLOYMENT"] = settings.deployment
    env["CT_SECRETS_DIR"] = str(settings.secrets_dir)
    if settings.cluster:
        env.update(
            {
                "CT_POSTGRES_PORT": str(settings.postgres_port),
                "CT_REDIS_PORT": str(settings.redis_port),
                "CT_CELERY_WORKERS": str(settings.celery_workers),
                "CT_WORKER_CONCURRENCY": str(settings.worker_concurrency),
                "CT_DAGS_REPO": settings.dags_repo,
                "CT_DAGS_REF": settings.dags_ref,
                "CT_DAGS_SUBDIR": settings.dags_subdir,
            }
        )
    return env


def pipeline_client_env(settings: Settings) -> dict[str, str]:
    """What a process outside Airflow (``ct demo``, the benchmarks) needs to act as the pipeline.

    The MLflow account of the tasks (``ct-pipeline``) and the no-pickle rule of every process.

    Args:
        settings: where the secrets live.

    Returns:
        ``MLFLOW_TRACKING_USERNAME``, ``MLFLOW_TRACKING_PASSWORD`` and
        ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION``.
    """
    return {
        **mlflow_client_env(settings, MLFLOW_PIPELINE),
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    }


def smtp_connection(settings: Settings) -> dict[str, Any]:
    """The Airflow connection (JSON form) for the embedded SMTP sink.

    The extra field names are those read by ``airflow.providers.smtp.hooks.smtp.SmtpHook``
    (``disable_ssl``, ``disable_tls``, ``from_email``); a plain loopback server needs both TLS
    switches off. Reads ``policy.yaml`` (for ``from_email``), which is why :func:`airflow_env`, not
    :func:`airflow_config`, adds it.

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


#: The name of the cluster's DAG bundle and of the git connection it reads through.
DAG_BUNDLE = "ct-dags"
GIT_CONN_ID = "ct_git"


def dag_bundles(settings: Settings) -> list[dict[str, Any]]:
    """``[dag_processor] dag_bundle_config_list`` of the cluster: the DAGs of a git repository.

    Airflow's ``GitDagBundle`` clones ``CT_DAGS_REPO`` (through the connection :data:`GIT_CONN_ID`,
    whose host is the repository) and tracks ``CT_DAGS_REF``; each DAG run records the commit it ran
    as its bundle version, and a new commit becomes a new DAG version at the next refresh.
    """
    return [
        {
            "name": DAG_BUNDLE,
            "classpath": "airflow.providers.git.bundles.git.GitDagBundle",
            "kwargs": {
                "git_conn_id": GIT_CONN_ID,
                "tracking_ref": settings.dags_ref,
                "subdir": settings.dags_subdir,
                "refresh_interval": DAG_REFRESH_S,
            },
        }
    ]


#: Seconds between looks for new DAG files (embedded) or new commits (cluster); Airflow's default is 300.
DAG_REFRESH_S = 20


def _embedded_config(settings: Settings) -> dict[str, str]:
    home = settings.airflow_home
    return {
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.dags_folder),
        # Four slashes: SQLAlchemy needs an absolute path here, a relative one breaks per cwd.
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{(home / 'airflow.db').resolve()}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # LocalExecutor pre-forks this many workers; 32 (the default) is too many for 2 cores.
        "AIRFLOW__CORE__PARALLELISM": "4",
        # SQLite's lock waits (a trigger burst froze the API server and killed the scheduler).
        **sqlite_airflow_config(settings),
    }


def _cluster_config(settings: Settings) -> dict[str, str]:
    """What differs in the cluster: the executor, DAGs from git, worker names (no secret here)."""
    return {
        # The dag-processor reads the git bundle; the folder stays set for `airflow dags` commands.
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.dags_folder),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        # Task slots the schedulers hand out at once across the workers.
        "AIRFLOW__CORE__PARALLELISM": str(max(4, settings.celery_workers * settings.worker_concurrency)),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(settings.worker_concurrency),
        # Each part records its own name (worker-1, scheduler-2, ...) instead of the shared FQDN.
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "continuous_training.ops.hostname.hostname",
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(dag_bundles(settings)),
        # Without it bundles are cloned into a folder shared by every Airflow under the system's temp dir.
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH": str(settings.airflow_home / "dag_bundles"),
        f"AIRFLOW_CONN_{GIT_CONN_ID.upper()}": json.dumps({"conn_type": "git", "host": settings.dags_repo}),
        # A broker restart delays tasks instead of failing them.
        **broker_config(),
    }


def airflow_config(settings: Settings) -> dict[str, str]:
    """The Airflow configuration of the stack, without the secrets and the SMTP connection.

    Pure: nothing is read, written or generated, so this is data (the same settings always give the
    same dict). The only filesystem lookup is resolving the SQLite path, which creates nothing. The
    two deployment modes differ only in the keys of :func:`_embedded_config` and
    :func:`_cluster_config`; in the cluster the database and broker URLs hold passwords, so
    :func:`airflow_env` adds them.

    Args:
        settings: the stack settings.

    Returns:
        Variable name -> value: ``AIRFLOW_HOME``, the non-secret ``AIRFLOW__*`` settings,
        ``PYTHONPYCACHEPREFIX`` and :func:`service_env`.
    """
    env = {
        "AIRFLOW_HOME": str(settings.airflow_home),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(settings.plugins_folder),
        **(_cluster_config(settings) if settings.cluster else _embedded_config(settings)),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # Error responses of the API server carry no stack trace, and /config shows nothing.
        "AIRFLOW__API__EXPOSE_STACKTRACE": "False",
        "AIRFLOW__API__EXPOSE_CONFIG": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__API__HOST": settings.host,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        # Without it, workers call http://localhost:8080/execution/.
        # Where people open the UI: Airflow's own links (a failed task's log in its mail) start here.
        "AIRFLOW__API__BASE_URL": settings.public_url,
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in AIRFLOW_USERS.items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file(settings)),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": str(DAG_REFRESH_S),
        "PYTHONPYCACHEPREFIX": str(settings.pycache_dir),
    }
    env.update(task_runtime_config(settings))
    env.update(service_env(settings))
    return env


def cluster_secret_env(settings: Settings) -> dict[str, str]:
    """The cluster's URLs that hold passwords: metadata DB, Celery broker and result backend."""
    from continuous_training.ops.stack.cluster import broker_url, database_url

    return {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url(settings, "airflow"),
        "AIRFLOW__CELERY__BROKER_URL": broker_url(settings),
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + database_url(settings, "airflow"),
    }


def airflow_env(settings: Settings) -> dict[str, str]:
    """The environment of every Airflow process of the embedded stack (without ``os.environ``).

    :func:`airflow_config` plus what needs I/O: the secrets (generated with the admin password file on
    first use, see :func:`~continuous_training.ops.stack.secrets.secret_env`) and the SMTP connection
    ``AIRFLOW_CONN_<ID>`` (:func:`smtp_connection` reads ``policy.yaml``).

    Args:
        settings: the stack settings.

    Returns:
        Variable name -> value: ``AIRFLOW_HOME``, ``AIRFLOW__*`` settings, the SMTP connection
        ``AIRFLOW_CONN_<ID>``, ``PYTHONPYCACHEPREFIX`` and :func:`service_env`.

    Raises:
        StackError: a secrets file is unreadable.
    """
    # Secrets first, as before the split: a bad secrets file fails before the policy is read.
    secret = secret_env(settings)
    if settings.cluster:
        secret.update(cluster_secret_env(settings))
    return {
        **airflow_config(settings),
        **secret,
        # The tasks talk to MLflow as the pipeline's account.
        **mlflow_client_env(settings, MLFLOW_PIPELINE),
        f"AIRFLOW_CONN_{settings.smtp_conn_id.upper()}": json.dumps(smtp_connection(settings)),
    }


def _process_env(settings: Settings, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    # An administrator's login to a shared PostgreSQL is for `ct stack` alone, never for its parts.
    env.pop("CT_POSTGRES_URL", None)
    # With PYTHONDONTWRITEBYTECODE set, PYTHONPYCACHEPREFIX alone writes no cache at all, and
    # every start re-compiles airflow/mlflow (import airflow: ~8 s instead of ~3.5 s).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(settings.pycache_dir)
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
