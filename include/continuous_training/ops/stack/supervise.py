"""The supervisor of one part of the embedded stack: restart it when it dies, and say why.

``python -m continuous_training.ops.stack.supervise --part NAME --state FILE [--max-restarts N]
[--window S] [--stop-timeout S] -- CMD...``

:func:`~continuous_training.ops.stack.process._launch` starts this in a session of its own (so the
supervisor's pid is the part's pid, session and process group); CMD runs as its child in that same
session and group, with the same stdout (the part's log file). The supervisor also makes itself the
"child subreaper" (Linux), so a process its child leaves behind is re-parented to it, not to init.

Restart policy. When the child exits and no stop was asked for, the supervisor logs the exit code or
the signal and the uptime, stops what the child left behind in the session (SIGTERM, then SIGKILL after
10 s: the orphaned LocalExecutor workers of a killed scheduler, the uvicorn workers of a dead master
holding the port), waits 1, 2, 4, ... s (capped at :data:`MAX_BACKOFF_S`; reset once the child ran
for ``--window`` seconds) and starts CMD again. More than ``--max-restarts`` restarts within
``--window`` seconds and it gives up: state ``failed``, exit code :data:`EXIT_GAVE_UP`.

Dependencies. ``--wait-for HOST:PORT`` (repeatable) names a service the child cannot run without (the
Airflow parts and MLflow exit within seconds when PostgreSQL refuses connections). When the child
exits while one of them refuses TCP connections, the supervisor waits (state ``waiting``, checking
every :data:`DEPENDENCY_POLL_S` seconds, for as long as it takes) until all of them accept, then
starts the child with a fresh restart budget: that exit was the dependency's outage, not the part's
fault, and a database restart of any length must not make its clients give up.

Stop. On SIGTERM or SIGINT the supervisor sends its child ``--child-stop-signal`` (SIGTERM; SIGINT for PostgreSQL's fast shutdown) (and the child's own process
group, if it made one), waits up to ``--stop-timeout`` seconds, then stops the rest of the session (the
task runners, which run in process groups of their own) the same way, SIGKILLs whatever is left and
exits 0 with state ``stopped``. It never restarts after a stop was asked.

State file. ``$CT_HOME/run/<part>.state``, JSON, replaced atomically on every change: ``part``,
``state`` (``running``, ``restarting``, ``waiting``, ``failed``, ``stopping``, ``stopped``), ``supervisor_pid``,
``child_pid``, ``restarts`` (since the supervisor started), ``exits`` (child exits, the last one
included when it was not restarted), ``last_exit`` (``code``, ``signal``, ``uptime_s``, ``at``),
``last_reason`` (a sentence), ``started_at``, ``child_started_at``, ``updated_at``. ``ct stack
status`` reads it; ``ct stack up`` reads it to fail fast when a part's process exits before its first
healthy answer (see :func:`~continuous_training.ops.stack.health._wait_healthy`).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: Restarts allowed within ``--window`` seconds before the supervisor gives up.
MAX_RESTARTS = 5
WINDOW_S = 300.0
#: Backoff before restart n: ``min(MAX_BACKOFF_S, 2 ** (n - 1))`` seconds.
MAX_BACKOFF_S = 30.0
#: Seconds the child gets after SIGTERM before the rest of the session is stopped and it is killed.
STOP_TIMEOUT_S = 40.0
#: Seconds what a dead child left behind gets after SIGTERM before SIGKILL.
LEFTOVER_TIMEOUT_S = 10.0
EXIT_GAVE_UP = 3
#: Seconds between two checks of a ``--wait-for`` dependency while it is down.
DEPENDENCY_POLL_S = 1.0
MODULE = "continuous_training.ops.stack.supervise"

_PR_SET_CHILD_SUBREAPER = 36


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _say(part: str, message: str) -> None:
    """A line in the part's log (the supervisor's stdout is the part's log file)."""
    print(f"[ct-supervise {_now()} {part}] {message}", flush=True)


def describe_exit(returncode: int, uptime_s: float) -> dict[str, Any]:
    """The exit of a child as the state file records it.

    Args:
        returncode: ``Popen.returncode`` style: the exit code, or minus the signal number.
        uptime_s: seconds the child ran.

    Returns:
        ``{"code", "signal", "uptime_s", "at", "reason"}``; ``reason`` is a sentence such as
        "exited with code 1 after 3.2 s" or "killed by SIGKILL after 812.0 s".
    """
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        code, sig, how = None, name, f"killed by {name}"
    else:
        code, sig, how = returncode, None, f"exited with code {returncode}"
    return {
        "code": code,
        "signal": sig,
        "uptime_s": round(uptime_s, 1),
        "at": _now(),
        "reason": f"{how} after {uptime_s:.1f} s",
    }


def backoff_s(restart: int, cap: float = MAX_BACKOFF_S) -> float:
    """Seconds to wait before restart number ``restart`` (1, 2, 4, ... up to ``cap``)."""
    return float(min(cap, 2 ** max(0, restart - 1)))


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Replace the state file atomically (a reader sees the old or the new file, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**state, "updated_at": _now()}, indent=1) + "\n")
    os.replace(tmp, path)


def read_state(path: Path) -> dict[str, Any] | None:
    """The state file's content, or None when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _session_members(sid: int, exclude: int) -> list[int]:
    """Live (non-zombie) processes of session ``sid`` other than ``exclude``."""
    members = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == exclude:
                continue
            try:
                fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] not in ("Z", "X") and int(fields[3]) == sid:
                members.append(int(entry.name))
    return members


def refusing(addresses: list[tuple[str, int]], timeout_s: float = 1.0) -> list[str]:
    """The ``host:port`` of ``addresses`` that do not accept a TCP connection within ``timeout_s``."""
    down = []
    for host, port in addresses:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                pass
        except OSError:
            down.append(f"{host}:{port}")
    return down


def parse_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as ``(host, port)``; ValueError naming what was expected."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--wait-for: expected HOST:PORT, found {value!r}")
    return host.strip("[]"), int(port)


def _reap() -> None:
    """Collect exited descendants re-parented to us (we are their subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class Supervisor:
    """Runs one part's command, restarts it, and records its state (see the module)."""

    def __init__(
        self,
        part: str,
        state_file: Path,
        command: list[str],
        max_restarts: int = MAX_RESTARTS,
        window_s: float = WINDOW_S,
        stop_timeout_s: float = STOP_TIMEOUT_S,
        max_backoff_s: float = MAX_BACKOFF_S,
        child_stop_signal: signal.Signals = signal.SIGTERM,
        wait_for: list[tuple[str, int]] | None = None,
    ) -> None:
        self.part = part
        self.wait_for = list(wait_for or [])
        self.child_stop_signal = child_stop_signal
        self.state_file = state_file
        self.command = command
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.stop_timeout_s = stop_timeout_s
        self.max_backoff_s = max_backoff_s
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.stop_asked: float | None = None
        self.forwarded: int | None = None
        self.stop_signal = "SIGTERM"
        self.announced = False
        self.child_started = time.monotonic()
        self.restart_times: collections.deque[float] = collections.deque()
        self.state: dict[str, Any] = {
            "part": part,
            "state": "starting",
            "supervisor_pid": os.getpid(),
            "child_pid": None,
            "restarts": 0,
            "exits": 0,
            "last_exit": None,
            "last_reason": None,
            "started_at": _now(),
            "child_started_at": None,
            "command": command,
        }

    # ------------------------------------------------------------------ helpers

    def _save(self, **changes: Any) -> None:
        self.state.update(changes)
        write_state(self.state_file, self.state)

    def _on_signal(self, signum: int, frame: object) -> None:
        # No printing here: a handler that writes while the main loop writes the same file can
        # fail with "reentrant call"; the loops announce the stop (_announce_stop).
        if self.stopping:
            return
        self.stop_signal = signal.Signals(signum).name
        self.stopping = True
        self.stop_asked = time.monotonic()
        self._forward()

    def _announce_stop(self) -> None:
        if self.stopping and not self.announced:
            self.announced = True
            _say(self.part, f"{self.stop_signal} received: stopping, no restart")

    def _forward(self) -> None:
        """The child's stop signal to it, and to its own process group if it made one; once per child."""
        child = self.child
        if child is None or child.returncode is not None or self.forwarded == child.pid:
            return
        self.forwarded = child.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, self.child_stop_signal)
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            pgid = os.getpgid(child.pid)
            if pgid != os.getpgrp():
                os.killpg(pgid, self.child_stop_signal)

    def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once when a stop is asked for."""
        end = time.monotonic() + seconds
        while not self.stopping and (left := end - time.monotonic()) > 0:
            time.sleep(min(0.2, left))

    def _wait_child(self) -> int:
        """Until our child exits (reaping adopted orphans on the way): its returncode.

        Polls (5 times a second) rather than blocking, so that a stop that the child ignores for
        ``stop_timeout_s`` seconds ends in SIGKILL.
        """
        assert self.child is not None
        killed = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # pragma: no cover - the child is ours until we reap it
                return self.child.wait()
            if pid == self.child.pid:
                self.child.returncode = os.waitstatus_to_exitcode(status)
                return self.child.returncode
            if pid != 0:
                continue  # an adopted orphan: reaped, look again at once
            if self.stopping:
                self._announce_stop()
                self._forward()  # a stop that came while the child was being started
            if (
                self.stopping
                and not killed
                and self.stop_asked is not None
                and time.monotonic() - self.stop_asked > self.stop_timeout_s
            ):
                _say(
                    self.part,
                    f"pid {self.child.pid} still running {self.stop_timeout_s:.0f} s after SIGTERM: SIGKILL",
                )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.child.pid, signal.SIGKILL)
                killed = True
            time.sleep(0.2)

    def stop_leftovers(self, timeout_s: float) -> list[int]:
        """SIGTERM every other process of our session, SIGKILL after ``timeout_s``; who was left.

        Returns:
            The pids that were still running when this was called.
        """
        me = os.getpid()
        sid = os.getsid(0)
        left = _session_members(sid, me)
        if not left:
            return []
        names = {}
        for pid in left:
            with contextlib.suppress(OSError):
                names[pid] = (
                    Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()[:120]
                )
        _say(self.part, f"stopping {len(left)} process(es) left in the session: {names}")
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            _reap()
            if not _session_members(sid, me):
                return left
            time.sleep(0.2)
        for pid in _session_members(sid, me):
            _say(self.part, f"pid {pid} still running {timeout_s:.0f} s after SIGTERM: SIGKILL")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and _session_members(sid, me):
            _reap()
            time.sleep(0.1)
        _reap()
        return left

    def _wait_for_dependencies(self, exit_info: dict[str, Any]) -> bool:
        """Wait until every ``--wait-for`` address accepts connections; whether any refused at first."""
        down = refusing(self.wait_for)
        if not down:
            return False
        reason = f"{exit_info['reason']} while {', '.join(down)} refused connections"
        _say(self.part, f"{reason}: waiting for it before restarting (not counted against the restarts)")
        self._save(state="waiting", last_exit=exit_info, last_reason=reason, child_pid=None)
        waited = time.monotonic()
        while not self.stopping and refusing(self.wait_for):
            self._sleep(DEPENDENCY_POLL_S)
        if not self.stopping:
            _say(
                self.part,
                f"{', '.join(down)} accepts connections again after {time.monotonic() - waited:.1f} s",
            )
        return True

    def _start_child(self) -> None:
        self.child = subprocess.Popen(self.command, stdin=subprocess.DEVNULL)
        self.child_started = time.monotonic()
        self._save(state="running", child_pid=self.child.pid, child_started_at=_now())
        _say(self.part, f"started pid {self.child.pid}: {' '.join(self.command)}")

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        """Supervise until stopped (exit 0) or until the restarts are spent (:data:`EXIT_GAVE_UP`)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        with contextlib.suppress(AttributeError, OSError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        try:
            self._start_child()
        except OSError as exc:
            reason = f"cannot start {self.command[0]}: {exc}"
            _say(self.part, reason)
            self._save(state="failed", last_reason=reason, exits=1)
            return EXIT_GAVE_UP
        while True:
            returncode = self._wait_child()
            uptime = time.monotonic() - self.child_started
            exit_info = describe_exit(returncode, uptime)
            self.state["exits"] += 1
            if self.stopping:
                self._announce_stop()
                _say(self.part, f"pid {self.child.pid} {exit_info['reason']} (stop requested)")
                self._save(state="stopping", last_exit=exit_info, child_pid=None)
                self.stop_leftovers(LEFTOVER_TIMEOUT_S)
                self._save(state="stopped")
                return 0
            _say(self.part, f"pid {self.child.pid} {exit_info['reason']}: unexpected")
            self.stop_leftovers(LEFTOVER_TIMEOUT_S)
            if self._wait_for_dependencies(exit_info):
                self.restart_times.clear()  # the dependency's outage, not the part's: a fresh budget
            if self.stopping:
                self._announce_stop()
                self._save(state="stopped")
                return 0
            now = time.monotonic()
            if uptime >= self.window_s:
                self.restart_times.clear()  # a long healthy run: start the backoff afresh
            while self.restart_times and now - self.restart_times[0] > self.window_s:
                self.restart_times.popleft()
            if len(self.restart_times) >= self.max_restarts:
                reason = (
                    f"{exit_info['reason']}; gave up after {len(self.restart_times)} restart(s) "
                    f"within {self.window_s:.0f} s"
                )
                _say(self.part, reason)
                self._save(state="failed", last_exit=exit_info, last_reason=reason, child_pid=None)
                return EXIT_GAVE_UP
            delay = backoff_s(len(self.restart_times) + 1, self.max_backoff_s)
            self._save(
                state="restarting",
                last_exit=exit_info,
                last_reason=exit_info["reason"],
                child_pid=None,
            )
            _say(
                self.part,
                f"restarting in {delay:.0f} s (restart {len(self.restart_times) + 1} of at most "
                f"{self.max_restarts} within {self.window_s:.0f} s)",
            )
            self._sleep(delay)
            if self.stopping:
                self._announce_stop()
                self._save(state="stopped")
                return 0
            self.restart_times.append(time.monotonic())
            self.state["restarts"] += 1
            try:
                self._start_child()
            except OSError as exc:
                reason = f"cannot restart {self.command[0]}: {exc}"
                _say(self.part, reason)
                self._save(state="failed", last_reason=reason)
                return EXIT_GAVE_UP


def supervise_command(
    part: str,
    state_file: Path,
    command: list[str],
    python: str | None = None,
    max_restarts: int = MAX_RESTARTS,
    window_s: float = WINDOW_S,
    stop_signal: str = "SIGTERM",
    wait_for: Iterable[str] = (),
) -> list[str]:
    """The command line that runs ``command`` under a supervisor.

    ``stop_signal`` is what the supervisor sends its child to stop it (SIGTERM; PostgreSQL's fast
    shutdown is SIGINT); ``wait_for``, ``HOST:PORT`` of the services it cannot run without.

    It contains ``command`` unchanged after ``--``, so a check of the part's command line (the
    cmdline markers of :mod:`~continuous_training.ops.stack.parts`) still matches.
    """
    return [
        python or sys.executable,
        "-m",
        MODULE,
        "--part",
        part,
        "--state",
        str(state_file),
        "--max-restarts",
        str(max_restarts),
        "--window",
        f"{window_s:g}",
        "--child-stop-signal",
        stop_signal,
        *(arg for address in wait_for for arg in ("--wait-for", address)),
        "--",
        *command,
    ]


def parse_supervised(cmdline: list[str]) -> tuple[str, list[str]] | None:
    """(part, child command) of a supervisor's command line, or None if it is not one."""
    if MODULE not in cmdline or "--" not in cmdline:
        return None
    head = cmdline[: cmdline.index("--")]
    try:
        part = head[head.index("--part") + 1]
    except (ValueError, IndexError):
        return None
    return part, cmdline[cmdline.index("--") + 1 :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("--part", required=True)
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--max-restarts", type=int, default=MAX_RESTARTS)
    parser.add_argument("--window", type=float, default=WINDOW_S)
    parser.add_argument("--stop-timeout", type=float, default=STOP_TIMEOUT_S)
    parser.add_argument("--max-backoff", type=float, default=MAX_BACKOFF_S)
    parser.add_argument(
        "--child-stop-signal",
        default="SIGTERM",
        choices=["SIGTERM", "SIGINT", "SIGQUIT"],
        help="what stops the child cleanly",
    )
    parser.add_argument(
        "--wait-for",
        action="append",
        default=[],
        type=parse_address,
        metavar="HOST:PORT",
        help="a service the child needs: after an exit while it is down, wait for it (repeatable)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command after --")
    supervisor = Supervisor(
        args.part,
        args.state,
        command,
        max_restarts=args.max_restarts,
        window_s=args.window,
        stop_timeout_s=args.stop_timeout,
        max_backoff_s=args.max_backoff,
        child_stop_signal=signal.Signals[args.child_stop_signal],
        wait_for=args.wait_for,
    )
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
