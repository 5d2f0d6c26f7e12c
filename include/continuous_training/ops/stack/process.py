"""Processes of the embedded stack: pid files, logs, liveness (guarded against recycled pids), ports.

Every part runs in its own session (process group), started by :func:`_launch`, with its output in
``$CT_HOME/logs/<part>.log`` and its pid in ``$CT_HOME/run/<part>.pid``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from continuous_training.ops.stack.parts import _CMDLINE_MARKER, _Part
from continuous_training.settings import Settings

log = logging.getLogger(__name__)

_LOG_TAIL_LINES = 20

#: Processes started by this Python process, so their exit codes can be read (and zombies reaped).
_LAUNCHED: dict[int, subprocess.Popen[bytes]] = {}


def pid_file(settings: Settings, part: str) -> Path:
    """``$CT_HOME/run/<part>.pid``."""
    return settings.run_dir / f"{part}.pid"


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


def _is_our_process(part: str, pid: int) -> bool:
    """Whether ``pid`` is alive and still the part we started, not a recycled pid."""
    if not pid_alive(pid):
        return False
    with contextlib.suppress(OSError):
        # Every part was started with start_new_session=True, so it leads its own group.
        if os.getpgid(pid) != pid:
            return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return True  # no /proc to check against (not Linux): trust the process group check
    return _CMDLINE_MARKER[part] in cmdline


def _running_pid(settings: Settings, part: str) -> int | None:
    """The pid of the part if its pid file names a live process of that part; stale files go."""
    pid = read_pid(settings, part)
    path = pid_file(settings, part)
    if pid is not None and _is_our_process(part, pid):
        return pid
    if path.exists():
        log.info("%s: removing stale pid file %s (pid %s is gone)", part, path, pid)
        path.unlink(missing_ok=True)
    return None


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
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    path = log_file(settings, spec.name)
    with open(path, "ab") as out:
        out.write(f"\n==== {datetime.now(UTC).isoformat()} starting: {' '.join(spec.command)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            spec.command,
            env=spec.env,
            cwd=settings.home,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Own session = own process group: `down` signals the whole tree, and a Ctrl-C in the
            # shell that ran `ct stack up` does not reach the services.
            start_new_session=True,
        )
    _LAUNCHED[proc.pid] = proc
    pid_file(settings, spec.name).write_text(f"{proc.pid}\n")
    log.info("%s: started (pid %s), log %s", spec.name, proc.pid, path)
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
