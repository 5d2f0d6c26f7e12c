"""No secret of the deployment is written to a log: the login is printed to the terminal only."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from continuous_training.credentials import endpoint_tokens, mlflow_credentials
from continuous_training.settings import load_settings

pytestmark = pytest.mark.integration


def _secret_values() -> dict[str, str]:
    """Every secret of the session's CT_HOME, by where it is kept."""
    settings = load_settings()
    mlflow_credentials(settings)
    endpoint_tokens(settings)
    files = [*settings.secrets_dir.glob("*.json"), *settings.airflow_home.glob("*.json")]
    values = {}
    for path in files:
        for key, value in json.loads(path.read_text()).items():
            if isinstance(value, str) and len(value) >= 12:
                values[f"{path.name}:{key}"] = value
    return values


def _logs() -> list[Path]:
    settings = load_settings()
    return [
        p
        for root in (settings.log_dir, settings.airflow_home / "logs")
        for p in root.rglob("*")
        if p.is_file()
    ]


def test_no_secret_appears_in_any_log(mlflow_server: str, endpoint: str) -> None:
    secret = mlflow_credentials(load_settings())
    # Give the services something to log: a failed and a successful login, a request to the endpoint.
    httpx.get(
        f"{mlflow_server}/api/2.0/mlflow/experiments/search", auth=("admin", "wrong-password-1"), timeout=30
    )
    httpx.get(
        f"{mlflow_server}/api/2.0/mlflow/experiments/search",
        params={"max_results": 1},
        auth=("admin", secret["admin"]),
        timeout=30,
    )
    httpx.post(f"{endpoint}/reload", timeout=30)
    values = _secret_values()
    assert {
        "mlflow.json:admin",
        "endpoint.json:admin_token",
        "passwords.json:admin",
        "secrets.json:jwt_secret",
    } <= set(values)
    logs = _logs()
    assert any(p.name == "mlflow.log" for p in logs)
    assert any(p.name == "endpoint.log" for p in logs)
    found = [
        f"{path}: {name}"
        for path in logs
        for name, value in values.items()
        if value in path.read_text(errors="replace")
    ]
    assert not found
