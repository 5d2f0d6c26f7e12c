"""Health checks of the embedded stack's parts, and the wait until they pass."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
import urllib.error
import urllib.request
from typing import Any

from continuous_training.ops.stack.env import _local_url
from continuous_training.ops.stack.errors import StackError
from continuous_training.ops.stack.parts import (
    is_airflow,
    part_kind,
    parts_of,
    process_name,
    start_timeout,
)
from continuous_training.ops.stack.process import (
    _FRESH,
    _LOG_TAIL_LINES,
    _exit_code,
    _is_our_process,
    _log_tail,
    log_file,
    part_state,
    pid_alive,
    pid_file,
    stop_session,
)
from continuous_training.settings import Settings

log = logging.getLogger(__name__)

#: The key of each Airflow worker part in the API server's health document.
_HEALTH_KEY = {
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag_processor",
    "airflow-triggerer": "triggerer",
}
#: The ``job`` table's type of each Airflow part that heartbeats there.
_JOB_TYPE = {
    "airflow-scheduler": "SchedulerJob",
    "airflow-dag-processor": "DagProcessorJob",
    "airflow-triggerer": "TriggererJob",
}
#: A job whose newest heartbeat is older than this is not healthy (Airflow's own threshold is 30 s).
JOB_HEARTBEAT_MAX_AGE_S = 30.0
#: Probes of the cluster shared by the parts of one health round (seconds they stay fresh).
_PROBE_TTL_S = 1.0
_probes: dict[str, tuple[float, Any]] = {}


def _cached(key: str, probe) -> Any:
    now = time.monotonic()
    hit = _probes.get(key)
    if hit is not None and now - hit[0] < _PROBE_TTL_S:
        return hit[1]
    value = probe()
    _probes[key] = (time.monotonic(), value)
    return value


def _job_heartbeats(settings: Settings) -> dict[tuple[str, str], float] | str:
    """(job type, host name) -> seconds since the newest heartbeat of a running job; or why not known.

    The API server's health document has one entry per component type (the newest heartbeat of any
    scheduler), so with two schedulers it cannot tell one dead from both alive; each part of the
    cluster records its own host name (:mod:`continuous_training.ops.hostname`), so the ``job``
    table can.
    """
    import psycopg2

    from continuous_training.ops.stack.cluster import database_url

    url = database_url(settings, "airflow", driver="postgresql")
    try:
        with contextlib.closing(psycopg2.connect(url, connect_timeout=3)) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT job_type, hostname, EXTRACT(EPOCH FROM (now() - max(latest_heartbeat))) "
                "FROM job WHERE state = 'running' GROUP BY job_type, hostname"
            )
            return {(row[0], row[1]): float(row[2]) for row in cur.fetchall()}
    except psycopg2.Error as exc:
        return f"cannot read Airflow's job table ({type(exc).__name__})"


def _celery_workers(settings: Settings) -> set[str] | str:
    """Names of the Celery workers answering a ping through the broker (``worker-1``, ...)."""
    from celery import Celery

    from continuous_training.ops.stack.cluster import broker_url

    app = Celery(broker=broker_url(settings))
    try:
        replies = app.control.ping(timeout=1.0) or []
    except Exception as exc:  # kombu raises its own and the transport's errors
        return f"no answer through the broker ({type(exc).__name__})"
    finally:
        app.close()
    return {name.split("@", 1)[0] for reply in replies for name in reply}


def _cluster_part_health(settings: Settings, part: str) -> tuple[bool, str] | None:
    """Health of the parts the cluster has beyond the embedded ones (None: not such a part)."""
    from continuous_training.ops.stack import cluster

    kind = part_kind(part)
    if part == "postgres":
        return cluster.postgres_health(settings)
    if part == "redis":
        return cluster.redis_health(settings)
    if kind == "airflow-worker":
        workers = _cached("workers", lambda: _celery_workers(settings))
        if isinstance(workers, str):
            return False, workers
        name = process_name(part)
        return name in workers, f"celery ping {'answered' if name in workers else 'not answered'} by {name}"
    if kind in _JOB_TYPE:
        jobs = _cached("jobs", lambda: _job_heartbeats(settings))
        if isinstance(jobs, str):
            return False, jobs
        age = jobs.get((_JOB_TYPE[kind], process_name(part)))
        if age is None:
            return False, f"no running {_JOB_TYPE[kind]} of {process_name(part)}"
        return age < JOB_HEARTBEAT_MAX_AGE_S, f"{_JOB_TYPE[kind]} heartbeat {age:.0f} s ago"
    return None


def _http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes] | None:
    """GET without any proxy; (status, body), or None when nothing answers."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ValueError):
        return None


def _smtp_health(host: str, port: int) -> tuple[bool, str]:
    try:
        with socket.create_connection((host, port), timeout=3.0) as sock:
            banner = sock.recv(512)
            with contextlib.suppress(OSError):
                sock.sendall(b"QUIT\r\n")
    except OSError as exc:
        return False, f"no SMTP answer ({exc})"
    if banner.startswith(b"220"):
        return True, "220 banner"
    return False, f"unexpected banner {banner[:60]!r}"


def airflow_health(settings: Settings) -> dict[str, Any] | None:
    """The API server's ``/api/v2/monitor/health`` JSON, or None if it does not answer 200.

    Args:
        settings: the stack settings.

    Returns:
        The health document (``metadatabase``, ``scheduler``, ``triggerer``, ``dag_processor``).
    """
    got = _http_get(_local_url(settings, settings.airflow_port) + "/api/v2/monitor/health")
    if got is None or got[0] != 200:
        return None
    try:
        data = json.loads(got[1])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _part_health(settings: Settings, part: str, airflow: dict[str, Any] | None) -> tuple[bool, str]:
    """(healthy, detail) of one part; ``airflow`` is the API health JSON, fetched once per round."""
    if settings.cluster:
        found = _cluster_part_health(settings, part)
        if found is not None:
            return found
    if part == "smtp":
        return _smtp_health(settings.host, settings.smtp_port)
    if part == "mlflow":
        got = _http_get(_local_url(settings, settings.mlflow_port) + "/health")
        if got is None:
            return False, "no answer on /health"
        return got[0] == 200, f"/health {got[0]}"
    if part == "airflow-api-server":
        if airflow is None:
            return False, "no 200 from /api/v2/monitor/health"
        db = (airflow.get("metadatabase") or {}).get("status")
        return db == "healthy", f"metadatabase {db}"
    if part in _HEALTH_KEY:
        if airflow is None:
            return False, "API server not answering"
        status = (airflow.get(_HEALTH_KEY[part]) or {}).get("status")
        return status == "healthy", f"{_HEALTH_KEY[part]} {status}"
    if part == "endpoint":
        got = _http_get(_local_url(settings, settings.endpoint_port) + "/health")
        if got is None:
            return False, "no answer on /health"
        try:
            status = json.loads(got[1]).get("status")
        except (ValueError, AttributeError):
            status = None
        # "no_model" is up too: the endpoint answers, it just has no champion to serve yet.
        return got[0] == 200 and status in ("ok", "no_model"), f"/health {got[0]} status={status}"
    raise StackError(f"unknown stack part {part!r}; expected one of {list(parts_of(settings))}")


def _warm_execution_api(settings: Settings) -> None:
    """Call ``/execution/health`` once: the execution API starts lazily and blocks for 5-7 s."""
    started = time.monotonic()
    got = _http_get(_local_url(settings, settings.airflow_port) + "/execution/health", timeout=120.0)
    log.info(
        "airflow-api-server: /execution/health -> %s in %.1f s",
        got[0] if got else "no answer",
        time.monotonic() - started,
    )


def _exit_reason(settings: Settings, part: str, pid: int, state: dict | None) -> str:
    """Why a part's process is gone, from its supervisor's state or the supervisor's own exit."""
    last = (state or {}).get("last_exit") or {}
    if last.get("code") is not None:
        how = f"exited with code {last['code']}"
    elif last.get("signal"):
        how = f"was killed by {last['signal']}"
    else:
        code = _exit_code(pid)
        if code is None:
            return f"process {pid} died before it answered its health check"
        how = f"exited with code {code}"
    uptime = f" (after {last['uptime_s']:.1f} s)" if last.get("uptime_s") is not None else ""
    return f"process {how} before it answered its health check{uptime}"


def _wait_healthy(
    settings: Settings, parts: list[str], pids: dict[str, int], deadlines: dict[str, float]
) -> None:
    """Wait until every part in ``parts`` is healthy; raise naming the first part that is not.

    A part whose process exits before its first healthy answer fails ``up`` at once, without waiting
    for the supervisor to restart it: the supervisor's state file (``$CT_HOME/run/<part>.state``)
    counts the child's exits, and one more exit than when the wait began is enough. The supervisor is
    then stopped with what it started, the pid file removed, and the error names the part, the exit
    code or signal and the tail of its log. (A part that cannot start should be fixed, not restarted
    for minutes inside ``up``; once a part was healthy, its supervisor restarts it when it dies.)
    """
    pending = list(parts)
    # A part launched here and not healthy yet counts every exit (its state file was removed before the
    # launch, and its child may have died already); one that was running counts from now on.
    exits_before = {
        part: 0 if pids[part] in _FRESH else int((part_state(settings, part) or {}).get("exits") or 0)
        for part in parts
    }
    while pending:
        airflow = airflow_health(settings) if any(is_airflow(p) for p in pending) else None
        now = time.monotonic()
        for part in list(pending):
            pid = pids[part]
            state = part_state(settings, part)
            exited = state is not None and (
                int(state.get("exits") or 0) > exits_before[part] or state.get("state") == "failed"
            )
            if exited or not pid_alive(pid):
                reason = _exit_reason(settings, part, pid, state)
                survivors = stop_session(pid, timeout=15.0)
                if not survivors:
                    pid_file(settings, part).unlink(missing_ok=True)
                raise _fail(settings, part, reason)
            healthy, detail = _part_health(settings, part, airflow)
            if healthy and _is_our_process(part, pid):
                log.info("%s: healthy (%s)", part, detail)
                _FRESH.discard(pid)
                pending.remove(part)
                continue
            if now > deadlines[part]:
                raise _fail(
                    settings, part, f"not healthy after {start_timeout(part):.0f} s (last check: {detail})"
                )
        if pending:
            time.sleep(0.5)


def _fail(settings: Settings, part: str, reason: str) -> StackError:
    path = log_file(settings, part)
    return StackError(
        f"stack part {part!r} did not come up: {reason}.\nLog: {path} (last {_LOG_TAIL_LINES} lines):\n"
        f"{_log_tail(path)}\nFix the cause, then run `ct stack up` again (parts already up are left "
        "alone) or `ct stack down`."
    )
