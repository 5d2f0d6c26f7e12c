"""Fixtures of the integration tests: real services on loopback, started once per session.

The MLflow server, the SMTP sink, the Airflow metadata DB and the prediction endpoint are defined in
``tests/services.py``, shared with the security suite.
"""

from services import airflow_db, endpoint, mlflow_server, smtp_sink  # noqa: F401
