"""The tracking server's app: MLflow's basic-auth app, with internal errors kept out of responses.

``mlflow server --app-name ct-basic-auth`` (the ``mlflow.app`` entry point in ``pyproject.toml``) runs
:func:`create_app`. It is MLflow's own ``mlflow.server.auth:create_app`` plus one Flask
``after_request`` hook: MLflow 3.17 answers some malformed requests with the database's own error in
the body (a truncated JSON body to ``runs/create`` is parsed as ``{}``, and the 400 carries
``(sqlite3.IntegrityError) ... [SQL: INSERT INTO runs ...] [parameters: ...]``), and no server option
turns that off. The hook replaces such messages, and the message of every 5xx, by a fixed sentence
with a reference id, and logs the original under that id, so the details stay in the server log.
Authentication runs first: anonymous callers get 401 before any handler, so they never reach these
errors at all.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

log = logging.getLogger(__name__)

#: Fragments that only an internal error message contains (SQLAlchemy, the DB drivers, Python).
LEAK_MARKERS = (
    "[SQL:",
    "[parameters:",
    "sqlalchemy",
    "sqlite3.",
    "psycopg",
    "pymysql",
    "Traceback (most recent call last)",
    "Background on this error",
)


def leaks(message: str) -> bool:
    """Whether an error message carries internals (SQL, driver errors, a traceback)."""
    lowered = message.lower()
    return any(marker.lower() in lowered for marker in LEAK_MARKERS)


def scrub_error(response: Any) -> Any:
    """Flask ``after_request`` hook: an error body with internals in it gets a fixed message.

    Args:
        response: the Flask response.

    Returns:
        The same response, its body rewritten if it was a leaking error.
    """
    if response.status_code < 400 or response.direct_passthrough:
        return response
    text = response.get_data(as_text=True)
    if not (response.status_code >= 500 or leaks(text)):
        return response
    reference = uuid.uuid4().hex[:12]
    log.warning("HTTP %s error, reference %s: %s", response.status_code, reference, text[:4000])
    error_code = "INTERNAL_ERROR" if response.status_code >= 500 else "INVALID_PARAMETER_VALUE"
    if response.mimetype == "application/json":
        try:
            error_code = json.loads(text).get("error_code") or error_code
        except (ValueError, AttributeError):
            pass
    body = {
        "error_code": error_code,
        "message": (
            f"The tracking server could not process this request (reference {reference}); "
            "its log has the details."
        ),
    }
    response.set_data(json.dumps(body))
    response.mimetype = "application/json"
    return response


def create_app() -> Any:
    """MLflow's basic-auth app with :func:`scrub_error` on every Flask response.

    Returns:
        What ``mlflow.server.auth.create_app`` returns: the FastAPI app under uvicorn (the default
        server), the Flask app under gunicorn or waitress.
    """
    from mlflow.server import app as flask_app
    from mlflow.server.auth import create_app as basic_auth_app

    # Registered before the auth app's own hook, so it runs after it (Flask runs them in reverse).
    flask_app.after_request(scrub_error)
    return basic_auth_app(flask_app)
