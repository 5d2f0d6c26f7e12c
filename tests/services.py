"""Session fixtures for the real services the tests talk to (the conftest files of the suites that
need them import these).

Every service listens on loopback on the ports chosen in ``tests/conftest.py`` and writes under the
session's own CT_HOME, so a demo stack left running is never touched. MLflow runs as the stack runs
it: the basic-auth app with the project's accounts, and this process talks to it as ``ct-pipeline``
(``tests/conftest.py`` exported that account's credentials with the stack's environment).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from continuous_training.credentials import MLFLOW_ADMIN, mlflow_credentials
from continuous_training.settings import load_settings

BIN = Path(sys.executable).parent


#: The `ct` command of the venv running the tests.
CT = Path(sys.executable).parent / "ct"


def free_port() -> int:
    """A loopback port nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll until ``predicate()`` is truthy and return its value; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def publish_simulated_days(lake, days, seed: int, rows_per_day: int = 500) -> None:
    """Write simulated days straight into ``lake`` as validated partitions (data file + manifest)."""
    from continuous_training.config import load_contract
    from continuous_training.lake import (
        DATA_FILE,
        MANIFEST_FILE,
        write_json_atomic,
        write_parquet_bytes_stable,
    )
    from continuous_training.ops.simulate import SimulatorConfig, generate_day

    contract = load_contract()
    for day in days:
        df = generate_day(day, SimulatorConfig(seed=seed, rows_per_day=rows_per_day), contract)
        sha = write_parquet_bytes_stable(df, lake.validated(day) / DATA_FILE)
        write_json_atomic(lake.validated(day) / MANIFEST_FILE, {"day": day, "rows": len(df), "sha256": sha})


def own_model_env(model: str, lake: Path, port: int) -> dict[str, str]:
    """The environment of a test module that works on a registered model, a lake and an endpoint (on
    ``port``) of its own, so that nothing it does changes what other modules assert on."""
    return {
        "CT_MODEL_NAME": model,
        "CT_LAKE": str(lake),
        "CT_ENDPOINT_PORT": str(port),
        "CT_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }


def lineage(run: str) -> dict[str, str]:
    """The lineage a train DAG run ``run`` gives its model."""
    return {"dag_id": "train", "dag_run_id": run, "git_commit": "abc1234"}


def train_and_register(lake, run: str, max_iter: int) -> dict[str, Any]:
    """One challenger as the train DAG makes it on ``lake``'s validated days: trained (``max_iter``
    boosting rounds, a small reference sample), evaluated, gated (forced past no-regression),
    registered and signed. Its registered version (``name``, ``version``, ``run_id``)."""
    import dataclasses

    from continuous_training.adapter import steps
    from continuous_training.config import load_policy
    from continuous_training.model.train import train_challenger
    from continuous_training.model.training_set import build_training_set, select_training_days

    training_set = build_training_set(lake, select_training_days(lake, 28))
    policy = load_policy()
    policy = dataclasses.replace(
        policy,
        model=dataclasses.replace(policy.model, params={**policy.model.params, "max_iter": max_iter}),
        training=dataclasses.replace(policy.training, reference_sample_rows=500),
    )
    trained = train_challenger(training_set, reason=f"test {run}", lineage=lineage(run), policy=policy)
    evaluation = steps.evaluate(trained["run_id"])
    assert steps.gate(evaluation, force=True)["passed"]
    return steps.register(trained["run_id"], lineage(run))


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


def start_process(
    name: str, args: list[str], health_url: str, timeout: float = 120, extra_env: dict[str, str] | None = None
) -> subprocess.Popen:
    settings = load_settings()
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    log = settings.log_dir / f"{name}.log"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    env.update(extra_env or {})
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
def mlflow_server() -> Iterator[str]:
    """A real MLflow tracking server started like the stack's (basic-auth app, accounts provisioned).

    SQLite backend and proxied local artifacts under the session's CT_HOME, on the session's MLflow
    port. Yields its URL, also exported as ``CT_MLFLOW_TRACKING_URI`` and ``MLFLOW_TRACKING_URI``
    (child processes started later, such as the endpoint, inherit them).
    """
    from continuous_training.ops.stack.mlflow_auth import provision, server_args, server_env

    settings = load_settings()
    root = settings.mlflow_dir
    root.mkdir(parents=True, exist_ok=True)
    url = f"http://{settings.host}:{settings.mlflow_port}"
    saved = {key: os.environ.get(key) for key in ("CT_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI")}
    os.environ.update({key: url for key in saved})
    settings = load_settings()
    # The server's job runner (huey consumers for GenAI jobs) adds four Python processes that import
    # mlflow at start-up; this project uses none of those jobs.
    env = {**server_env(settings), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = start_process(
        "mlflow",
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            settings.host,
            "--port",
            str(settings.mlflow_port),
            "--workers",
            "1",
            *server_args(settings),
        ],
        f"{url}/health",
        timeout=180,
        extra_env=env,
    )
    try:
        provision(settings)
        yield url
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        stop_process(proc)


def mlflow_admin() -> httpx.Client:
    """An HTTP client on the session's MLflow server, authenticated as MLflow's ``admin``."""
    settings = load_settings()
    password = mlflow_credentials(settings)[MLFLOW_ADMIN]
    return httpx.Client(base_url=settings.mlflow_tracking_uri, auth=(MLFLOW_ADMIN, password), timeout=30)


def add_mlflow_user(username: str, password: str, grants: dict[tuple[str, str], str] | None = None) -> None:
    """Create an MLflow account (as admin) and grant it permissions.

    Args:
        username, password: the new account (MLflow wants 12 characters or more).
        grants: ``{(resource_type, resource_id): permission}``, e.g.
            ``{("registered_model", "loan_default"): "EDIT"}``.
    """
    with mlflow_admin() as admin:
        made = admin.post("/api/2.0/mlflow/users/create", json={"username": username, "password": password})
        # The auth app's error bodies are scrubbed of their text; the error code says why.
        assert made.status_code == 200 or "RESOURCE_ALREADY_EXISTS" in made.text, made.text
    for (resource_type, resource_id), permission in (grants or {}).items():
        grant_mlflow_permission(username, resource_type, resource_id, permission)


def grant_mlflow_permission(username: str, resource_type: str, resource_id: str, permission: str) -> None:
    """Grant an existing MLflow account a permission (as admin); granting it again is fine."""
    with mlflow_admin() as admin:
        granted = admin.post(
            "/api/3.0/mlflow/users/permissions/grant",
            json={
                "username": username,
                "resource_type": resource_type,
                "resource_id": resource_id,
                "permission": permission,
            },
        )
    assert granted.status_code == 200 or "RESOURCE_ALREADY_EXISTS" in granted.text, granted.text


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
    proc = start_endpoint("endpoint", settings, settings.endpoint_port)
    yield settings.endpoint_url
    stop_process(proc)


def start_endpoint(
    name: str, settings: Any, port: int, extra_env: dict[str, str] | None = None
) -> subprocess.Popen:
    """The prediction endpoint as the stack runs it (uvicorn, the stack's worker count) on ``port``."""
    return start_process(
        name,
        [
            str(BIN / "uvicorn"),
            "continuous_training.serving.app:create_app",
            "--factory",
            "--host",
            settings.host,
            "--port",
            str(port),
            "--workers",
            str(settings.endpoint_workers),
        ],
        f"http://{settings.host}:{port}/health",
        extra_env=extra_env,
    )


def isolated_stack_env(home: Path, **overrides: str) -> dict[str, str]:
    """The environment of a ``ct`` command for a stack of its own under ``home``, on free ports.

    Starts from ``os.environ`` without any ``CT_*``, ``AIRFLOW*`` or ``MLFLOW_*`` variable (the test
    session's own stack settings must not leak into the new stack), then sets ``CT_HOME``, the config
    folder and four free loopback ports; ``overrides`` are added last.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CT_", "AIRFLOW", "MLFLOW_"))}
    env.update(
        {
            "CT_HOME": str(home),
            "CT_CONFIG_DIR": str(Path(__file__).resolve().parents[1] / "include" / "config"),
            "CT_AIRFLOW_PORT": str(free_port()),
            "CT_MLFLOW_PORT": str(free_port()),
            "CT_ENDPOINT_PORT": str(free_port()),
            "CT_SMTP_PORT": str(free_port()),
        }
    )
    env.update(overrides)
    return env


def run_ct(args: list[str], env: dict[str, str], log: Path, timeout: float) -> None:
    """Run ``ct ARGS`` with ``env``, its output appended to ``log``; fail with the log's tail."""
    with open(log, "ab") as out:
        out.write(f"\n==== ct {' '.join(args)}\n".encode())
        out.flush()
        done = subprocess.run(
            [str(CT), *args], env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
        )
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise AssertionError(f"`ct {' '.join(args)}` exited with {done.returncode}; {log}:\n{tail}")


def processes_of_home(home: Path) -> dict[int, str]:
    """Live processes (pid -> command line) that belong to the state directory ``home``.

    A process belongs to it when its environment has ``CT_HOME=<home>`` or its working directory is
    inside ``home``. This process and its ancestors are never listed (a test has CT_HOME set too).
    Processes of other users, whose environment cannot be read, are skipped.
    """
    home = Path(home).resolve()
    marker = f"CT_HOME={home}".encode()
    skip: set[int] = set()
    pid = os.getpid()
    while pid > 1 and pid not in skip:
        skip.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state in ("Z", "X"):
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
            try:
                cwd = Path(os.readlink(entry / "cwd"))
            except OSError:
                cwd = None
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        inside = cwd is not None and (cwd == home or home in cwd.parents)
        if marker in environ or inside:
            found[int(entry.name)] = cmdline.strip()
    return found
