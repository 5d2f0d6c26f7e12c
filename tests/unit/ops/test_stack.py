"""The embedded stack's pure parts, and its process handling on the (fast) SMTP part."""

from __future__ import annotations

import json
import shlex
import smtplib
import socket
import stat
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest

from continuous_training.ops import cli
from continuous_training.ops.mailsink import read_mail
from continuous_training.ops.stack import (
    PARTS,
    StackError,
    airflow_config,
    airflow_env,
    airflow_password,
    pid_alive,
    pid_file,
    port_in_use,
    read_pid,
    resolve_parts,
    service_env,
    stack_down,
    stack_status,
    stack_up,
)
from continuous_training.settings import Settings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------- environment and secrets


def test_airflow_env_points_at_the_state_dir_with_absolute_sqlite_path(settings: Settings) -> None:
    env = airflow_env(settings)
    db_url = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert db_url.startswith("sqlite:////")
    db_path = Path(db_url.removeprefix("sqlite:///"))
    assert db_path.is_absolute()
    assert db_path == settings.home / "airflow" / "airflow.db"
    assert env["AIRFLOW_HOME"] == str(settings.home / "airflow")
    assert env["AIRFLOW__API__BASE_URL"] == f"http://127.0.0.1:{settings.airflow_port}"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__API__PORT"] == str(settings.airflow_port)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(settings.repo_root / "dags")
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
    assert env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{settings.mlflow_port}"
    assert env["PYTHONPYCACHEPREFIX"] == str(settings.home / "pycache")
    # Everything service_env gives the endpoint, the tasks get too.
    assert service_env(settings).items() <= env.items()
    assert env["CT_HOME"] == str(settings.home)
    assert env["CT_LAKE"] == str(settings.home / "lake")
    assert all(isinstance(v, str) for v in env.values())


_SECRET_KEYS = {
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API__SECRET_KEY",
    # The tasks' MLflow account.
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
}


def test_airflow_config_is_pure_and_airflow_env_adds_only_secrets_and_smtp(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from continuous_training import config, credentials
    from continuous_training.ops.stack import secrets

    assert not settings.home.exists()
    before = sorted(tmp_path.rglob("*"))

    def no_io(*args: object, **kwargs: object) -> None:
        raise AssertionError("airflow_config must not read the policy or touch the secrets")

    # Neither the policy nor a secrets file may be consulted, let alone a secret generated.
    monkeypatch.setattr(config, "load_policy", no_io)
    monkeypatch.setattr(secrets, "_private_json", no_io)
    monkeypatch.setattr(credentials, "private_json", no_io)
    first = airflow_config(settings)
    second = airflow_config(settings)
    monkeypatch.undo()
    assert first == second
    assert not settings.home.exists()
    assert sorted(tmp_path.rglob("*")) == before

    assert first["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert first["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{settings.airflow_home / 'airflow.db'}"
    assert first["AIRFLOW__API__BASE_URL"] == f"http://127.0.0.1:{settings.airflow_port}"
    assert first["PYTHONPYCACHEPREFIX"] == str(settings.pycache_dir)
    assert service_env(settings).items() <= first.items()
    assert not _SECRET_KEYS & first.keys()
    assert not [key for key in first if key.startswith("AIRFLOW_CONN_")]
    assert all(isinstance(v, str) for v in first.values())

    env = airflow_env(settings)
    assert env.keys() - first.keys() == _SECRET_KEYS | {f"AIRFLOW_CONN_{settings.smtp_conn_id.upper()}"}
    assert {key: env[key] for key in first} == first
    assert all(env[key] for key in _SECRET_KEYS)


def test_smtp_connection_turns_tls_off_and_uses_policy_sender(settings: Settings) -> None:
    env = airflow_env(settings)
    conn = json.loads(env["AIRFLOW_CONN_CT_SMTP"])
    assert conn["conn_type"] == "smtp"
    assert (conn["host"], conn["port"]) == ("127.0.0.1", settings.smtp_port)
    assert conn["extra"]["disable_ssl"] is True
    assert conn["extra"]["disable_tls"] is True
    assert conn["extra"]["from_email"] == "continuous-training@localhost"


def test_password_is_generated_private_and_not_fixed(settings: Settings, tmp_path: Path) -> None:
    env = airflow_env(settings)
    pw_file = Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    stored = json.loads(pw_file.read_text())
    assert list(stored) == ["admin"]
    password = airflow_password(settings)
    assert stored["admin"] == password
    assert password not in ("admin", "", "password")
    assert len(password) >= 16
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    other = Settings(**{**settings.__dict__, "home": tmp_path / "other-home"})
    assert airflow_password(other) != password


def test_secrets_are_generated_once_and_stable(settings: Settings) -> None:
    first = airflow_env(settings)
    second = airflow_env(settings)
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY"):
        assert first[key] == second[key]
    assert len(first["AIRFLOW__API_AUTH__JWT_SECRET"].encode()) >= 64
    from cryptography.fernet import Fernet

    token = Fernet(first["AIRFLOW__CORE__FERNET_KEY"].encode()).encrypt(b"x")
    assert Fernet(second["AIRFLOW__CORE__FERNET_KEY"].encode()).decrypt(token) == b"x"
    secrets_file = settings.home / "airflow" / "secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert json.loads(secrets_file.read_text())["jwt_secret"] == first["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert airflow_password(settings) == airflow_password(settings)


def test_loosened_secrets_file_is_made_private_again_and_missing_keys_added(settings: Settings) -> None:
    secrets_file = settings.home / "airflow" / "secrets.json"
    secrets_file.parent.mkdir(parents=True)
    secrets_file.write_text(json.dumps({"jwt_secret": "kept-" + "x" * 80}))
    secrets_file.chmod(0o644)
    env = airflow_env(settings)
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == "kept-" + "x" * 80
    assert env["AIRFLOW__CORE__FERNET_KEY"]
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600


def test_corrupt_secrets_file_is_named_in_the_error(settings: Settings) -> None:
    secrets_file = settings.home / "airflow" / "secrets.json"
    secrets_file.parent.mkdir(parents=True)
    secrets_file.write_text("[1, 2]")
    with pytest.raises(StackError, match="secrets.json"):
        airflow_env(settings)


def test_resolve_parts_expands_aliases_in_start_order() -> None:
    assert resolve_parts(None) == list(PARTS)
    assert resolve_parts(["endpoint", "airflow", "smtp"]) == [
        "smtp",
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "endpoint",
    ]
    with pytest.raises(StackError, match="'webserver'"):
        resolve_parts(["webserver"])


# ---------------------------------------------------------------- ports and pid files


def test_port_in_use_detects_a_bound_socket() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    assert port_in_use("127.0.0.1", port)  # bound, not even listening
    sock.listen()
    assert port_in_use("127.0.0.1", port)
    sock.close()
    assert not port_in_use("127.0.0.1", port)


def test_up_refuses_a_port_taken_by_another_process(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", settings.smtp_port))
        taken.listen()
        with pytest.raises(StackError) as info:
            stack_up(settings, parts=["smtp"])
    message = str(info.value)
    assert "'smtp'" in message
    assert f"127.0.0.1:{settings.smtp_port}" in message
    assert "already taken" in message
    assert not pid_file(settings, "smtp").exists()


def test_stale_pid_file_is_reported_stopped_and_removed(settings: Settings) -> None:
    dead = _dead_pid()
    assert not pid_alive(dead)
    settings.run_dir.mkdir(parents=True)
    for part in ("mlflow", "airflow-scheduler"):
        pid_file(settings, part).write_text(f"{dead}\n")
    status = stack_status(settings)
    assert status["mlflow"]["state"] == "stopped"
    assert status["mlflow"]["pid"] is None
    assert not pid_file(settings, "mlflow").exists()
    pid_file(settings, "mlflow").write_text(f"{dead}\n")
    stack_down(settings)
    assert not any(settings.run_dir.glob("*.pid"))


def test_pid_of_an_unrelated_live_process_is_not_taken_for_a_part(settings: Settings) -> None:
    # As after a reboot that recycled the pid: alive, but neither a session leader nor the sink.
    other = subprocess.Popen(["sleep", "30"])
    try:
        settings.run_dir.mkdir(parents=True)
        pid_file(settings, "smtp").write_text(f"{other.pid}\n")
        assert stack_status(settings)["smtp"]["state"] == "stopped"
        pid_file(settings, "smtp").write_text(f"{other.pid}\n")
        stack_down(settings)
        assert not pid_file(settings, "smtp").exists()
        assert other.poll() is None  # left alone
    finally:
        other.kill()
        other.wait()


def test_process_that_dies_at_start_is_reported_with_exit_code_and_log(settings: Settings) -> None:
    # A file where the mail folder should be: the sink cannot create its folder and exits 1.
    settings.home.mkdir(parents=True)
    settings.mail_dir.write_text("not a folder")
    with pytest.raises(StackError) as info:
        stack_up(settings, parts=["smtp"])
    message = str(info.value)
    assert "'smtp'" in message
    assert "exited with code 1 before it answered its health check" in message
    assert str(settings.log_dir / "smtp.log") in message
    assert "cannot start the mail sink" in message  # the log tail
    assert not pid_file(settings, "smtp").exists()


# ---------------------------------------------------------------- a real part: up, up again, down


def test_smtp_part_up_twice_then_down(settings: Settings) -> None:
    try:
        stack_up(settings, parts=["smtp"])
        pid = read_pid(settings, "smtp")
        assert pid is not None
        assert pid_alive(pid)
        status = stack_status(settings)["smtp"]
        assert (status["state"], status["healthy"], status["pid"]) == ("running", True, pid)
        assert status["url"] == f"smtp://127.0.0.1:{settings.smtp_port}"

        stack_up(settings, parts=["smtp"])  # harmless: same process
        assert read_pid(settings, "smtp") == pid

        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "a@localhost", "b@localhost", "through the stack"
        msg.set_content("hello")
        with smtplib.SMTP("127.0.0.1", settings.smtp_port, timeout=10) as client:
            client.send_message(msg)
        assert [m["Subject"] for m in read_mail(settings.mail_dir)] == ["through the stack"]
    finally:
        stack_down(settings)
    assert not pid_alive(pid)
    assert not pid_file(settings, "smtp").exists()
    assert stack_status(settings)["smtp"]["state"] == "stopped"
    assert not port_in_use("127.0.0.1", settings.smtp_port)
    stack_down(settings)  # idempotent


# ---------------------------------------------------------------- the CLI


def test_cli_env_prints_shell_exports(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["stack", "env"]) == 0
    out = capsys.readouterr().out
    exported = {}
    for line in out.splitlines():
        if line.startswith("export ") and not line.startswith("export PATH="):
            key, _, value = line.removeprefix("export ").partition("=")
            exported[key] = shlex.split(value)[0]
    assert exported == airflow_env(settings)
    assert f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"' in out


def test_cli_reports_stack_errors_on_stderr_with_exit_code_1(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", settings.smtp_port))
        taken.listen()
        assert cli.main(["stack", "up", "--parts", "smtp"]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("ct: error: stack part 'smtp' cannot start")


def test_cli_status_lists_every_part(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["stack", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert list(status) == list(PARTS)
    assert {s["state"] for s in status.values()} == {"stopped"}
