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
from continuous_training.ops.stack.parts import AIRFLOW_PARTS, PARTS, START_TIMEOUT_S
from continuous_training.ops.stack.process import (
    _LOG_TAIL_LINES,
    _exit_code,
    _is_our_process,
    _log_tail,
    log_file,
    pid_alive,
    pid_file,
)
from continuous_training.settings import Settings

log = logging.getLogger(__name__)

#: The key of each Airflow worker part in the API server's health document.
_HEALTH_KEY = {
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag_processor",
    "airflow-triggerer": "triggerer",
}


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
    raise StackError(f"unknown stack part {part!r}; expected one of {list(PARTS)}")


def _warm_execution_api(settings: Settings) -> None:
    """Call ``/execution/health`` once: the execution API starts lazily and blocks for 5-7 s."""
    started = time.monotonic()
    got = _http_get(_local_url(settings, settings.airflow_port) + "/execution/health", timeout=120.0)
    log.info(
        "airflow-api-server: /execution/health -> %s in %.1f s",
        got[0] if got else "no answer",
        time.monotonic() - started,
    )


def _wait_healthy(
    settings: Settings, parts: list[str], pids: dict[str, int], deadlines: dict[str, float]
) -> None:
    """Wait until every part in ``parts`` is healthy; raise naming the first part that is not."""
    pending = list(parts)
    while pending:
        airflow = airflow_health(settings) if any(p in AIRFLOW_PARTS for p in pending) else None
        now = time.monotonic()
        for part in list(pending):
            pid = pids[part]
            healthy, detail = _part_health(settings, part, airflow)
            if healthy and _is_our_process(part, pid):
                log.info("%s: healthy (%s)", part, detail)
                pending.remove(part)
                continue
            if not pid_alive(pid):
                code = _exit_code(pid)
                pid_file(settings, part).unlink(missing_ok=True)
                reason = (
                    f"process exited with code {code} before it answered its health check"
                    if code is not None
                    else f"process {pid} died before it answered its health check"
                )
                raise _fail(settings, part, reason)
            if now > deadlines[part]:
                raise _fail(
                    settings, part, f"not healthy after {START_TIMEOUT_S[part]:.0f} s (last check: {detail})"
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
