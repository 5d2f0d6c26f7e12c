"""Fixtures of the security suite: the same real services as the integration tests (``tests/services.py``)."""

from services import airflow_db, endpoint, mlflow_server, smtp_sink  # noqa: F401
