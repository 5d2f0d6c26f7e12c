"""The embedded stack: ``ct stack up|status|down`` as native processes on loopback.

Parts, started in this order, each in its own session (process group) with its output in
``$CT_HOME/logs/<part>.log`` and its pid in ``$CT_HOME/run/<part>.pid``:

1. ``smtp``: :mod:`continuous_training.ops.mailsink` writing to ``$CT_HOME/mail``.
2. ``mlflow``: ``mlflow server`` on a SQLite backend with proxied artifacts under ``$CT_HOME/mlflow``.
3. Airflow 3 on SQLite with the LocalExecutor: ``airflow db migrate`` once, then the API server,
   then, once the API answers and its execution API was warmed up, the scheduler, dag-processor and
   triggerer (started earlier, their tasks failed with "connection refused", measured).
4. ``endpoint``: the prediction service (uvicorn, 2 workers).

Nothing listens beyond ``settings.host``. Secrets (JWT secret, Fernet key, API secret key, the admin
password) are generated once per state directory and kept in files with mode 0600. See the README's
"The embedded stack" for addresses and the login.

Modules: :mod:`~.env` (the environment; :func:`airflow_config` is its pure part), :mod:`~.secrets`,
:mod:`~.parts` (the parts table and commands), :mod:`~.process` (pid files, liveness, ports),
:mod:`~.health` and :mod:`~.control` (up, down, status); :class:`StackError` is in :mod:`~.errors`.
"""

from __future__ import annotations

from continuous_training.ops.stack.control import (
    recorded_deployment,
    stack_down,
    stack_settings,
    stack_status,
    stack_up,
)
from continuous_training.ops.stack.env import (
    airflow_config,
    airflow_env,
    bin_dir,
    pipeline_client_env,
    service_env,
    smtp_connection,
)
from continuous_training.ops.stack.errors import StackError
from continuous_training.ops.stack.health import airflow_health
from continuous_training.ops.stack.parts import PARTS, part_url, parts_of, resolve_parts
from continuous_training.ops.stack.process import log_file, pid_alive, pid_file, port_in_use, read_pid
from continuous_training.ops.stack.secrets import airflow_password, passwords_file, stack_secrets

__all__ = [
    "PARTS",
    "StackError",
    "airflow_config",
    "airflow_env",
    "airflow_health",
    "airflow_password",
    "bin_dir",
    "log_file",
    "part_url",
    "passwords_file",
    "pipeline_client_env",
    "pid_alive",
    "pid_file",
    "parts_of",
    "port_in_use",
    "recorded_deployment",
    "read_pid",
    "resolve_parts",
    "service_env",
    "smtp_connection",
    "stack_down",
    "stack_secrets",
    "stack_settings",
    "stack_status",
    "stack_up",
]
