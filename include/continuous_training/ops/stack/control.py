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
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from continuous_training.ops.stack.cluster import cluster_secrets, provision_databases
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
    _part_spec,
    _port_var,
    is_airflow,
    needs,
    part_url,
    parts_of,
    resolve_parts,
    start_timeout,
    stop_waves,
)
from continuous_training.ops.stack.process import (
    _LAUNCHED,
    _LOG_TAIL_LINES,
    LEFT_BEHIND_TIMEOUT_S,
    _group_alive,
    _launch,
    _log_tail,
    _process_tree,
    _running_pid,
    _tree_alive,
    home_processes,
    is_supervised,
    log_file,
    orphaned,
    part_state,
    pid_alive,
    pid_file,
    port_in_use,
    read_pid,
    session_members,
    state_file,
    stop_processes,
)
from continuous_training.ops.stack.secrets import check_stack_secrets
from continuous_training.ops.stack.sqlite import ensure_wal
from continuous_training.settings import DEPLOYMENTS, TRAINING_POOL, Settings, load_settings

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


def _metadata_db_exists(settings: Settings) -> bool:
    """Whether the metadata DB has Airflow's tables (the SQLite file, or ``alembic_version`` in PostgreSQL)."""
    if not settings.cluster:
        return (settings.airflow_home / "airflow.db").exists()
    import psycopg2

    from continuous_training.ops.stack.cluster import database_url

    try:
        with (
            contextlib.closing(
                psycopg2.connect(database_url(settings, "airflow", driver="postgresql"))
            ) as conn,
            conn.cursor() as cur,
        ):
            cur.execute("SELECT to_regclass('public.alembic_version') IS NOT NULL")
            return bool(cur.fetchone()[0])
    except psycopg2.Error:
        return False


def _migrate_airflow_db(settings: Settings, env: dict[str, str]) -> None:
    """``airflow db migrate`` unless this Airflow version already migrated this DB (marker file)."""
    home = settings.airflow_home
    marker = home / ".ct-db-migrated"
    wanted = f"{_airflow_version()} {settings.deployment}"
    if marker.exists() and marker.read_text().strip() == wanted and _metadata_db_exists(settings):
        return
    home.mkdir(parents=True, exist_ok=True)
    path = log_file(settings, "airflow-db-migrate")
    where = "PostgreSQL database airflow" if settings.cluster else home / "airflow.db"
    log.info("airflow: migrating the metadata DB %s (about 15-20 s) ...", where)
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
    if not settings.cluster:
        ensure_wal(home / "airflow.db")
    marker.write_text(wanted + "\n")
    log.info("airflow: metadata DB migrated in %.1f s", time.monotonic() - started)


def _ensure_pools(settings: Settings) -> None:
    """Create the one-slot training pool (or reset it to one slot) through the REST API.

    A task whose pool does not exist is never scheduled, so the pool exists before any DAG runs.
    """
    from continuous_training.ops.airflow_client import AirflowClient
    from continuous_training.ops.stack.secrets import ADMIN_USER, airflow_password

    body = {
        "name": TRAINING_POOL,
        "slots": 1,
        "description": "One training at a time across DAG runs and workers (created by ct stack up).",
        "include_deferred": False,
    }
    with AirflowClient(settings.airflow_url, ADMIN_USER, airflow_password(settings)) as client:
        resp = client._request("POST", "/api/v2/pools", json=body, ok=(409,))
        if resp.status_code == 409:
            client._request("PATCH", f"/api/v2/pools/{TRAINING_POOL}", json=body)
    log.info("airflow: pool %s has 1 slot", TRAINING_POOL)


def _on_healthy(settings: Settings, part: str) -> None:
    """What follows a part's first healthy answer: databases, MLflow's accounts, the API's warm-up, pools."""
    if part == "postgres":
        provision_databases(settings)
    elif part == "mlflow":
        provision(settings)
    elif part == "airflow-api-server":
        _warm_execution_api(settings)
        _ensure_pools(settings)


def _prepare(settings: Settings, part: str, env: dict[str, str]) -> None:
    """What a part needs on disk or in a database before its process starts."""
    if part == "postgres":
        from continuous_training.ops.stack.cluster import init_postgres

        init_postgres(settings, log_file(settings, part))
    elif part == "redis":
        from continuous_training.ops.stack.cluster import write_redis_config

        write_redis_config(settings)
    elif part == "mlflow" and settings.cluster:
        from continuous_training.ops.stack.cluster import init_mlflow_stores

        if settings.postgres_url:
            provision_databases(settings)  # no postgres part does it
        init_mlflow_stores(settings)
    elif part == "airflow-api-server":
        if settings.cluster and settings.postgres_url:
            provision_databases(settings)  # no postgres part does it
        _migrate_airflow_db(settings, env)


def deployment_file(settings: Settings) -> Path:
    """``<home>/run/deployment``: the mode (``embedded``/``cluster``) of the stack ``up`` last started."""
    return settings.run_dir / "deployment"


def recorded_deployment(settings: Settings) -> str | None:
    """The mode recorded by the last ``up`` in this state directory, if any."""
    try:
        mode = deployment_file(settings).read_text().strip()
    except OSError:
        return None
    return mode if mode in DEPLOYMENTS else None


def stack_settings(settings: Settings | None = None, *, cluster: bool = False) -> Settings:
    """The settings of the stack in ``CT_HOME``: ``--cluster``, else ``CT_DEPLOYMENT``, else the recorded mode.

    So ``ct stack status`` and ``ct stack down`` act on the stack ``ct stack up --cluster`` started
    without being told the mode again.
    """
    settings = settings or load_settings()
    if cluster:
        return replace(settings, deployment="cluster")
    if not settings.deployment_given:
        recorded = recorded_deployment(settings)
        if recorded and recorded != settings.deployment:
            return replace(settings, deployment=recorded)
    return settings


def _refuse_other_mode(settings: Settings) -> None:
    recorded = recorded_deployment(settings)
    if recorded is None or recorded == settings.deployment:
        return
    other = replace(settings, deployment=recorded)
    running = [part for part in parts_of(other) if _running_pid(other, part) is not None]
    if running:
        raise StackError(
            f"the stack in {settings.home} runs in {recorded} mode ({', '.join(running)}); "
            f"stop it first (`ct stack down`) or use another CT_HOME for the {settings.deployment} stack"
        )


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
    selected = resolve_parts(parts, settings)
    check_stack_secrets(settings)
    if settings.cluster:
        cluster_secrets(settings)  # generated, and checked like the others, before anything starts
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
        _refuse_other_mode(settings)
        deployment_file(settings).write_text(settings.deployment + "\n")
        env_cache: dict[str, dict[str, str]] = {}
        pids: dict[str, int] = {}
        deadlines: dict[str, float] = {}
        healthy: set[str] = set()
        for part in selected:
            for need in needs(settings, part):
                if need in healthy:
                    continue
                if need not in pids:
                    running = _running_pid(settings, need)
                    if running is not None:
                        pids[need] = running
                        deadlines[need] = time.monotonic() + start_timeout(need)
                if need in pids:
                    _wait_healthy(settings, [need], pids, deadlines)
                    healthy.add(need)
                    _on_healthy(settings, need)
                elif is_airflow(need) or need in ("postgres", "redis"):
                    raise StackError(
                        f"stack part {part!r} needs {need!r} running; start it too "
                        f"(`ct stack up --parts {need}`)"
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
                _prepare(settings, part, spec.env)
                pid = _launch(settings, spec)
            pids[part] = pid
            deadlines[part] = time.monotonic() + start_timeout(part)
        rest = [p for p in selected if p not in healthy]
        _wait_healthy(settings, rest, pids, deadlines)
        for part in rest:
            _on_healthy(settings, part)
    log.info("stack up: %s healthy in %.1f s", ", ".join(selected), time.monotonic() - started_at)


def _stop_wave(settings: Settings, parts: Iterable[str]) -> None:
    """Stop each part's session, wait, SIGKILL what is left, remove the pid files.

    A supervised part gets SIGTERM to its supervisor, which forwards it to its child and then stops
    the rest of the session; an unsupervised one (started by an older version) SIGTERM to its process
    group. The part is stopped when nothing is left of its process tree, its process group or its
    session (task runners make process groups of their own but stay in the session). After
    :data:`STOP_TIMEOUT_S`, SIGKILL to all of them. A pid file whose supervisor is gone but whose
    session still has processes (the supervisor was killed) stops that session too.
    """
    targets: dict[str, tuple[int, dict[int, str]]] = {}
    for part in parts:
        recorded = read_pid(settings, part)
        pid = _running_pid(settings, part)
        if pid is None:
            if recorded is not None and (left := orphaned(settings, recorded)):
                log.warning(
                    "%s: supervisor %s is gone but its session still runs %s; stopping them",
                    part,
                    recorded,
                    left,
                )
                pid = recorded
            else:
                continue
        # Snapshot the tree first: Airflow's task supervisors move into their own process groups.
        targets[part] = (pid, _process_tree(pid))
        log.info("%s: stopping (pid %s, %s processes)", part, pid, len(targets[part][1]))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if is_supervised(pid):
                os.kill(pid, signal.SIGTERM)
            else:
                os.killpg(pid, signal.SIGTERM)

    def alive(pid: int, tree: dict[int, str]) -> bool:
        pid_alive(pid)  # reaps our own child, so a zombie leader does not keep the group alive
        return bool(_group_alive(pid) or session_members(pid))

    def escaped(part: str, pid: int, tree: dict[int, str]) -> None:
        # Descendants that left the session (setsid): the part is gone, so they go too.
        left = [p for p in _tree_alive(tree) if p != pid]
        for straggler in left:
            log.warning(
                "%s: pid %s was left behind (outside the part's session); stopping it", part, straggler
            )
        if stop_processes(left, timeout=LEFT_BEHIND_TIMEOUT_S):
            raise StackError(f"could not stop {left} of {part} even with SIGKILL")

    deadline = time.monotonic() + STOP_TIMEOUT_S
    started = time.monotonic()
    pending = dict(targets)
    while pending:
        for part, (pid, tree) in list(pending.items()):
            if not alive(pid, tree):
                log.info("%s: stopped after %.1f s", part, time.monotonic() - started)
                del pending[part]
                escaped(part, pid, tree)
        if not pending:
            break
        if time.monotonic() > deadline:
            for part, (pid, tree) in pending.items():
                log.warning("%s: still running %.0f s after SIGTERM; sending SIGKILL", part, STOP_TIMEOUT_S)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                for straggler in {*_tree_alive(tree), *session_members(pid)}:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(straggler, signal.SIGKILL)
            kill_deadline = time.monotonic() + 10.0
            while any(alive(pid, tree) or _tree_alive(tree) for pid, tree in pending.values()):
                if time.monotonic() > kill_deadline:
                    raise StackError(
                        f"could not stop {sorted(pending)} even with SIGKILL; pid files kept in "
                        f"{settings.run_dir}"
                    )
                time.sleep(0.2)
            break
        time.sleep(0.25)
    for part, (pid, _tree) in targets.items():
        pid_file(settings, part).unlink(missing_ok=True)
        _LAUNCHED.pop(pid, None)
    for part in parts:
        # Stopped now, whatever the supervisor last recorded (a failure's story stays in the log).
        state_file(settings, part).unlink(missing_ok=True)


def stack_down(settings: Settings | None = None, parts: Iterable[str] | None = None) -> None:
    """Stop the parts recorded in the pid files: workers first, then the servers.

    Each part's supervisor gets SIGTERM (it stops its child, then the rest of the part's session),
    up to :data:`STOP_TIMEOUT_S` to exit, then SIGKILL to the part's process group, tree and session.
    When every part is stopped (``parts`` None), whatever still runs for this ``CT_HOME`` is stopped
    too and logged as left behind (:func:`~continuous_training.ops.stack.process.home_processes`: the
    environment's ``CT_HOME``, or the working directory; never the caller, its ancestors or
    descendants, nor a process with a terminal). Stale pid files (process gone) are just removed.
    Idempotent.

    Args:
        settings: the stack settings (default :func:`load_settings`).
        parts: part names or aliases (see :func:`resolve_parts`); None stops every part.

    Raises:
        StackError: a process survived SIGKILL, or a part name is unknown.
    """
    settings = settings or load_settings()
    chosen = set(resolve_parts(parts, settings))
    if not settings.run_dir.is_dir():
        log.info("stack down: nothing to stop (no %s)", settings.run_dir)
        return
    started = time.monotonic()
    with _stack_lock(settings):
        for wave in stop_waves(settings):
            _stop_wave(settings, [p for p in wave if p in chosen])
        if parts is None:
            left = home_processes(settings)
            for pid, cmdline in sorted(left.items()):
                log.warning("stack down: pid %s was left behind; stopping it: %s", pid, cmdline[:200])
            survivors = stop_processes(sorted(left), timeout=LEFT_BEHIND_TIMEOUT_S)
            if survivors:
                raise StackError(f"could not stop {survivors} of {settings.home} even with SIGKILL")
    log.info("stack down: done in %.1f s", time.monotonic() - started)


def stack_status(settings: Settings | None = None) -> dict[str, dict]:
    """Each part's state.

    Args:
        settings: the stack settings (default :func:`load_settings`).

    Returns:
        Part -> ``{"state": "running"|"restarting"|"waiting"|"failed"|"orphaned"|"stopped", "pid": int|None, "url":
        str|None, "healthy": bool, "health": str, "log": str, "restarts": int, "last_exit": str|None,
        "last_reason": str|None}``. ``restarts`` counts the supervisor's restarts since the part
        started; ``restarting``: the child died and the supervisor waits to start it again;
        ``waiting``: the child died while a service it needs (PostgreSQL) refused connections, and the
        supervisor waits for that service; ``failed``:
        the supervisor gave up (``last_reason`` says why, ``ct stack up`` starts it afresh);
        ``orphaned``: the supervisor was killed but processes of the part still run (``down`` or the
        next ``up`` stops them). A stale pid file is removed on the way.
    """
    settings = settings or load_settings()
    every = parts_of(settings)
    pids = {part: _running_pid(settings, part) for part in every}
    airflow = airflow_health(settings) if pids["airflow-api-server"] is not None else None
    result: dict[str, dict] = {}
    for part in every:
        pid = pids[part]
        supervisor = part_state(settings, part) or {}
        if pid is not None and supervisor.get("supervisor_pid") not in (None, pid):
            supervisor = {}  # a state file of another process
        if pid is None:
            healthy, detail = False, "not running"
            state = "failed" if supervisor.get("state") == "failed" else "stopped"
            if state == "failed":
                detail = f"failed: {supervisor.get('last_reason')}"
            recorded = read_pid(settings, part)
            if recorded is not None and (left := orphaned(settings, recorded)):
                state = "orphaned"
                detail = f"supervisor {recorded} is gone, pids {left} still run; `ct stack down` stops them"
        else:
            healthy, detail = _part_health(settings, part, airflow)
            state = (
                supervisor.get("state") if supervisor.get("state") in ("restarting", "waiting") else "running"
            )
        last_exit = supervisor.get("last_exit") or {}
        result[part] = {
            "state": state,
            "pid": pid,
            "url": part_url(settings, part),
            "healthy": healthy,
            "health": detail,
            "log": str(log_file(settings, part)),
            "restarts": int(supervisor.get("restarts") or 0),
            "last_exit": last_exit.get("reason"),
            "last_reason": supervisor.get("last_reason"),
        }
    return result
