"""Runtime settings: typed defaults < ``include/config/*.yaml`` < ``CT_*`` environment variables.

Every address, path and secret the project uses comes from here. Loading is cheap and has no
side effects (no directory is created, no tracking URI is set), so it is safe at DAG-parse time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

#: The repository root (``include/continuous_training/settings.py`` -> three parents up).
REPO_ROOT = Path(__file__).resolve().parents[2]


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r}: expected an integer port or count") from exc


@dataclass(frozen=True)
class Settings:
    """Where everything lives and listens.

    Attributes:
        home: the state directory (``CT_HOME``); the embedded stack writes only below it.
        config_dir: folder with ``dataset.yaml`` and ``policy.yaml`` (``CT_CONFIG_DIR``).
        lake: root of the data lake (``CT_LAKE``), default ``<home>/lake``.
        host: the loopback address every embedded service binds to (``CT_HOST``).
        airflow_port, mlflow_port, endpoint_port, smtp_port: ports of the embedded services.
        mlflow_tracking_uri: MLflow tracking server (``CT_MLFLOW_TRACKING_URI``).
        endpoint_url: the prediction endpoint (``CT_ENDPOINT_URL``).
        airflow_url: the Airflow API server / UI (``CT_AIRFLOW_URL``).
        smtp_conn_id: Airflow connection used for alert mail (``CT_SMTP_CONN_ID``).
        endpoint_workers: worker processes of the prediction endpoint (``CT_ENDPOINT_WORKERS``); a deploy
            waits until each of them serves the new champion.
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
    smtp_conn_id: str
    endpoint_workers: int = 2
    repo_root: Path = field(default=REPO_ROOT)

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
    def dags_folder(self) -> Path:
        return self.repo_root / "dags"

    @property
    def plugins_folder(self) -> Path:
        return self.repo_root / "plugins"


def load_settings() -> Settings:
    """Read the settings from the environment (cheap; call it wherever you need them)."""
    home = Path(_env("CT_HOME", str(REPO_ROOT / ".ct"))).expanduser().resolve()
    host = _env("CT_HOST", "127.0.0.1")
    airflow_port = _env_int("CT_AIRFLOW_PORT", 8080)
    mlflow_port = _env_int("CT_MLFLOW_PORT", 5000)
    endpoint_port = _env_int("CT_ENDPOINT_PORT", 8000)
    smtp_port = _env_int("CT_SMTP_PORT", 8025)
    return Settings(
        home=home,
        config_dir=Path(_env("CT_CONFIG_DIR", str(REPO_ROOT / "include" / "config"))).expanduser().resolve(),
        lake=Path(_env("CT_LAKE", str(home / "lake"))).expanduser().resolve(),
        host=host,
        airflow_port=airflow_port,
        mlflow_port=mlflow_port,
        endpoint_port=endpoint_port,
        smtp_port=smtp_port,
        mlflow_tracking_uri=_env("CT_MLFLOW_TRACKING_URI", f"http://{host}:{mlflow_port}"),
        endpoint_url=_env("CT_ENDPOINT_URL", f"http://{host}:{endpoint_port}"),
        airflow_url=_env("CT_AIRFLOW_URL", f"http://{host}:{airflow_port}"),
        smtp_conn_id=_env("CT_SMTP_CONN_ID", "ct_smtp"),
        endpoint_workers=_env_int("CT_ENDPOINT_WORKERS", 2),
    )
