"""Fixtures of the ops tests: settings of a fresh state directory on free ports."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from continuous_training.settings import Settings, load_settings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings of a state directory under ``tmp_path`` (nothing created yet), on free loopback ports."""
    monkeypatch.setenv("CT_HOME", str(tmp_path / "home"))
    for var in ("CT_AIRFLOW_PORT", "CT_MLFLOW_PORT", "CT_ENDPOINT_PORT", "CT_SMTP_PORT"):
        monkeypatch.setenv(var, str(_free_port()))
    for var in (
        "CT_LAKE",
        "CT_SECRETS_DIR",
        "CT_MLFLOW_TRACKING_URI",
        "CT_ENDPOINT_URL",
        "CT_AIRFLOW_URL",
        "CT_PUBLIC_URL",
        "CT_SMTP_CONN_ID",
        "CT_HOST",
    ):
        monkeypatch.delenv(var, raising=False)
    return load_settings()
