"""A small client of the Airflow 3 REST API (``/api/v2``), used by ``ct demo`` and the system tests.

Every call rides through a busy or restarting API server: connection errors (any
``httpx.TransportError``: refused, reset, timed out) and answers 429 or 5xx are retried with
exponential backoff and jitter, within a bounded time budget (:class:`RetryPolicy`, about 90 s by
default), each retry logged with its reason. Other 4xx answers fail at once with the response body
(:class:`AirflowAPIError`), except where a call gives them a meaning (404 of :meth:`AirflowClient.run`,
409 of :meth:`AirflowClient.trigger`). A 401 on a call (the token expired) logs in again once.

Retrying a POST is safe here because every run this project triggers has a fixed id: a retry of a
trigger whose first attempt did create the run (say the API server answered 500 after its commit, or
the connection dropped before the answer) gets 409, which :meth:`AirflowClient.trigger` treats as
"the run exists".
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger(__name__)

FINISHED = {"success", "failed"}

#: Statuses worth another attempt besides every 5xx: the server asked us to slow down.
_RETRY_4XX = frozenset({429})
_BODY_CHARS = 2000


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often a call is retried on a connection error, 429 or 5xx.

    The n-th retry waits ``d / 2 + uniform(0, d / 2)`` seconds, ``d = min(max_delay_s, base_delay_s *
    2 ** (n - 1))`` ("equal jitter": never less than half the backoff, so ten clients that failed
    together do not come back together). A ``Retry-After`` header (seconds) is honoured up to
    ``max_delay_s``. The call gives up after ``max_attempts`` attempts, or when the next wait would end
    more than ``budget_s`` after the first attempt started.
    """

    budget_s: float = 90.0
    max_attempts: int = 20
    base_delay_s: float = 0.5
    max_delay_s: float = 10.0

    def delay(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        backoff = min(self.max_delay_s, self.base_delay_s * 2 ** max(0, retry - 1))
        return backoff / 2 + rng.uniform(0, backoff / 2)


#: No retry at all (a probe that wants the first answer).
NO_RETRY = RetryPolicy(budget_s=0.0, max_attempts=1)


class AirflowAPIError(RuntimeError):
    """A call to the Airflow API failed: a 4xx, or a 5xx / connection error after every retry.

    Attributes:
        status_code: the last HTTP status, or None when the last attempt got no answer.
        body: the last response body (truncated), empty without an answer.
        attempts: how many attempts were made.
    """

    def __init__(
        self, message: str, status_code: int | None = None, body: str = "", attempts: int = 1
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body
        self.attempts = attempts


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare enough to fall back to the backoff


class AirflowClient:
    """Token-authenticated calls to the Airflow API server (simple auth manager), with retries.

    Args:
        base_url: the API server, e.g. ``http://127.0.0.1:8080``.
        username, password: a simple-auth-manager account.
        timeout: seconds per attempt (connect, read, write).
        retry: the retry policy of every call, the login included (the API server may be starting).

    Attributes:
        stats: counts of retried attempts by reason (``"500"``, ``"ConnectError"``, ...) and
            ``"attempts"``, for callers that report how rough the ride was (the load test).
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._rng = random.Random()
        self._username = username
        self._password = password
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)
        try:
            self._login()
        except BaseException:
            self._http.close()
            raise

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AirflowClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the one request loop

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def _login(self) -> None:
        try:
            resp = self._request(
                "POST",
                "/auth/token",
                json={"username": self._username, "password": self._password},
                relogin=False,
            )
        except AirflowAPIError as exc:
            raise AirflowAPIError(
                f"Airflow login as {self._username!r} at {self.base_url} failed: {exc}",
                exc.status_code,
                exc.body,
                exc.attempts,
            ) from exc
        self._http.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def _request(
        self,
        method: str,
        path: str,
        *,
        ok: tuple[int, ...] = (),
        relogin: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send with retries; return any answer below 400 or listed in ``ok``, raise on the rest.

        Args:
            method, path: the call.
            ok: statuses >= 400 that the caller handles itself (404 of a lookup, 409 of a trigger).
            relogin: on 401, log in again once and repeat (not for the login itself).
            kwargs: passed to ``httpx.Client.request``.

        Raises:
            AirflowAPIError: a 4xx not in ``ok`` (at once, with the body), or a 5xx / 429 /
                connection error still there when the retry policy is spent.
        """
        what = f"{method} {path}"
        policy = self.retry
        started = time.monotonic()
        attempt = 0
        relogged = not relogin
        while True:
            attempt += 1
            self._count("attempts")
            resp: httpx.Response | None = None
            error: httpx.TransportError | None = None
            try:
                resp = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                error = exc
            if resp is not None:
                status = resp.status_code
                if status < 400 or status in ok:
                    if attempt > 1:
                        log.info("Airflow %s: %s after %d attempts", what, status, attempt)
                    return resp
                if status == 401 and not relogged:
                    relogged = True
                    log.info("Airflow %s: 401 (token expired?); logging in again", what)
                    self._login()
                    attempt -= 1  # a fresh token is not a retry
                    continue
                if status < 500 and status not in _RETRY_4XX:
                    raise AirflowAPIError(
                        f"Airflow {what} failed: {status} {resp.text[:_BODY_CHARS]}",
                        status,
                        resp.text[:_BODY_CHARS],
                        attempt,
                    )
                reason = str(status)
                wait = policy.delay(attempt, self._rng)
                hinted = _retry_after(resp)
                if hinted is not None:
                    wait = min(policy.max_delay_s, max(wait, hinted))
            else:
                assert error is not None
                reason = type(error).__name__
                wait = policy.delay(attempt, self._rng)
            elapsed = time.monotonic() - started
            if attempt >= policy.max_attempts or elapsed + wait > policy.budget_s:
                detail = (
                    f"{resp.status_code} {resp.text[:_BODY_CHARS]}"
                    if resp is not None
                    else f"{reason}: {error}"
                )
                message = (
                    f"Airflow {what} failed after {attempt} attempt(s) in {elapsed:.1f} s "
                    f"(retry budget {policy.budget_s:.0f} s): {detail}"
                )
                exc = AirflowAPIError(
                    message,
                    resp.status_code if resp is not None else None,
                    resp.text[:_BODY_CHARS] if resp is not None else "",
                    attempt,
                )
                raise exc from error
            self._count(reason)
            log.warning(
                "Airflow %s: %s (attempt %d); retrying in %.1f s (%.0f s of %.0f s budget used)",
                what,
                reason if resp is None else f"{reason} {resp.text[:200]!r}",
                attempt,
                wait,
                elapsed,
                policy.budget_s,
            )
            time.sleep(wait)

    def _get(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, params=params or None).json()

    # ------------------------------------------------------------------ the API

    def dag_ids(self) -> set[str]:
        return {d["dag_id"] for d in self._get("/api/v2/dags", limit=100)["dags"]}

    def wait_for_dags(self, dag_ids: set[str], timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if dag_ids <= self.dag_ids():
                return
            time.sleep(2)
        raise TimeoutError(f"DAGs {sorted(dag_ids - self.dag_ids())} not parsed within {timeout:.0f}s")

    def unpause(self, dag_id: str) -> None:
        self._request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any] | None = None) -> bool:
        """Trigger a run with a fixed id; False if a run with that id already exists (idempotent).

        A retried trigger that gets 409 returns False too: the earlier attempt created the run.

        Raises:
            AirflowAPIError: a 4xx other than 409 (a Param that fails validation: 400), or the API
                still failing when the retry budget is spent.
        """
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf or {}}
        resp = self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body, ok=(409,))
        if resp.status_code == 409:
            return False
        return True

    def run(self, dag_id: str, run_id: str) -> dict[str, Any] | None:
        resp = self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", ok=(404,))
        if resp.status_code == 404:
            return None
        return resp.json()

    def runs(self, dag_id: str, limit: int = 100) -> list[dict[str, Any]]:
        return self._get(f"/api/v2/dags/{dag_id}/dagRuns", limit=limit, order_by="-run_after")["dag_runs"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        data = self._get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti["state"] for ti in data["task_instances"]}

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(dag_id, run_id)
            if run and run["state"] in FINISHED:
                return run
            time.sleep(2)
        raise TimeoutError(f"{dag_id} run {run_id} did not finish within {timeout:.0f}s")

    def wait_until_idle(self, dag_id: str, timeout: float = 900.0) -> None:
        """Wait until no run of ``dag_id`` is queued or running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(r["state"] in FINISHED for r in self.runs(dag_id)):
                return
            time.sleep(3)
        raise TimeoutError(f"{dag_id} still had active runs after {timeout:.0f}s")

    def task_instances(self, dag_id: str, run_id: str = "~") -> list[dict[str, Any]]:
        """Task instances of one run, or of every run with ``run_id="~"`` (state, hostname, pool, ...)."""
        return self._get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=1000)[
            "task_instances"
        ]
