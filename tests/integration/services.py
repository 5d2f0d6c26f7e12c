"""Session fixtures for the real services the integration tests talk to (imported by conftest.py).

Every service listens on loopback on the ports chosen in ``tests/conftest.py`` and writes under the
session's own CT_HOME, so a demo stack left running is never touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from continuous_training.settings import load_settings

BIN = Path(sys.executable).parent


def wait_http(
    url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(
                f"{proc.args[:3]} exited with {proc.returncode} before {url} answered:\n{tail}"
            )
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


def start_process(name: str, args: list[str], health_url: str, timeout: float = 120) -> subprocess.Popen:
    settings = load_settings()
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    log = settings.log_dir / f"{name}.log"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_http(health_url, timeout, proc, log)
    except Exception:
        stop_process(proc)
        raise
    return proc


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


@pytest.fixture(scope="session")
def smtp_sink() -> Iterator[Path]:
    """The project's SMTP sink on the session's SMTP port; yields the folder where mails land."""
    from continuous_training.ops.mailsink import MailSink

    settings = load_settings()
    sink = MailSink(settings.mail_dir, host=settings.host, port=settings.smtp_port)
    sink.start()
    yield settings.mail_dir
    sink.stop()


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A migrated Airflow metadata DB (SQLite) under the session's AIRFLOW_HOME."""
    out = subprocess.run([str(BIN / "airflow"), "db", "migrate"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


@pytest.fixture(scope="session")
def endpoint(mlflow_server: str) -> Iterator[str]:
    """The prediction endpoint (uvicorn, as many workers as the stack runs) serving `champion`."""
    settings = load_settings()
    os.environ.setdefault("CT_ENDPOINT_POLL_SECONDS", "1")
    os.environ.setdefault("CT_ENDPOINT_FLUSH_SECONDS", "1")
    proc = start_process(
        "endpoint",
        [
            str(BIN / "uvicorn"),
            "continuous_training.serving.app:create_app",
            "--factory",
            "--host",
            settings.host,
            "--port",
            str(settings.endpoint_port),
            "--workers",
            str(settings.endpoint_workers),
        ],
        f"{settings.endpoint_url}/health",
    )
    yield settings.endpoint_url
    stop_process(proc)
