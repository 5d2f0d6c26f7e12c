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
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin,viewer:viewer"
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
    assert list(stored) == ["admin", "viewer"]  # the read-only login for on-call
    password = airflow_password(settings)
    assert stored["admin"] == password
    assert stored["viewer"] == airflow_password(settings, "viewer") != password
    assert password not in ("admin", "", "password")
    assert len(password) >= 16
    assert len(stored["viewer"]) >= 16
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin,viewer:viewer"
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


# ---------------------------------------------------------------- supervision: restarts, status, down


def _state(settings: Settings, part: str) -> dict:
    from continuous_training.ops.stack.process import part_state

    return part_state(settings, part) or {}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _wait_for(predicate, timeout: float = 30.0, what: str = "a condition"):
    from services import wait_until

    return wait_until(predicate, timeout, what, interval=0.1)


def test_a_part_that_dies_is_restarted_by_its_supervisor_and_status_counts_it(settings: Settings) -> None:
    import os
    import signal

    try:
        stack_up(settings, parts=["smtp"])
        supervisor = read_pid(settings, "smtp")
        child = _state(settings, "smtp")["child_pid"]
        assert child != supervisor
        os.kill(child, signal.SIGKILL)
        _wait_for(
            lambda: (
                _state(settings, "smtp").get("restarts") == 1 and stack_status(settings)["smtp"]["healthy"]
            ),
            what="the restarted sink",
        )
        status = stack_status(settings)["smtp"]
        assert (status["state"], status["pid"], status["restarts"]) == ("running", supervisor, 1)
        assert status["last_exit"].startswith("killed by SIGKILL after")
        assert "killed by SIGKILL" in (settings.log_dir / "smtp.log").read_text()
        assert _state(settings, "smtp")["child_pid"] not in (None, child)
    finally:
        stack_down(settings)
    assert stack_status(settings)["smtp"]["state"] == "stopped"


def test_status_shows_a_part_its_supervisor_gave_up_on_as_failed_until_down(settings: Settings) -> None:
    from continuous_training.ops.stack.process import state_file
    from continuous_training.ops.stack.supervise import write_state

    settings.run_dir.mkdir(parents=True)
    reason = "exited with code 1 after 0.3 s; gave up after 5 restart(s) within 300 s"
    write_state(
        state_file(settings, "mlflow"),
        {"state": "failed", "supervisor_pid": _dead_pid(), "restarts": 5, "last_reason": reason},
    )
    status = stack_status(settings)["mlflow"]
    assert (status["state"], status["restarts"], status["healthy"]) == ("failed", 5, False)
    assert reason in status["health"]
    assert status["last_reason"] == reason
    stack_down(settings)
    assert stack_status(settings)["mlflow"]["state"] == "stopped"


def test_up_fails_fast_on_a_part_that_dies_at_start_and_stops_its_supervisor(settings: Settings) -> None:
    import time

    settings.home.mkdir(parents=True)
    settings.mail_dir.write_text("not a folder")
    started = time.monotonic()
    with pytest.raises(StackError, match="exited with code 1 before it answered its health check"):
        stack_up(settings, parts=["smtp"])
    assert time.monotonic() - started < 20  # no restart loop inside `up`
    state = _state(settings, "smtp")
    assert state["restarts"] == 0
    assert state["state"] == "stopped"
    assert not _alive(state["supervisor_pid"])


def _orphan(env: dict[str, str], cwd: Path) -> int:
    """A sleeper that is nobody's child here (double fork): as a process left behind by a dead part."""
    code = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], "
        "start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, "
        "stderr=subprocess.DEVNULL)\n"
        "print(p.pid)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, check=True
    )
    return int(out.stdout)


def test_down_stops_the_whole_session_and_what_the_part_left_behind(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import os

    from continuous_training.ops.stack.parts import _Part
    from continuous_training.ops.stack.process import PART_VAR, _launch

    pids = tmp_path / "pids"
    pids.mkdir()
    # A part (the sink's marker on its command line) whose child starts a task runner in a process
    # group of its own, and a daemon that leaves the session: as Airflow's task supervisors do.
    child = f"""
import os, subprocess, sys, time
py = sys.executable
runner = subprocess.Popen([py, "-c", "import time; time.sleep(120)"], process_group=0)
daemon = subprocess.Popen([py, "-c", "import os, time; os.setsid(); time.sleep(120)"])
open({str(pids / "runner")!r}, "w").write(str(runner.pid))
open({str(pids / "daemon")!r}, "w").write(str(daemon.pid))
time.sleep(120)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CT_")}
    env["CT_HOME"] = str(settings.home)
    settings.home.mkdir(parents=True)
    spec = _Part("smtp", [sys.executable, "-c", child, "continuous_training.ops.mailsink"], env, None, None)
    _launch(settings, spec)
    runner = int(_wait_for(lambda: (pids / "runner").exists() and (pids / "runner").read_text()))
    daemon = int(_wait_for(lambda: (pids / "daemon").exists() and (pids / "daemon").read_text()))
    other_home = tmp_path / "other-home"
    other_home.mkdir()
    left_by_part = _orphan({**env, PART_VAR: "airflow-scheduler"}, tmp_path)
    left_in_home = _orphan({k: v for k, v in env.items() if k != "CT_HOME"}, settings.home)
    client = _orphan(env, tmp_path)  # CT_HOME set, but not started by a part (a shell, `ct demo`)
    other = _orphan({**env, "CT_HOME": str(other_home), PART_VAR: "smtp"}, other_home)
    try:
        with caplog.at_level(logging.WARNING, logger="continuous_training.ops.stack.control"):
            stack_down(settings)
        for pid in (runner, daemon, left_by_part, left_in_home):
            assert not _alive(pid), pid
        assert _alive(client)
        assert _alive(other)
        warned = caplog.text
        for pid in (daemon, left_by_part, left_in_home):
            assert f"pid {pid} was left behind" in warned, pid
        assert f"pid {client} " not in warned
    finally:
        for pid in (client, other, left_by_part, left_in_home, runner, daemon):
            with __import__("contextlib").suppress(ProcessLookupError):
                os.kill(pid, 9)


def test_a_part_whose_supervisor_was_killed_shows_orphaned_and_down_stops_it(settings: Settings) -> None:
    import os
    import signal

    from continuous_training.ops.stack.parts import _Part
    from continuous_training.ops.stack.process import _launch

    env = {k: v for k, v in os.environ.items() if not k.startswith("CT_")}
    env["CT_HOME"] = str(settings.home)
    settings.home.mkdir(parents=True)
    code = "import time; time.sleep(120)"
    supervisor = _launch(
        settings,
        _Part("smtp", [sys.executable, "-c", code, "continuous_training.ops.mailsink"], env, None, None),
    )
    child = _wait_for(lambda: _state(settings, "smtp").get("child_pid"), what="the child")
    os.kill(supervisor, signal.SIGKILL)
    _wait_for(lambda: not _alive(supervisor), what="the supervisor's end")
    try:
        status = stack_status(settings)["smtp"]
        assert status["state"] == "orphaned"
        assert str(child) in status["health"]
        assert pid_file(settings, "smtp").exists()  # kept, so that down finds the session
        stack_down(settings, parts=["smtp"])
        assert not _alive(child)
        assert stack_status(settings)["smtp"]["state"] == "stopped"
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_the_parts_that_exit_without_postgresql_wait_for_it_instead_of_spending_restarts(tmp_path) -> None:
    from continuous_training.ops.stack.parts import parts_of, restart_waits_for
    from continuous_training.settings import load_settings

    home = {"CT_HOME": str(tmp_path / "home")}
    embedded = load_settings(home)
    assert not any(restart_waits_for(embedded, part) for part in parts_of(embedded))

    ours = load_settings({**home, "CT_DEPLOYMENT": "cluster", "CT_POSTGRES_PORT": "15433"})
    waits = {part: restart_waits_for(ours, part) for part in parts_of(ours)}
    database = ("127.0.0.1:15433",)
    assert {part for part, w in waits.items() if w == database} == {
        "mlflow",
        "airflow-api-server",
        "airflow-scheduler-1",
        "airflow-scheduler-2",
        "airflow-dag-processor",
        "airflow-triggerer",
    }
    assert not any(w for part, w in waits.items() if w != database and w)

    theirs = load_settings(
        {
            **home,
            "CT_DEPLOYMENT": "cluster",
            "CT_POSTGRES_URL": "postgresql://admin:pw@db.internal:6432/postgres",
        }
    )
    assert restart_waits_for(theirs, "airflow-scheduler-1") == ("db.internal:6432",)
    assert restart_waits_for(theirs, "airflow-worker-1") == ()
