"""The Airflow REST client's retries, against a real HTTP server on loopback (no mock of httpx).

The server answers from a script per (method, path): a list of steps, each a status (with an optional
body and headers) or ``"drop"`` (the connection is closed without an answer); the last step repeats.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from continuous_training.ops.airflow_client import AirflowAPIError, AirflowClient, RetryPolicy

FAST = RetryPolicy(budget_s=10.0, max_attempts=10, base_delay_s=0.01, max_delay_s=0.05)
TOKEN = {"status": 201, "body": {"access_token": "t1"}}


class ScriptedServer:
    """A threading HTTP server whose answers follow a script; it records every request."""

    def __init__(self, port: int = 0) -> None:
        self.script: dict[tuple[str, str], list[Any]] = {("POST", "/auth/token"): [TOKEN]}
        self.requests: list[tuple[str, str, dict[str, Any] | None, str | None]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                path = self.path.split("?", 1)[0]
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with server.lock:
                    server.requests.append((self.command, path, body, self.headers.get("Authorization")))
                    steps = server.script.get((self.command, path), [{"status": 404}])
                    step = steps.pop(0) if len(steps) > 1 else steps[0]
                if callable(step):
                    step = step(self.headers)
                if step == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                payload = json.dumps(step.get("body", {})).encode()
                self.send_response(step["status"])
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in step.get("headers", {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def calls(self, method: str, path: str) -> int:
        return sum(1 for m, p, _, _ in self.requests if (m, p) == (method, path))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    srv = ScriptedServer()
    yield srv
    srv.close()


def _client(server: ScriptedServer, retry: RetryPolicy = FAST) -> AirflowClient:
    return AirflowClient(server.url, "admin", "pw", timeout=5.0, retry=retry)


RUNS = "/api/v2/dags/train/dagRuns"


def test_trigger_rides_through_500_and_503_then_succeeds(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.script[("POST", RUNS)] = [
        {"status": 500, "body": {"detail": "database is locked"}},
        {"status": 503},
        {"status": 500},
        {"status": 200, "body": {"dag_run_id": "r1"}},
    ]
    with (
        caplog.at_level(logging.WARNING, logger="continuous_training.ops.airflow_client"),
        _client(server) as af,
    ):
        assert af.trigger("train", "r1", {"reason": "x"}) is True
        assert af.stats["500"] == 2
        assert af.stats["503"] == 1
    assert server.calls("POST", RUNS) == 4
    bodies = [b for m, p, b, _ in server.requests if (m, p) == ("POST", RUNS)]
    assert all(b == {"dag_run_id": "r1", "logical_date": None, "conf": {"reason": "x"}} for b in bodies)
    assert caplog.text.count("retrying in") == 3
    assert "database is locked" in caplog.text


def test_a_retried_trigger_that_gets_409_means_the_first_attempt_went_through(server: ScriptedServer) -> None:
    server.script[("POST", RUNS)] = [{"status": 500}, {"status": 409, "body": {"detail": "exists"}}]
    with _client(server) as af:
        assert af.trigger("train", "r1") is False
    assert server.calls("POST", RUNS) == 2


def test_dropped_connections_are_retried(server: ScriptedServer) -> None:
    server.script[("GET", f"{RUNS}/r1")] = ["drop", "drop", {"status": 200, "body": {"state": "success"}}]
    with _client(server) as af:
        assert af.run("train", "r1") == {"state": "success"}
        assert af.stats["RemoteProtocolError"] == 2


def test_a_4xx_fails_at_once_with_the_body(server: ScriptedServer) -> None:
    server.script[("POST", RUNS)] = [{"status": 400, "body": {"detail": "window_days: 1 is less than 2"}}]
    with _client(server) as af, pytest.raises(AirflowAPIError) as info:
        af.trigger("train", "r1", {"window_days": 1})
    assert info.value.status_code == 400
    assert info.value.attempts == 1
    assert "window_days: 1 is less than 2" in str(info.value)
    assert server.calls("POST", RUNS) == 1


def test_404_of_a_run_lookup_is_none_not_an_error(server: ScriptedServer) -> None:
    with _client(server) as af:
        assert af.run("train", "nope") is None
    assert server.calls("GET", f"{RUNS}/nope") == 1


def test_the_retry_budget_bounds_a_call_that_keeps_failing(server: ScriptedServer) -> None:
    server.script[("GET", "/api/v2/dags")] = [{"status": 503, "body": {"detail": "still down"}}]
    policy = RetryPolicy(budget_s=1.0, max_attempts=100, base_delay_s=0.05, max_delay_s=0.2)
    with _client(server, policy) as af:
        started = time.monotonic()
        with pytest.raises(AirflowAPIError) as info:
            af.dag_ids()
        elapsed = time.monotonic() - started
    assert elapsed < 2.0
    assert info.value.status_code == 503
    assert info.value.attempts >= 3
    assert "retry budget" in str(info.value)
    assert "still down" in str(info.value)


def test_429_waits_as_long_as_retry_after_says_up_to_the_cap(server: ScriptedServer) -> None:
    server.script[("GET", "/api/v2/dags")] = [
        {"status": 429, "headers": {"Retry-After": "0.3"}},
        {"status": 200, "body": {"dags": [{"dag_id": "train"}]}},
    ]
    policy = RetryPolicy(budget_s=5.0, base_delay_s=0.01, max_delay_s=1.0)
    with _client(server, policy) as af:
        started = time.monotonic()
        assert af.dag_ids() == {"train"}
        assert time.monotonic() - started >= 0.3


def test_login_waits_for_an_api_server_that_is_still_starting() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    holder: dict[str, ScriptedServer] = {}

    def start_later() -> None:
        time.sleep(0.8)
        holder["server"] = ScriptedServer(port)

    starter = threading.Thread(target=start_later)
    starter.start()
    try:
        policy = RetryPolicy(budget_s=10.0, base_delay_s=0.1, max_delay_s=0.3)
        with AirflowClient(f"http://127.0.0.1:{port}", "admin", "pw", retry=policy) as af:
            assert af.stats["ConnectError"] >= 1
    finally:
        starter.join()
        if "server" in holder:
            holder["server"].close()


def test_a_wrong_password_fails_the_login_at_once(server: ScriptedServer) -> None:
    server.script[("POST", "/auth/token")] = [{"status": 401, "body": {"detail": "Invalid credentials"}}]
    with pytest.raises(AirflowAPIError, match="login as 'admin'.*401.*Invalid credentials"):
        _client(server)
    assert server.calls("POST", "/auth/token") == 1


def test_an_expired_token_logs_in_again_once(server: ScriptedServer) -> None:
    server.script[("POST", "/auth/token")] = [TOKEN, {"status": 201, "body": {"access_token": "t2"}}]
    server.script[("GET", "/api/v2/dags")] = [
        lambda headers: (
            {"status": 200, "body": {"dags": []}}
            if headers.get("Authorization") == "Bearer t2"
            else {"status": 401, "body": {"detail": "token expired"}}
        )
    ]
    with _client(server) as af:
        assert af.dag_ids() == set()
    assert server.calls("POST", "/auth/token") == 2
    assert [auth for m, p, _, auth in server.requests if p == "/api/v2/dags"] == ["Bearer t1", "Bearer t2"]


def test_the_demo_polls_through_an_api_that_is_still_failing_but_not_through_a_4xx(
    server: ScriptedServer,
) -> None:
    from continuous_training.ops.demo import _wait

    server.script[("GET", f"{RUNS}/r1")] = [{"status": 503}, {"status": 200, "body": {"state": "success"}}]
    no_retry = RetryPolicy(budget_s=0.0, max_attempts=1)
    with _client(server, no_retry) as af:
        assert _wait(lambda: af.run("train", "r1"), "the run", timeout=10, every=0.05) == {"state": "success"}
        server.script[("GET", f"{RUNS}/r2")] = [{"status": 403, "body": {"detail": "forbidden"}}]
        with pytest.raises(AirflowAPIError, match="403"):
            _wait(lambda: af.run("train", "r2"), "the run", timeout=10, every=0.05)
    assert server.calls("GET", f"{RUNS}/r2") == 1
