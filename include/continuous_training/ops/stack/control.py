"""``ct stack up|down|status``: start the parts in order and wait for health, stop them in waves."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from continuous_training.ops.stack.env import bin_dir
from continuous_training.ops.stack.errors import StackError
from continuous_training.ops.stack.health import (
    _part_health,
    _wait_healthy,
    _warm_execution_api,
    airflow_health,
)
from continuous_training.ops.stack.mlflow_auth import provision
from continuous_training.ops.stack.parts import (
    _NEEDS,
    _STOP_WAVES,
    AIRFLOW_PARTS,
    PARTS,
    START_TIMEOUT_S,
    _part_spec,
    _port_var,
    part_url,
    resolve_parts,
)
from continuous_training.ops.stack.process import (
    _LAUNCHED,
    _LOG_TAIL_LINES,
    _group_alive,
    _launch,
    _log_tail,
    _process_tree,
    _running_pid,
    _tree_alive,
    log_file,
    pid_alive,
    pid_file,
    port_in_use,
)
from continuous_training.ops.stack.secrets import check_stack_secrets
from continuous_training.settings import Settings, load_settings

log = logging.getLogger(__name__)

#: Seconds between SIGTERM and SIGKILL in :func:`stack_down` (Airflow needs 7-17 s to stop).
STOP_TIMEOUT_S = 45.0
MIGRATE_TIMEOUT_S = 600.0


@contextlib.contextmanager
def _stack_lock(settings: Settings) -> Iterator[None]:
    """One `up`/`down` at a time per state directory."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.run_dir / "stack.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another `ct stack` command on %s to finish", settings.home)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _airflow_version() -> str:
    from importlib.metadata import version

    return version("apache-airflow")


def _migrate_airflow_db(settings: Settings, env: dict[str, str]) -> None:
    """``airflow db migrate`` unless this Airflow version already migrated this DB (marker file)."""
    home = settings.airflow_home
    marker = home / ".ct-db-migrated"
    wanted = _airflow_version()
    if (home / "airflow.db").exists() and marker.exists() and marker.read_text().strip() == wanted:
        return
    home.mkdir(parents=True, exist_ok=True)
    path = log_file(settings, "airflow-db-migrate")
    log.info("airflow: migrating the metadata DB %s (about 15 s) ...", home / "airflow.db")
    started = time.monotonic()
    with open(path, "ab") as out:
        out.write(f"\n==== {datetime.now(UTC).isoformat()} airflow db migrate\n".encode())
        out.flush()
        try:
            result = subprocess.run(
                [str(bin_dir() / "airflow"), "db", "migrate"],
                env=env,
                cwd=settings.home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=MIGRATE_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise StackError(
                f"`airflow db migrate` did not finish within {MIGRATE_TIMEOUT_S:.0f} s; "
                f"log {path}:\n{_log_tail(path)}"
            ) from exc
    if result.returncode != 0:
        raise StackError(
            f"`airflow db migrate` exited with code {result.returncode}; log {path} "
            f"(last {_LOG_TAIL_LINES} lines):\n{_log_tail(path)}"
        )
    marker.write_text(wanted + "\n")
    log.info("airflow: metadata DB migrated in %.1f s", time.monotonic() - started)


def _on_healthy(settings: Settings, part: str) -> None:
    """What follows a part's first healthy answer: MLflow's accounts, the execution API's warm-up."""
    if part == "mlflow":
        provision(settings)
    elif part == "airflow-api-server":
        _warm_execution_api(settings)


def stack_up(settings: Settings | None = None, parts: Iterable[str] | None = None) -> None:
    """Start the embedded stack (or the selected parts) and wait until every part is healthy.

    Idempotent: parts already running (per their pid file) are left alone, only waited for.
    Dependencies are respected: the Airflow scheduler, dag-processor and triggerer start only once the
    API server answers (and its execution API was warmed up); the endpoint once MLflow answers.

    Args:
        settings: the stack settings (default :func:`load_settings`).
        parts: names from :data:`PARTS` or aliases (``airflow``, ``all``); default all.

    Raises:
        StackError: naming the part and the reason (port taken by another process, process exited
            with its code, or not healthy in time) with the tail of its log; or a secret is empty, too
            short or a well-known default (nothing is started then).
    """
    settings = settings or load_settings()
    selected = resolve_parts(parts)
    check_stack_secrets(settings)
    started_at = time.monotonic()
    # The mail folder is the sink's to create: a failure there shows in its own log.
    for path in (
        settings.home,
        settings.log_dir,
        settings.run_dir,
        settings.mlflow_dir,
        settings.airflow_home,
    ):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StackError(f"cannot create the state folder {path}: {exc}") from exc
    with _stack_lock(settings):
        env_cache: dict[str, dict[str, str]] = {}
        pids: dict[str, int] = {}
        deadlines: dict[str, float] = {}
        healthy: set[str] = set()
        for part in selected:
            for need in _NEEDS.get(part, ()):
                if need in healthy:
                    continue
                if need not in pids:
                    running = _running_pid(settings, need)
                    if running is not None:
                        pids[need] = running
                        deadlines[need] = time.monotonic() + START_TIMEOUT_S[need]
                if need in pids:
                    _wait_healthy(settings, [need], pids, deadlines)
                    healthy.add(need)
                    _on_healthy(settings, need)
                elif need in AIRFLOW_PARTS:
                    raise StackError(
                        f"stack part {part!r} needs {need!r} running; start it too "
                        f"(`ct stack up --parts airflow`)"
                    )
                else:
                    log.warning("%s: %s is not running; starting anyway", part, need)
            spec = _part_spec(settings, part, env_cache)
            pid = _running_pid(settings, part)
            if pid is not None:
                log.info("%s: already running (pid %s)", part, pid)
            else:
                if spec.port is not None and port_in_use(settings.host, spec.port):
                    raise StackError(
                        f"stack part {part!r} cannot start: port {settings.host}:{spec.port} is already taken by "
                        f"another process (not one this stack started; see `ss -ltnp 'sport = :{spec.port}'`). "
                        f"Stop it or choose another port (CT_{_port_var(part)}). Log: {log_file(settings, part)}"
                    )
                if part == "airflow-api-server":
                    _migrate_airflow_db(settings, spec.env)
                pid = _launch(settings, spec)
            pids[part] = pid
            deadlines[part] = time.monotonic() + START_TIMEOUT_S[part]
        rest = [p for p in selected if p not in healthy]
        _wait_healthy(settings, rest, pids, deadlines)
        for part in rest:
            _on_healthy(settings, part)
    log.info("stack up: %s healthy in %.1f s", ", ".join(selected), time.monotonic() - started_at)


def _stop_wave(settings: Settings, parts: Iterable[str]) -> None:
    """SIGTERM each part's process group, wait, SIGKILL what is left, remove the pid files."""
    targets: dict[str, tuple[int, dict[int, str]]] = {}
    for part in parts:
        pid = _running_pid(settings, part)
        if pid is None:
            continue
        # Snapshot the tree first: Airflow's task supervisors move into their own process groups.
        targets[part] = (pid, _process_tree(pid))
        log.info("%s: stopping (pid %s, %s processes)", part, pid, len(targets[part][1]))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    started = time.monotonic()
    pending = dict(targets)
    while pending:
        for part, (pid, tree) in list(pending.items()):
            pid_alive(pid)  # reaps our own child, so a zombie leader does not keep the group alive
            if not _tree_alive(tree) and not _group_alive(pid):
                log.info("%s: stopped after %.1f s", part, time.monotonic() - started)
                del pending[part]
        if not pending:
            break
        if time.monotonic() > deadline:
            for part, (pid, tree) in pending.items():
                log.warning("%s: still running %.0f s after SIGTERM; sending SIGKILL", part, STOP_TIMEOUT_S)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                for straggler in _tree_alive(tree):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(straggler, signal.SIGKILL)
            kill_deadline = time.monotonic() + 10.0
            while any(_tree_alive(tree) or _group_alive(pid) for pid, tree in pending.values()):
                if time.monotonic() > kill_deadline:
                    raise StackError(
                        f"could not stop {sorted(pending)} even with SIGKILL; pid files kept in "
                        f"{settings.run_dir}"
                    )
                for pid, _tree in pending.values():
                    pid_alive(pid)
                time.sleep(0.2)
            break
        time.sleep(0.25)
    for part, (pid, _tree) in targets.items():
        pid_file(settings, part).unlink(missing_ok=True)
        _LAUNCHED.pop(pid, None)


def stack_down(settings: Settings | None = None, parts: Iterable[str] | None = None) -> None:
    """Stop the parts recorded in the pid files: workers first, then the servers.

    SIGTERM to each part's process group, up to :data:`STOP_TIMEOUT_S` to exit, then SIGKILL. Stale
    pid files (process gone) are just removed. Idempotent.

    Args:
        settings: the stack settings (default :func:`load_settings`).
        parts: part names or aliases (see :func:`resolve_parts`); None stops every part.

    Raises:
        StackError: a process survived SIGKILL, or a part name is unknown.
    """
    settings = settings or load_settings()
    chosen = set(resolve_parts(parts))
    if not settings.run_dir.is_dir():
        log.info("stack down: nothing to stop (no %s)", settings.run_dir)
        return
    started = time.monotonic()
    with _stack_lock(settings):
        for wave in _STOP_WAVES:
            _stop_wave(settings, [p for p in wave if p in chosen])
    log.info("stack down: done in %.1f s", time.monotonic() - started)


def stack_status(settings: Settings | None = None) -> dict[str, dict]:
    """Each part's state.

    Args:
        settings: the stack settings (default :func:`load_settings`).

    Returns:
        Part -> ``{"state": "running"|"stopped", "pid": int|None, "url": str|None, "healthy": bool,
        "health": str, "log": str}``; a stale pid file is removed on the way.
    """
    settings = settings or load_settings()
    pids = {part: _running_pid(settings, part) for part in PARTS}
    airflow = airflow_health(settings) if pids["airflow-api-server"] is not None else None
    result: dict[str, dict] = {}
    for part in PARTS:
        pid = pids[part]
        if pid is None:
            healthy, detail = False, "not running"
        else:
            healthy, detail = _part_health(settings, part, airflow)
        result[part] = {
            "state": "running" if pid is not None else "stopped",
            "pid": pid,
            "url": part_url(settings, part),
            "healthy": healthy,
            "health": detail,
            "log": str(log_file(settings, part)),
        }
    return result
