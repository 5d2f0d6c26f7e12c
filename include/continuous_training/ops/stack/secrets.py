"""The embedded stack's secrets: Airflow's keys and the admin password, generated once per state directory.

Each lives in a JSON file with mode 0600 under ``settings.airflow_home``; the first run writes it
atomically, so two concurrent first runs agree on one value.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

from continuous_training.credentials import (
    CredentialError,
    check_secret,
    endpoint_tokens,
    mlflow_credentials,
    model_signing_key,
    private_json,
)
from continuous_training.ops.stack.errors import StackError
from continuous_training.settings import Settings

ADMIN_USER = "admin"
#: A read-only login (the simple auth manager's ``viewer`` role): on-call reads runs, logs and the
#: project's pages, and cannot trigger, clear or change anything.
VIEWER_USER = "viewer"
#: Airflow's users of the stack and their roles (``[core] simple_auth_manager_users``).
AIRFLOW_USERS = {ADMIN_USER: "admin", VIEWER_USER: "viewer"}


def _private_json(path: Path, makers: dict[str, Callable[[], str]], expected: str) -> dict[str, str]:
    try:
        return private_json(path, makers, expected)
    except CredentialError as exc:
        raise StackError(str(exc)) from exc


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def stack_secrets(settings: Settings) -> dict[str, str]:
    """The Airflow secrets of this state directory, generated on first use.

    Stored in ``<home>/airflow/secrets.json`` (mode 0600): ``jwt_secret`` (64 random bytes,
    url-safe base64), ``fernet_key`` and ``api_secret_key``.

    Args:
        settings: the stack settings (``settings.airflow_home`` holds the file).

    Returns:
        The secrets by name.

    Raises:
        StackError: the file exists but is not a JSON object.
    """
    makers: dict[str, Callable[[], str]] = {
        # Airflow warns (InsecureKeyLengthWarning, repeatedly) below 64 bytes.
        "jwt_secret": lambda: secrets.token_urlsafe(64),
        "fernet_key": _fernet_key,
        "api_secret_key": lambda: secrets.token_urlsafe(32),
    }
    return _private_json(
        settings.airflow_home / "secrets.json",
        makers,
        "an object with jwt_secret, fernet_key, api_secret_key",
    )


def passwords_file(settings: Settings) -> Path:
    """The simple auth manager's password file, ``<home>/airflow/passwords.json``."""
    return settings.airflow_home / "passwords.json"


def airflow_passwords(settings: Settings) -> dict[str, str]:
    """The Airflow UI/API passwords of :data:`AIRFLOW_USERS`, generated once per state directory.

    Args:
        settings: the stack settings.

    Returns:
        User -> password (``secrets.token_urlsafe(16)``), as stored in :func:`passwords_file`.

    Raises:
        StackError: the password file exists but is not a JSON object.
    """
    return _private_json(
        passwords_file(settings),
        {user: lambda: secrets.token_urlsafe(16) for user in AIRFLOW_USERS},
        f'an object like {{"{ADMIN_USER}": "<password>", "{VIEWER_USER}": "<password>"}}',
    )


def airflow_password(settings: Settings, user: str = ADMIN_USER) -> str:
    """The Airflow UI/API password of ``user`` (default ``admin``), see :func:`airflow_passwords`."""
    return airflow_passwords(settings)[user]


def secret_env(settings: Settings) -> dict[str, str]:
    """The secret variables of every Airflow process, generating the secrets on first use.

    Also creates the admin password file (see :func:`airflow_password`): the auth manager reads it,
    and the variable naming it is not secret, so it is in
    :func:`~continuous_training.ops.stack.env.airflow_config`.

    Args:
        settings: the stack settings.

    Returns:
        ``AIRFLOW__API__SECRET_KEY``, ``AIRFLOW__API_AUTH__JWT_SECRET`` and ``AIRFLOW__CORE__FERNET_KEY``.

    Raises:
        StackError: a secrets file is unreadable.
    """
    keys = stack_secrets(settings)
    airflow_passwords(settings)  # creates the password file the auth manager reads
    return {
        "AIRFLOW__API__SECRET_KEY": keys["api_secret_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
        "AIRFLOW__CORE__FERNET_KEY": keys["fernet_key"],
    }


def check_stack_secrets(settings: Settings) -> None:
    """Generate what is missing, then refuse weak secrets: the stack starts with none.

    Checks Airflow's JWT secret, Fernet key, API secret key and admin password, the MLflow accounts and
    Flask key, the endpoint's tokens, and creates the model-signing key. A secret is weak if it is
    empty, shorter than 12 characters or a well-known default (MLflow's ``password1234``, Airflow's
    ``airflow``, ...); the message names the file and the entry, never the value.

    Raises:
        StackError: a secrets file is unreadable or holds a weak secret.
    """
    try:
        for name, value in stack_secrets(settings).items():
            check_secret(f"{settings.airflow_home / 'secrets.json'}: {name}", value)
        for user, password in airflow_passwords(settings).items():
            check_secret(f"{passwords_file(settings)}: {user}", password)
        mlflow_credentials(settings)
        endpoint_tokens(settings)
        model_signing_key(settings)
    except CredentialError as exc:
        raise StackError(f"refusing to start the stack: {exc}") from exc
