"""The stack's trust settings without servers: weak secrets refused, MLflow's options, error scrubbing."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path

import pytest

from continuous_training import credentials
from continuous_training.credentials import (
    KNOWN_DEFAULTS,
    MLFLOW_ACCOUNTS,
    CredentialError,
    check_secret,
    endpoint_tokens,
    mlflow_client_env,
    mlflow_credentials,
    model_signing_key,
    model_verify_key,
)
from continuous_training.ops.mlflow_app import leaks, scrub_error
from continuous_training.ops.stack import StackError, airflow_env, stack_down, stack_up
from continuous_training.ops.stack.mlflow_auth import auth_config_file, server_args, server_env
from continuous_training.ops.stack.secrets import check_stack_secrets
from continuous_training.settings import Settings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("value", ["", None, "password1234", "airflow", "AIRFLOW", "short", 12345678901234])
def test_weak_secrets_are_refused_without_showing_them(value: object) -> None:
    with pytest.raises(CredentialError, match=r"^the thing: ") as caught:
        check_secret("the thing", value)
    if isinstance(value, str) and value:
        assert value not in str(caught.value)


def test_a_generated_secret_is_accepted() -> None:
    assert "password1234" in KNOWN_DEFAULTS
    assert "airflow" in KNOWN_DEFAULTS
    assert check_secret("x", "a" * 11 + "b") == "a" * 11 + "b"


def test_credentials_are_generated_once_private_and_stable(settings: Settings) -> None:
    first = mlflow_credentials(settings)
    assert set(first) == {*MLFLOW_ACCOUNTS, "flask_secret_key"}
    assert len(set(first.values())) == len(first)  # no two accounts share a password
    assert mlflow_credentials(settings) == first
    tokens = endpoint_tokens(settings)
    assert tokens["admin_token"] != tokens["predict_token"]
    folder = settings.secrets_dir
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("mlflow.json", "endpoint.json"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    env = mlflow_client_env(settings, "ct-endpoint")
    assert env == {
        "MLFLOW_TRACKING_USERNAME": "ct-endpoint",
        "MLFLOW_TRACKING_PASSWORD": first["ct-endpoint"],
    }
    with pytest.raises(ValueError, match="unknown MLflow account 'root'"):
        mlflow_client_env(settings, "root")


def test_a_loosened_credentials_file_is_tightened_again(settings: Settings) -> None:
    mlflow_credentials(settings)
    path = settings.secrets_dir / "mlflow.json"
    path.chmod(0o644)
    mlflow_credentials(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_signing_key_verifies_its_own_signatures_only(settings: Settings) -> None:
    from cryptography.exceptions import InvalidSignature

    key = model_signing_key(settings)
    assert model_signing_key(settings).private_bytes_raw() == key.private_bytes_raw()
    public = model_verify_key(settings)
    signature = key.sign(b"payload")
    public.verify(signature, b"payload")
    with pytest.raises(InvalidSignature):
        public.verify(signature, b"payload!")
    assert stat.S_IMODE(credentials._signing_file(settings).stat().st_mode) == 0o600
    assert stat.S_IMODE(credentials.public_key_file(settings).stat().st_mode) == 0o644


def test_no_verification_key_means_nothing_verifies(settings: Settings) -> None:
    with pytest.raises(CredentialError, match="no model verification key"):
        model_verify_key(settings)


@pytest.mark.parametrize(
    ("file", "entry", "value"),
    [
        ("mlflow.json", "admin", "password1234"),
        ("mlflow.json", "ct-pipeline", "changeme"),
        ("mlflow.json", "flask_secret_key", "tooshort"),
        ("endpoint.json", "admin_token", "airflow"),
        ("airflow/passwords.json", "admin", "airflow"),
        ("airflow/secrets.json", "jwt_secret", "secret"),
    ],
)
def test_the_stack_refuses_to_start_with_a_weak_secret(
    settings: Settings, file: str, entry: str, value: str
) -> None:
    check_stack_secrets(settings)  # generates everything; all strong
    path = (settings.home if file.startswith("airflow/") else settings.secrets_dir) / file
    data = json.loads(path.read_text())
    data[entry] = value
    path.write_text(json.dumps(data))
    try:
        with pytest.raises(StackError, match=rf"refusing to start the stack: .*{Path(file).name}: {entry}"):
            stack_up(settings, parts=["smtp"])
    finally:
        stack_down(settings)  # should there be anything to stop, it must not outlive the test
    assert not settings.run_dir.exists() or not list(settings.run_dir.glob("*.pid"))


def test_an_emptied_secret_is_generated_again_not_used(settings: Settings) -> None:
    first = mlflow_credentials(settings)
    path = settings.secrets_dir / "mlflow.json"
    path.write_text(json.dumps({**first, "ct-pipeline": ""}))
    again = mlflow_credentials(settings)
    assert again["ct-pipeline"]
    assert again["ct-pipeline"] != first["ct-pipeline"]
    assert {k: v for k, v in again.items() if k != "ct-pipeline"} == {
        k: v for k, v in first.items() if k != "ct-pipeline"
    }


def test_mlflow_runs_the_auth_app_with_its_own_host_and_origin_only(settings: Settings) -> None:
    args = server_args(settings)
    options = dict(zip(args[::2], args[1::2], strict=True))
    assert options["--app-name"] == "ct-basic-auth"
    port = settings.mlflow_port
    assert set(options["--allowed-hosts"].split(",")) == {f"127.0.0.1:{port}", f"localhost:{port}"}
    assert set(options["--cors-allowed-origins"].split(",")) == {
        f"http://127.0.0.1:{port}",
        f"http://localhost:{port}",
    }
    env = server_env(settings)
    ini = auth_config_file(settings).read_text()
    assert "default_permission = NO_PERMISSIONS" in ini
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] not in ini  # the password is never written to the config
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == str(auth_config_file(settings))
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == mlflow_credentials(settings)["admin"]


def test_every_process_of_the_stack_refuses_pickle_and_airflow_hides_internals(settings: Settings) -> None:
    from continuous_training.ops.stack.parts import PARTS, _part_spec

    cache: dict[str, dict[str, str]] = {}
    for part in PARTS:
        assert _part_spec(settings, part, cache).env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false", part
    env = airflow_env(settings)
    assert env["AIRFLOW__API__EXPOSE_STACKTRACE"] == "False"
    assert env["AIRFLOW__API__EXPOSE_CONFIG"] == "False"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["MLFLOW_TRACKING_USERNAME"] == "ct-pipeline"
    endpoint = _part_spec(settings, "endpoint", cache).env
    assert endpoint["MLFLOW_TRACKING_USERNAME"] == "ct-endpoint"


def _flask_response(status: int, body: dict | str):
    from flask import Response

    text = body if isinstance(body, str) else json.dumps(body)
    return Response(text, status=status, mimetype="application/json")


def test_database_errors_are_replaced_by_a_reference(caplog: pytest.LogCaptureFixture) -> None:
    leak = {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "(sqlite3.IntegrityError) FOREIGN KEY constraint failed [SQL: INSERT INTO runs (run_uuid) "
        "VALUES (?)] [parameters: ('abc',)]",
    }
    response = scrub_error(_flask_response(400, leak))
    body = json.loads(response.get_data(as_text=True))
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "SQL" not in body["message"]
    assert "sqlite" not in body["message"]
    reference = body["message"].split("reference ")[1].split(")")[0]
    assert reference in caplog.text
    assert "FOREIGN KEY" in caplog.text


def test_ordinary_errors_and_successes_pass_unchanged() -> None:
    plain = {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Registered Model with name=x not found"}
    assert json.loads(scrub_error(_flask_response(404, plain)).get_data(as_text=True)) == plain
    ok = {"run": {"info": {"run_id": "1"}}}
    assert json.loads(scrub_error(_flask_response(200, ok)).get_data(as_text=True)) == ok
    server_error = scrub_error(
        _flask_response(500, {"error_code": "INTERNAL_ERROR", "message": "boom at x.py"})
    )
    assert "boom" not in server_error.get_data(as_text=True)
    assert leaks("Traceback (most recent call last):")
    assert not leaks("Run 'x' not found")
