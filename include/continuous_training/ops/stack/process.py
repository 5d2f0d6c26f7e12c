"""Processes of the embedded stack: pid files, logs, liveness (guarded against recycled pids), ports.

Every part runs under its supervisor (:mod:`~continuous_training.ops.stack.supervise`), started by
:func:`_launch` in a session of its own (so session id = process group id = the supervisor's pid), with
its output in ``$CT_HOME/logs/<part>.log``, its pid in ``$CT_HOME/run/<part>.pid`` and the supervisor's
state in ``$CT_HOME/run/<part>.state``. :func:`session_members` and :func:`home_processes` find what
``ct stack down`` must stop: a part's whole session (task runners make process groups of their own but
stay in it), and anything else still running for this ``CT_HOME``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from continuous_training.ops.stack.env import bin_dir
from continuous_training.ops.stack.parts import _CMDLINE_MARKER, _Part
from continuous_training.ops.stack.supervise import (
    parse_supervised,
    read_state,
    supervise_command,
)
from continuous_training.settings import Settings

log = logging.getLogger(__name__)

_LOG_TAIL_LINES = 20
#: Set by :func:`_launch` in every part's environment (value: the part): what tells a process the
#: stack started from a client that only has ``CT_HOME`` set.
PART_VAR = "CT_STACK_PART"
#: Seconds a process left behind by a part gets after SIGTERM in ``ct stack down``.
LEFT_BEHIND_TIMEOUT_S = 10.0

#: Processes started by this Python process, so their exit codes can be read (and zombies reaped).
_LAUNCHED: dict[int, subprocess.Popen[bytes]] = {}
#: Supervisors launched here whose part has not been healthy yet: every exit of their child counts.
_FRESH: set[int] = set()


def pid_file(settings: Settings, part: str) -> Path:
    """``$CT_HOME/run/<part>.pid``."""
    return settings.run_dir / f"{part}.pid"


def state_file(settings: Settings, part: str) -> Path:
    """``$CT_HOME/run/<part>.state``: the supervisor's JSON state of the part."""
    return settings.run_dir / f"{part}.state"


def part_state(settings: Settings, part: str) -> dict | None:
    """The supervisor's state of a part (see :mod:`~continuous_training.ops.stack.supervise`), or None."""
    return read_state(state_file(settings, part))


def log_file(settings: Settings, part: str) -> Path:
    """``$CT_HOME/logs/<part>.log``."""
    return settings.log_dir / f"{part}.log"


def read_pid(settings: Settings, part: str) -> int | None:
    """The pid recorded for a part, or None without a (valid) pid file."""
    try:
        text = pid_file(settings, part).read_text().strip()
    except FileNotFoundError:
        return None
    try:
        pid = int(text)
    except ValueError:
        log.warning("%s: expected a process id, found %r; ignoring it", pid_file(settings, part), text)
        return None
    return pid if pid > 0 else None


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state is [0], ppid [1], pgid [2])."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (reaping it if it is our child).

    Args:
        pid: a process id.

    Returns:
        True if the process runs.
    """
    proc = _LAUNCHED.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            return False
    else:
        with contextlib.suppress(ChildProcessError, OSError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _proc_stat(pid)
    return not (stat is not None and stat[0] in ("Z", "X"))


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _is_our_process(part: str, pid: int) -> bool:
    """Whether ``pid`` is alive and still the part we started, not a recycled pid.

    A supervisor qualifies when its ``--part`` is ``part`` and its child's command has the part's
    marker; a process started without a supervisor (by an older version) when its command line has
    the marker.
    """
    if not pid_alive(pid):
        return False
    with contextlib.suppress(OSError):
        # Every part was started with start_new_session=True, so it leads its own group.
        if os.getpgid(pid) != pid:
            return False
    cmdline = _cmdline(pid)
    if cmdline is None:
        return True  # no /proc to check against (not Linux): trust the process group check
    supervised = parse_supervised(cmdline)
    if supervised is not None:
        name, child = supervised
        return name == part and _CMDLINE_MARKER[part] in " ".join(child)
    return _CMDLINE_MARKER[part] in " ".join(cmdline)


def is_supervised(pid: int) -> bool:
    """Whether ``pid`` runs :mod:`~continuous_training.ops.stack.supervise`."""
    cmdline = _cmdline(pid)
    return cmdline is not None and parse_supervised(cmdline) is not None


def _running_pid(settings: Settings, part: str) -> int | None:
    """The pid of the part if its pid file names a live process of that part; stale files go.

    A pid file whose supervisor is gone while processes of its session still run (the supervisor was
    killed) is kept, so that ``down`` (or the next launch) can stop them: see :func:`orphaned`.
    """
    pid = read_pid(settings, part)
    path = pid_file(settings, part)
    if pid is not None and _is_our_process(part, pid):
        return pid
    if pid is not None and orphaned(settings, pid):
        return None
    if path.exists():
        log.info("%s: removing stale pid file %s (pid %s is gone)", part, path, pid)
        path.unlink(missing_ok=True)
    return None


def orphaned(settings: Settings, pid: int) -> list[int]:
    """Processes of this stack still in session ``pid`` although its leader (the supervisor) is gone.

    Only processes that belong to this ``CT_HOME`` (see :func:`home_processes`) count: a session id
    is not reused while the session has members, but a new process may later lead a session of the
    same id.
    """
    if pid_alive(pid):
        return []
    home = settings.home.resolve()
    marker = f"CT_HOME={home}".encode()
    return [member for member in session_members(pid) if _belongs_to(member, home, marker)]


def port_in_use(host: str, port: int) -> bool:
    """Whether ``host:port`` is already bound by some process (listening or not).

    Binds a test socket with ``SO_REUSEADDR`` so connections of a just-stopped server lingering in
    TIME_WAIT do not count as taken.

    Args:
        host: the address to test.
        port: the TCP port.

    Returns:
        True if the bind fails with "address in use".
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _launch(settings: Settings, spec: _Part) -> int:
    """Start a part under its supervisor, in a session of its own; the supervisor's pid."""
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    path = log_file(settings, spec.name)
    state = state_file(settings, spec.name)
    previous = read_pid(settings, spec.name)
    if previous is not None and (left := orphaned(settings, previous)):
        # The part's earlier supervisor was killed and left its child running: a second scheduler
        # (or a server on the same port) must not start beside it.
        log.warning("%s: stopping %s left running by its earlier supervisor %s", spec.name, left, previous)
        stop_processes(left, timeout=LEFT_BEHIND_TIMEOUT_S)
    # A state left by an earlier run would tell `up` about exits of another process.
    state.unlink(missing_ok=True)
    command = supervise_command(
        spec.name,
        state,
        spec.command,
        python=str(bin_dir() / "python"),
        stop_signal=spec.stop_signal,
        wait_for=spec.waits_for,
    )
    with open(path, "ab") as out:
        out.write(f"\n==== {datetime.now(UTC).isoformat()} starting: {' '.join(spec.command)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            command,
            env={**spec.env, PART_VAR: spec.name},
            cwd=settings.home,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Own session = own process group: `down` finds the whole tree by session, and a Ctrl-C
            # in the shell that ran `ct stack up` does not reach the services.
            start_new_session=True,
        )
    _LAUNCHED[proc.pid] = proc
    _FRESH.add(proc.pid)
    pid_file(settings, spec.name).write_text(f"{proc.pid}\n")
    log.info("%s: started (pid %s, supervised), log %s", spec.name, proc.pid, path)
    return proc.pid


def _exit_code(pid: int) -> int | None:
    proc = _LAUNCHED.get(pid)
    return proc.poll() if proc is not None else None


def _process_tree(root: int) -> dict[int, str]:
    """``root`` and its descendants as pid -> start time (to tell a recycled pid apart later)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            stat = _proc_stat(int(entry.name))
            if stat is None:
                continue
            children.setdefault(int(stat[1]), []).append(int(entry.name))
            starts[int(entry.name)] = stat[19]
    tree: dict[int, str] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in tree:
            continue
        tree[pid] = starts.get(pid, "")
        todo.extend(children.get(pid, []))
    return tree


def _tree_alive(tree: dict[int, str]) -> list[int]:
    alive = []
    for pid, start in tree.items():
        if not pid_alive(pid):
            continue
        stat = _proc_stat(pid)
        if stat is None or not start or stat[19] == start:
            alive.append(pid)
    return alive


def _group_alive(pgid: int) -> bool:
    """Whether a live (non-zombie) process is left in process group ``pgid``."""
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # killpg(pgid, 0) also succeeds for zombies, and an orphan's zombie lingers until the init
    # process reaps it (here that took up to a second), so read the states instead.
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                stat = _proc_stat(int(entry.name))
                if stat is not None and int(stat[2]) == pgid and stat[0] not in ("Z", "X"):
                    return True
    return False


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes of session ``sid`` (a part's supervisor pid), leader included."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                stat = _proc_stat(int(entry.name))
                if stat is not None and int(stat[3]) == sid and stat[0] not in ("Z", "X"):
                    found.append(int(entry.name))
    return found


def _family() -> set[int]:
    """This process, its ancestors and its descendants: never stopped as "left behind"."""
    parents: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                stat = _proc_stat(int(entry.name))
                if stat is not None:
                    parents[int(entry.name)] = int(stat[1])
    me = os.getpid()
    family = {me}
    pid = me
    while pid in parents and parents[pid] > 0 and parents[pid] not in family:
        pid = parents[pid]
        family.add(pid)
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    todo = [me]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in family:
                family.add(child)
                todo.append(child)
    return family


def _belongs_to(pid: int, home: Path, marker: bytes) -> bool:
    """Whether process ``pid`` runs for the state directory ``home`` (see :func:`home_processes`)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False  # another user's process (or gone): never ours to stop
    homes = [entry for entry in environ if entry.startswith(b"CT_HOME=")]
    if homes:
        # Started by a part (the variable comes from _launch), not a shell or a client that merely
        # points at this stack (`eval "$(ct stack env)"`, `ct demo`, `ct stack down | tail`).
        part = any(entry.startswith(PART_VAR.encode() + b"=") for entry in environ)
        return part and marker in homes
    # Airflow's processes retitle themselves (setproctitle), which blanks /proc/<pid>/environ; they
    # run in CT_HOME (parts start there), so the working directory tells.
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    return cwd == home or home in cwd.parents


def home_processes(settings: Settings) -> dict[int, str]:
    """Processes still running for this ``CT_HOME``, pid -> command line.

    A process belongs to the state directory when its environment has ``CT_HOME=<home>`` exactly and
    :data:`PART_VAR` (every part's processes inherit it from :func:`_launch`), or, without any
    ``CT_HOME`` in its environment (Airflow's retitled processes blank it), when its working directory
    is inside the state directory (parts start there). Never listed: this process, its ancestors and
    descendants, processes with a controlling terminal (no part has one), zombies, and processes of
    other users.

    Returns:
        pid -> command line (empty on a system without ``/proc``).
    """
    home = settings.home.resolve()
    marker = f"CT_HOME={home}".encode()
    family = _family()
    found: dict[int, str] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) in family:
                continue
            pid = int(entry.name)
            stat = _proc_stat(pid)
            if stat is None or stat[0] in ("Z", "X") or int(stat[4]) != 0:
                continue
            if _belongs_to(pid, home, marker):
                found[pid] = " ".join(_cmdline(pid) or [])
    return found


def stop_processes(pids: list[int], timeout: float) -> list[int]:
    """SIGTERM ``pids``, wait up to ``timeout`` s, SIGKILL the rest, wait up to 10 s more.

    Returns:
        The pids still alive after SIGKILL (normally none).
    """
    starts = {pid: (stat[19] if (stat := _proc_stat(pid)) else "") for pid in pids}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    for sig, wait in ((signal.SIGKILL, timeout), (None, 10.0)):
        deadline = time.monotonic() + wait
        while (alive := _tree_alive(starts)) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not alive or sig is None:
            return alive
        for pid in alive:
            log.warning("pid %s still running %.0f s after SIGTERM; sending SIGKILL", pid, timeout)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
    return []  # pragma: no cover


def stop_session(pid: int, timeout: float) -> list[int]:
    """Stop one part: its supervisor (or, unsupervised, its process group), then its whole session.

    SIGTERM to the supervisor, which stops its child and the rest of the session; after ``timeout``
    s, SIGKILL to every process left in the session (``pid`` is its id).

    Returns:
        The pids still alive after SIGKILL (normally none).
    """
    pid_alive(pid)  # reap our own child if it already exited
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if is_supervised(pid):
            os.kill(pid, signal.SIGTERM)
        else:
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid_alive(pid)
        if not session_members(pid):
            return []
        time.sleep(0.2)
    members = session_members(pid)
    log.warning(
        "session %s still has %s process(es) %.0f s after SIGTERM; SIGKILL", pid, len(members), timeout
    )
    return stop_processes(members, timeout=0.0)
