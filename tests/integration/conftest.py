"""Fixtures of the integration tests: real services on loopback, started once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from services import BIN, start_process, stop_process

from continuous_training.settings import load_settings


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (SQLite backend, proxied local artifacts) on a free loopback port.

    Yields its URL, also exported as ``CT_MLFLOW_TRACKING_URI`` and ``MLFLOW_TRACKING_URI`` for the
    session (child processes started later, such as the endpoint, inherit them).
    """
    settings = load_settings()
    root = tmp_path_factory.mktemp("mlflow")
    url = f"http://{settings.host}:{settings.mlflow_port}"
    # The server's job runner (huey consumers for GenAI jobs) adds four Python processes that import
    # mlflow at start-up; this project uses none of those jobs. start_process passes os.environ on.
    os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    try:
        proc = start_process(
            "mlflow",
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{root / 'mlflow.db'}",
                "--artifacts-destination",
                str(root / "artifacts"),
                "--host",
                settings.host,
                "--port",
                str(settings.mlflow_port),
                "--workers",
                "1",
            ],
            f"{url}/health",
            timeout=180,
        )
    finally:
        os.environ.pop("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", None)
    saved = {key: os.environ.get(key) for key in ("CT_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI")}
    os.environ.update({key: url for key in saved})
    try:
        yield url
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        stop_process(proc)


# The SMTP sink, the Airflow metadata DB and the prediction endpoint (tests/integration/services.py).
from services import airflow_db, endpoint, smtp_sink  # noqa: E402, F401
