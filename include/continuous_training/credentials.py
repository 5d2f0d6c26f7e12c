"""The deployment's credentials: generated once per secrets folder, kept in 0600 files, never logged.

Everything here lives under :attr:`~continuous_training.settings.Settings.secrets_dir`
(``<home>/secrets`` unless ``CT_SECRETS_DIR`` names another folder, e.g. a mounted secret):

``mlflow.json``
    The MLflow accounts: ``admin`` (MLflow's own admin, for people), ``ct-pipeline`` (the tasks:
    they log runs, register versions and move aliases) and ``ct-endpoint`` (read-only: the endpoint
    only reads the registry), plus the Flask secret key every MLflow server replica shares.
``endpoint.json``
    ``admin_token`` for the endpoint's admin routes (``/reload``) and ``predict_token`` for
    ``/predict`` when ``serving.require_token`` is on.
``model_signing.json`` / ``model_signing.pub``
    The Ed25519 key the pipeline signs a registered version's provenance with, and its public half,
    which is all the endpoint needs to check a version before serving it.

Each file is created atomically on first use (two concurrent first runs agree on one value). A secret
that is empty, shorter than :data:`MIN_SECRET_LENGTH` or one of the well-known defaults
(:data:`KNOWN_DEFAULTS`) is refused wherever it is read, so an edited file cannot weaken the stack.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from continuous_training.settings import Settings

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

#: MLflow's admin account (the name MLflow's basic-auth app bootstraps).
MLFLOW_ADMIN = "admin"
#: The account Airflow's tasks use: writes runs, versions, tags and aliases.
MLFLOW_PIPELINE = "ct-pipeline"
#: The endpoint's account: read-only on the registered model and its experiment.
MLFLOW_ENDPOINT = "ct-endpoint"
MLFLOW_ACCOUNTS = (MLFLOW_ADMIN, MLFLOW_PIPELINE, MLFLOW_ENDPOINT)
#: Secrets shipped as defaults by the tools we run, or guessed first by anyone: never accepted.
#: ``password1234`` was MLflow's basic-auth default admin password (GHSA-gq3w-7jj3-x7gr); ``airflow``
#: the password of the official Airflow docker-compose file and its ``airflow:airflow`` database.
KNOWN_DEFAULTS = frozenset(
    {"password1234", "airflow", "admin", "password", "changeme", "mlflow", "secret", "temporary_key"}
)
#: MLflow refuses passwords shorter than this; we hold every generated secret to it.
MIN_SECRET_LENGTH = 12


class CredentialError(RuntimeError):
    """A credentials file is unreadable, or a secret in it is empty, too short or a known default."""


def check_secret(name: str, value: Any, *, min_length: int = MIN_SECRET_LENGTH) -> str:
    """``value`` if it is a usable secret, else a :class:`CredentialError` naming ``name``.

    Args:
        name: what the secret is (named in the error; the value never is).
        value: the secret.
        min_length: shortest accepted length.

    Raises:
        CredentialError: empty, not a string, shorter than ``min_length`` or in :data:`KNOWN_DEFAULTS`.
    """
    if not isinstance(value, str) or not value:
        raise CredentialError(f"{name}: the secret is empty; delete it to have a new one generated")
    if value.lower() in KNOWN_DEFAULTS:
        raise CredentialError(f"{name}: the secret is a well-known default; set a random one")
    if len(value) < min_length:
        raise CredentialError(
            f"{name}: the secret has {len(value)} characters; expected at least {min_length}"
        )
    return value


def _read_json_object(path: Path, expected: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CredentialError(f"{path}: cannot read it as JSON ({exc}); expected {expected}") from exc
    if not isinstance(data, dict):
        raise CredentialError(f"{path}: expected {expected}, found {type(data).__name__}")
    return data


def write_private_json(path: Path, data: dict[str, Any], *, replace: bool) -> bool:
    """Write ``data`` with mode 0600 atomically; without ``replace``, only if ``path`` is absent.

    The folder is created with mode 0700.

    Returns:
        True if this call wrote the file.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        if replace:
            os.replace(tmp, path)
            return True
        try:
            # link() fails if the name exists, so two concurrent first runs agree on one secret.
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def private_json(path: Path, makers: dict[str, Callable[[], str]], expected: str) -> dict[str, str]:
    """Load a 0600 JSON file of secrets, generating (once) any entry that is missing.

    Args:
        path: the file.
        makers: entry name -> function generating a new value.
        expected: what the file should hold, for the error message.

    Raises:
        CredentialError: the file exists but is not a JSON object.
    """
    if not path.exists():
        write_private_json(path, {key: make() for key, make in makers.items()}, replace=False)
    data = _read_json_object(path, expected)
    missing = [key for key in makers if not isinstance(data.get(key), str) or not data[key]]
    if missing:
        data.update({key: makers[key]() for key in missing})
        write_private_json(path, data, replace=True)
    if path.stat().st_mode & 0o077:
        # Someone loosened it; these are credentials.
        os.chmod(path, 0o600)
    return data


def _token() -> str:
    return secrets.token_urlsafe(32)


def mlflow_credentials(settings: Settings) -> dict[str, str]:
    """The MLflow accounts' passwords and the server's Flask secret key (``mlflow.json``).

    Returns:
        ``{"admin", "ct-pipeline", "ct-endpoint", "flask_secret_key"}`` -> secret, each checked.

    Raises:
        CredentialError: the file is unreadable or a secret in it is weak.
    """
    path = settings.secrets_dir / "mlflow.json"
    keys = (*MLFLOW_ACCOUNTS, "flask_secret_key")
    data = private_json(path, dict.fromkeys(keys, _token), f"an object with {', '.join(keys)}")
    return {key: check_secret(f"{path}: {key}", data[key]) for key in keys}


def mlflow_client_env(settings: Settings, account: str) -> dict[str, str]:
    """The variables an MLflow client authenticates with as ``account``.

    Args:
        settings: where the secrets live.
        account: one of :data:`MLFLOW_ACCOUNTS`.

    Returns:
        ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD``.
    """
    if account not in MLFLOW_ACCOUNTS:
        raise ValueError(f"unknown MLflow account {account!r}; expected one of {list(MLFLOW_ACCOUNTS)}")
    return {
        "MLFLOW_TRACKING_USERNAME": account,
        "MLFLOW_TRACKING_PASSWORD": mlflow_credentials(settings)[account],
    }


def endpoint_tokens(settings: Settings) -> dict[str, str]:
    """The endpoint's bearer tokens (``endpoint.json``): ``admin_token`` and ``predict_token``.

    Raises:
        CredentialError: the file is unreadable or a token in it is weak.
    """
    path = settings.secrets_dir / "endpoint.json"
    keys = ("admin_token", "predict_token")
    data = private_json(path, dict.fromkeys(keys, _token), f"an object with {', '.join(keys)}")
    return {key: check_secret(f"{path}: {key}", data[key]) for key in keys}


def _signing_file(settings: Settings) -> Path:
    return settings.secrets_dir / "model_signing.json"


def public_key_file(settings: Settings) -> Path:
    """``model_signing.pub``: the raw Ed25519 public key, url-safe base64 (not secret, mode 0644)."""
    return settings.secrets_dir / "model_signing.pub"


def model_signing_key(settings: Settings) -> Ed25519PrivateKey:
    """The Ed25519 key the pipeline signs model provenance with, generated once (``model_signing.json``).

    Also writes :func:`public_key_file` when it is missing.

    Raises:
        CredentialError: the key file is unreadable or does not hold a key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    def make() -> str:
        raw = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return base64.urlsafe_b64encode(raw).decode()

    path = _signing_file(settings)
    data = private_json(path, {"private_key": make}, 'an object like {"private_key": "<base64>"}')
    try:
        key = Ed25519PrivateKey.from_private_bytes(base64.urlsafe_b64decode(data["private_key"]))
    except ValueError as exc:
        raise CredentialError(f"{path}: private_key is not a base64 Ed25519 key ({exc})") from None
    public = base64.urlsafe_b64encode(
        key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()
    pub_file = public_key_file(settings)
    if not pub_file.exists() or pub_file.read_text().strip() != public:
        tmp = pub_file.with_name(f".{pub_file.name}.{os.getpid()}.tmp")
        tmp.write_text(public + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, pub_file)
    return key


def model_verify_key(settings: Settings) -> Ed25519PublicKey:
    """The public key a version's provenance signature is checked with (:func:`public_key_file`).

    Raises:
        CredentialError: the file is missing or does not hold a key; nothing can be verified, so
            nothing may serve.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    path = public_key_file(settings)
    try:
        raw = base64.urlsafe_b64decode(path.read_text().strip())
        return Ed25519PublicKey.from_public_bytes(raw)
    except FileNotFoundError:
        raise CredentialError(
            f"{path}: no model verification key; the pipeline writes it when it first signs a model "
            "(or `ct stack up` does)"
        ) from None
    except ValueError as exc:
        raise CredentialError(f"{path}: not a base64 Ed25519 public key ({exc})") from None
