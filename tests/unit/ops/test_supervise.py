"""The part supervisor (``python -m continuous_training.ops.stack.supervise``), on real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from continuous_training.ops.stack.supervise import (
    EXIT_GAVE_UP,
    backoff_s,
    describe_exit,
    parse_supervised,
    read_state,
    supervise_command,
    write_state,
)


def _wait(predicate, timeout: float = 20.0, what: str = "a condition"):
    from services import wait_until

    return wait_until(predicate, timeout, what, interval=0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


class Supervised:
    """A supervisor started as ``_launch`` starts one: own session, output in a log file."""

    def __init__(self, tmp_path: Path, script: str, *extra: str) -> None:
        self.state_path = tmp_path / "run" / "part.state"
        self.log_path = tmp_path / "part.log"
        self.script = tmp_path / "child.py"
        self.script.write_text(textwrap.dedent(script))
        command = supervise_command("part", self.state_path, [sys.executable, str(self.script)])
        command[command.index("--") : command.index("--")] = list(extra)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=tmp_path,
                start_new_session=True,
            )

    @property
    def state(self) -> dict:
        return read_state(self.state_path) or {}

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def supervised(tmp_path: Path):
    started: list[Supervised] = []

    def start(script: str, *extra: str) -> Supervised:
        sup = Supervised(tmp_path, script, *extra)
        started.append(sup)
        return sup

    yield start
    for sup in started:
        sup.stop()


SLEEPER = """
    import time
    print("child up", flush=True)
    time.sleep(600)
"""


# ---------------------------------------------------------------- pure parts


def test_describe_exit_names_the_code_or_the_signal_and_the_uptime() -> None:
    assert describe_exit(1, 3.24)["reason"] == "exited with code 1 after 3.2 s"
    killed = describe_exit(-signal.SIGKILL, 812.0)
    assert killed["reason"] == "killed by SIGKILL after 812.0 s"
    assert (killed["code"], killed["signal"]) == (None, "SIGKILL")


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_s(n, cap=30) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_command_line_keeps_the_child_command_for_the_marker_check(tmp_path: Path) -> None:
    child = ["/venv/bin/airflow", "scheduler", "--skip-serve-logs"]
    command = supervise_command("airflow-scheduler", tmp_path / "s.state", child, python="/venv/bin/python")
    assert command[:3] == ["/venv/bin/python", "-m", "continuous_training.ops.stack.supervise"]
    assert command[-3:] == child
    assert parse_supervised(command) == ("airflow-scheduler", child)
    assert parse_supervised(child) is None


def test_state_file_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "run" / "x.state"
    write_state(path, {"state": "running", "restarts": 0})
    write_state(path, {"state": "restarting", "restarts": 1})
    assert read_state(path)["state"] == "restarting"
    assert "updated_at" in json.loads(path.read_text())
    assert [p.name for p in path.parent.iterdir()] == ["x.state"]  # no temp file left
    path.write_text("{half")
    assert read_state(path) is None


# ---------------------------------------------------------------- restarts


def test_a_child_that_keeps_dying_is_restarted_then_given_up(supervised) -> None:
    sup = supervised('import sys\nprint("boom", flush=True)\nsys.exit(7)\n', "--max-restarts", "2")
    assert sup.proc.wait(timeout=60) == EXIT_GAVE_UP
    state = sup.state
    assert state["state"] == "failed"
    assert (state["restarts"], state["exits"]) == (2, 3)
    assert state["last_exit"]["code"] == 7
    assert "gave up after 2 restart(s)" in state["last_reason"]
    log = sup.log
    assert log.count("boom") == 3
    assert "exited with code 7 after" in log
    assert "restarting in 1 s" in log
    assert "restarting in 2 s" in log


def test_a_killed_child_is_restarted_and_the_reason_logged(supervised) -> None:
    sup = supervised(SLEEPER)
    first = _wait(lambda: sup.state.get("child_pid"), what="the first child")
    os.kill(first, signal.SIGKILL)
    second = _wait(
        lambda: (pid := sup.state.get("child_pid")) not in (None, first) and pid, what="the restarted child"
    )
    assert _alive(second)
    state = sup.state
    assert (state["state"], state["restarts"], state["exits"]) == ("running", 1, 1)
    assert state["last_exit"]["signal"] == "SIGKILL"
    assert "killed by SIGKILL after" in sup.log
    assert sup.proc.poll() is None


def test_what_a_dead_child_left_behind_is_stopped_before_the_restart(supervised, tmp_path: Path) -> None:
    # Like a killed scheduler's LocalExecutor workers: the child forks a worker, then dies.
    script = f"""
        import os, subprocess, sys, time
        marker = {str(tmp_path / "worker.pid")!r}
        if not os.path.exists(marker):
            worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            open(marker, "w").write(str(worker.pid))
            os._exit(1)
        time.sleep(600)
    """
    sup = supervised(script)
    worker = int(_wait(lambda: (tmp_path / "worker.pid").exists() and (tmp_path / "worker.pid").read_text()))
    _wait(lambda: sup.state.get("restarts") == 1, what="the restart")
    assert not _alive(worker)
    assert "left in the session" in sup.log


# ---------------------------------------------------------------- stop


def test_sigterm_stops_the_child_and_its_own_process_groups_without_restart(
    supervised, tmp_path: Path
) -> None:
    # Like a task runner: a grandchild in a process group of its own, in the same session.
    script = f"""
        import os, signal, subprocess, sys, time
        runner = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(600)"], process_group=0
        )
        open({str(tmp_path / "runner.pid")!r}, "w").write(str(runner.pid))
        def bye(signum, frame):
            open({str(tmp_path / "terms")!r}, "a").write("TERM\\n")
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        time.sleep(600)
    """
    sup = supervised(script)
    runner = int(_wait(lambda: (tmp_path / "runner.pid").exists() and (tmp_path / "runner.pid").read_text()))
    child = sup.state["child_pid"]
    assert os.getpgid(runner) != os.getpgid(child)
    assert sup.stop() == 0
    assert (tmp_path / "terms").read_text() == "TERM\n"  # forwarded exactly once
    assert not _alive(child)
    assert not _alive(runner)
    state = sup.state
    assert (state["state"], state["restarts"]) == ("stopped", 0)
    assert "SIGTERM received: stopping, no restart" in sup.log


def test_a_child_that_ignores_sigterm_is_killed_after_the_stop_timeout(supervised) -> None:
    script = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stubborn", flush=True)
        time.sleep(600)
    """
    sup = supervised(script, "--stop-timeout", "1")
    child = _wait(lambda: "stubborn" in sup.log and sup.state.get("child_pid"), what="the child")
    started = time.monotonic()
    assert sup.stop() == 0
    assert time.monotonic() - started < 15
    assert not _alive(child)
    assert "SIGKILL" in sup.log
    assert sup.state["last_exit"]["signal"] == "SIGKILL"


def test_a_stop_during_the_backoff_ends_without_a_restart(supervised) -> None:
    sup = supervised("import sys\nsys.exit(2)\n", "--max-backoff", "30")
    _wait(lambda: sup.state.get("state") == "restarting", what="the backoff")
    time.sleep(1.5)  # inside the second (2 s) backoff, or the first restart's child already died
    assert sup.stop() == 0
    assert sup.state["state"] == "stopped"


# ---------------------------------------------------------------- dependencies


def test_an_exit_while_a_dependency_refuses_connections_waits_for_it_with_a_fresh_budget(
    supervised, tmp_path: Path
) -> None:
    # Like a scheduler without its database: the child exits at once while the port refuses, and
    # would spend its one allowed restart in a second; the supervisor waits for the port instead.
    import socket

    from services import free_port

    port = free_port()
    script = f"""
        import socket, sys, time
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=1).close()
        except OSError:
            print("no database", flush=True)
            sys.exit(1)
        print("child up", flush=True)
        time.sleep(600)
    """
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    try:
        sup = supervised(script, "--max-restarts", "1", "--wait-for", f"127.0.0.1:{port}")
        first = _wait(lambda: "child up" in sup.log and sup.state.get("child_pid"), what="the first child")
    finally:
        listener.close()  # the database goes away...
    os.kill(first, signal.SIGKILL)  # ...and the part dies with it
    _wait(lambda: sup.state.get("state") == "waiting", what="the supervisor waiting")
    time.sleep(3)  # three polls: no restart while the port refuses
    state = sup.state
    assert (state["state"], state["restarts"], state["child_pid"]) == ("waiting", 0, None)
    assert f"127.0.0.1:{port} refused connections" in state["last_reason"]
    with socket.create_server(("127.0.0.1", port)):
        second = _wait(lambda: sup.state.get("child_pid"), what="the child started again")
        _wait(lambda: sup.log.count("child up") == 2, what="the second child up")
    assert second != first
    assert sup.state["restarts"] == 1
    assert f"127.0.0.1:{port} accepts connections again after" in sup.log
    assert sup.proc.poll() is None
    assert sup.stop() == 0


def test_wait_for_takes_host_and_port_only() -> None:
    from continuous_training.ops.stack.supervise import parse_address

    assert parse_address("127.0.0.1:5433") == ("127.0.0.1", 5433)
    assert parse_address("[::1]:5433") == ("::1", 5433)
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        parse_address("localhost")
