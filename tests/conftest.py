"""Test isolation: every test session gets its own CT_HOME, ports and Airflow home/DB.

This runs before any test module imports Airflow, so Airflow reads these settings and never touches a
demo stack left running (a live scheduler would also run a ``dag.test()`` run's tasks).
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _isolate() -> Path:
    home = Path(tempfile.mkdtemp(prefix="ct-test-"))
    airflow_home = home / "airflow"
    airflow_home.mkdir()
    env = {
        "CT_HOME": str(home),
        "CT_LAKE": str(home / "lake"),
        "CT_CONFIG_DIR": str(REPO / "include" / "config"),
        "CT_AIRFLOW_PORT": str(free_port()),
        "CT_MLFLOW_PORT": str(free_port()),
        "CT_ENDPOINT_PORT": str(free_port()),
        "CT_SMTP_PORT": str(free_port()),
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "PYTHONPYCACHEPREFIX": os.environ.get("PYTHONPYCACHEPREFIX") or str(REPO / ".ct" / "pycache"),
    }
    for key in [k for k in os.environ if k.startswith(("CT_", "AIRFLOW", "MLFLOW_"))]:
        del os.environ[key]
    os.environ.update(env)
    # The same Airflow settings as the embedded stack (secrets, SMTP connection, ...), under this home.
    from continuous_training.ops.stack import airflow_env
    from continuous_training.settings import load_settings

    os.environ.update(airflow_env(load_settings()))
    # Tests see a failed task at once instead of waiting for its retry.
    os.environ["CT_TASK_RETRIES"] = "0"
    return home


TEST_HOME = _isolate()

# The real services (MLflow, SMTP sink, Airflow DB, endpoint), one of each per session whichever suites
# use them: defined here once, so that no two suites start a second copy on the same port.
from services import airflow_db, endpoint, mlflow_server, smtp_sink  # noqa: E402, F401


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's CT_HOME unless it failed or CT_KEEP_TEST_HOME is set (for a post-mortem)."""
    import shutil

    if exitstatus == 0 and not os.environ.get("CT_KEEP_TEST_HOME"):
        shutil.rmtree(TEST_HOME, ignore_errors=True)
    else:
        print(f"\ntest state kept in {TEST_HOME}")
