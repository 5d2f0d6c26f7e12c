"""MLflow with authentication: the basic-auth app's configuration and the project's accounts.

The tracking server runs MLflow's own basic-auth app (through :mod:`continuous_training.ops.mlflow_app`,
which also keeps database errors out of response bodies). Nothing is anonymous: every REST, artifact
and UI route answers 401 without credentials; ``/health`` stays open for probes.

Accounts (passwords in ``<secrets>/mlflow.json``, see :mod:`continuous_training.credentials`):

* ``admin``: MLflow's administrator, for people (user management, the UI). Bootstrapped by MLflow on
  the first start of an empty auth database, from ``MLFLOW_AUTH_ADMIN_PASSWORD``.
* ``ct-pipeline``: Airflow's tasks. Owns (``MANAGE``) the project's experiment and registered model.
* ``ct-endpoint``: the prediction endpoint. ``READ`` on the experiment (the model's artifacts) and the
  registered model: it can resolve the ``champion`` alias and download the version, nothing more.

``default_permission`` is ``NO_PERMISSIONS``: another account sees nothing it was not granted.
:func:`provision` is idempotent and runs at every ``ct stack up`` (and in the test fixtures).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from continuous_training.credentials import (
    MLFLOW_ADMIN,
    MLFLOW_ENDPOINT,
    MLFLOW_PIPELINE,
    mlflow_credentials,
)
from continuous_training.ops.stack.errors import StackError
from continuous_training.settings import Settings

log = logging.getLogger(__name__)

#: The ``mlflow.app`` entry point (pyproject.toml) the server is started with.
APP_NAME = "ct-basic-auth"
#: What an account may do with a resource nobody granted it.
DEFAULT_PERMISSION = "NO_PERMISSIONS"
#: Permissions of the project's accounts on its experiment and registered model.
GRANTS = {MLFLOW_PIPELINE: "MANAGE", MLFLOW_ENDPOINT: "READ"}


def auth_config_file(settings: Settings) -> Path:
    """``<home>/mlflow/basic_auth.ini``, the file ``MLFLOW_AUTH_CONFIG_PATH`` names."""
    return settings.mlflow_dir / "basic_auth.ini"


def write_auth_config(settings: Settings) -> Path:
    """Write the basic-auth app's configuration (rewritten at every start, mode 0600).

    In the cluster its ``database_uri`` is the PostgreSQL database ``mlflow_auth`` and holds that
    role's password; the admin password is never in it.

    Returns:
        The file's path.
    """
    path = auth_config_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    if settings.cluster:
        from continuous_training.ops.stack.cluster import database_url

        db_uri = database_url(settings, "mlflow_auth")
    else:
        db_uri = f"sqlite:///{(settings.mlflow_dir / 'auth.db').resolve()}"
    text = (
        "# Written by `ct stack up`; edits are overwritten. The admin password is not here: it is read\n"
        "# from MLFLOW_AUTH_ADMIN_PASSWORD on the first start only (see <secrets>/mlflow.json).\n"
        "[mlflow]\n"
        f"default_permission = {DEFAULT_PERMISSION}\n"
        f"database_uri = {db_uri}\n"
        f"admin_username = {MLFLOW_ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
        "# A checked password is remembered for 60 s in each worker: without it every request pays a\n"
        "# PBKDF2 hash (20 concurrent registrations timed out behind them on 2 cores). A password change\n"
        "# reaches the other worker within that minute.\n"
        "auth_cache_ttl_seconds = 60\n"
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    path.chmod(0o600)
    return path


def server_env(settings: Settings) -> dict[str, str]:
    """The variables of the MLflow server process: auth config, Flask secret, bootstrap password.

    Raises:
        CredentialError: a secret in ``mlflow.json`` is empty, short or a known default.
    """
    secret = mlflow_credentials(settings)
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(write_auth_config(settings)),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secret["flask_secret_key"],
        "MLFLOW_AUTH_ADMIN_PASSWORD": secret[MLFLOW_ADMIN],
    }


def server_args(settings: Settings) -> list[str]:
    """``mlflow server`` options: the auth app, and Host/Origin checks naming exactly this server.

    MLflow's defaults accept any private address as Host and any localhost origin; here only the
    server's own ``host:port`` (and ``localhost:port`` when it listens on loopback) are accepted, and
    only its own origin may make cross-origin calls.
    """
    from continuous_training.ops.stack.env import _url_host

    port = settings.mlflow_port
    hosts = [f"{_url_host(settings.host)}:{port}"]
    if settings.host in ("127.0.0.1", "::1", "localhost"):
        hosts += [f"localhost:{port}", f"127.0.0.1:{port}"]
    origins = sorted({f"http://{h}" for h in hosts})
    return [
        "--app-name",
        APP_NAME,
        "--allowed-hosts",
        ",".join(dict.fromkeys(hosts)),
        "--cors-allowed-origins",
        ",".join(origins),
        "--x-frame-options",
        "SAMEORIGIN",
    ]


class _Admin:
    """The few user and permission calls of MLflow's auth REST API, as ``admin``."""

    def __init__(self, settings: Settings) -> None:
        import httpx

        self.secret = mlflow_credentials(settings)
        self.http = httpx.Client(
            base_url=settings.mlflow_tracking_uri.rstrip("/"),
            auth=(MLFLOW_ADMIN, self.secret[MLFLOW_ADMIN]),
            timeout=30.0,
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code == 401:
            raise StackError(
                f"MLflow at {self.http.base_url} refused the admin password of mlflow.json (401). If the "
                "password was changed in MLflow, put the current one in the file."
            )
        return response

    def ensure_user(self, username: str) -> bool:
        """Create ``username`` with its password from mlflow.json, or set that password again."""
        password = self.secret[username]
        got = self.call("GET", "/api/2.0/mlflow/users/get", params={"username": username})
        if got.status_code == 200:
            self._ok(
                self.call(
                    "PATCH",
                    "/api/2.0/mlflow/users/update-password",
                    json={"username": username, "password": password},
                ),
                f"set the password of {username}",
            )
            return False
        self._ok(
            self.call(
                "POST", "/api/2.0/mlflow/users/create", json={"username": username, "password": password}
            ),
            f"create user {username}",
        )
        return True

    def grant(self, username: str, resource_type: str, resource_id: str, permission: str) -> None:
        """Give ``username`` exactly ``permission`` on a resource (idempotent)."""
        where = {"username": username, "resource_type": resource_type, "resource_id": resource_id}
        got = self.call("GET", "/api/3.0/mlflow/users/permissions/get", params=where)
        if got.status_code == 200 and got.json().get("permission") == permission:
            return
        granted = self.call(
            "POST", "/api/3.0/mlflow/users/permissions/grant", json={**where, "permission": permission}
        )
        if granted.status_code != 200 and "RESOURCE_ALREADY_EXISTS" in granted.text:
            self._ok(self.call("POST", "/api/3.0/mlflow/users/permissions/revoke", json=where), "revoke")
            granted = self.call(
                "POST", "/api/3.0/mlflow/users/permissions/grant", json={**where, "permission": permission}
            )
        self._ok(granted, f"grant {permission} on {resource_type} {resource_id} to {username}")

    @staticmethod
    def _ok(response: Any, what: str) -> None:
        if response.status_code != 200:
            raise StackError(f"MLflow auth: could not {what}: HTTP {response.status_code}")

    def close(self) -> None:
        self.http.close()


def provision(settings: Settings) -> dict[str, Any]:
    """Create or update the project's MLflow accounts and their grants (idempotent).

    Makes sure the registered model of ``policy.yaml`` and its experiment (of the same name) exist (created as
    ``ct-pipeline`` when absent), then gives ``ct-pipeline`` MANAGE and ``ct-endpoint`` READ on both.

    Args:
        settings: the stack settings (``mlflow_tracking_uri`` is the server).

    Returns:
        ``{"created_users", "experiment_id", "model_name"}``.

    Raises:
        StackError: the admin password is refused, or a call fails.
    """
    import httpx

    from continuous_training.config import load_policy

    admin = _Admin(settings)
    try:
        created = [user for user in GRANTS if admin.ensure_user(user)]
        # The training runs' experiment is named after the registered model (model/train.py).
        model_name = load_policy(settings.config_dir).model.name
        experiment = model_name
        base = settings.mlflow_tracking_uri.rstrip("/")
        pipeline = (MLFLOW_PIPELINE, admin.secret[MLFLOW_PIPELINE])
        with httpx.Client(base_url=base, auth=pipeline, timeout=30.0) as http:
            got = http.get("/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": experiment})
            if got.status_code == 200:
                experiment_id = got.json()["experiment"]["experiment_id"]
            else:
                # Absent, or present but not readable by ct-pipeline yet (created before auth): as admin.
                found = admin.call(
                    "GET", "/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": experiment}
                )
                if found.status_code == 200:
                    experiment_id = found.json()["experiment"]["experiment_id"]
                else:
                    made = http.post("/api/2.0/mlflow/experiments/create", json={"name": experiment})
                    _Admin._ok(made, f"create experiment {experiment}")
                    experiment_id = made.json()["experiment_id"]
            exists = admin.call("GET", "/api/2.0/mlflow/registered-models/get", params={"name": model_name})
            if exists.status_code != 200:
                _Admin._ok(
                    http.post("/api/2.0/mlflow/registered-models/create", json={"name": model_name}),
                    f"create registered model {model_name}",
                )
        for user, permission in GRANTS.items():
            admin.grant(user, "experiment", experiment_id, permission)
            admin.grant(user, "registered_model", model_name, permission)
    finally:
        admin.close()
    if created:
        log.info("MLflow accounts created: %s", ", ".join(created))
    return {"created_users": created, "experiment_id": experiment_id, "model_name": model_name}
