"""The cluster under test: ``ct stack up --cluster`` under a CT_HOME of its own, and what tests need of it.

``cluster_stack`` (session fixture, imported once by ``tests/cluster/conftest.py``) makes a git
repository from this checkout's ``dags/`` (the cluster's DAG bundle, so a test can commit to it),
starts the whole cluster with the ``ct`` command on free loopback ports (PostgreSQL and Redis of its
own), and at the end stops it and asserts that no process of that CT_HOME is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from services import free_port, isolated_stack_env, processes_of_home, run_ct

from continuous_training.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
UP_TIMEOUT_S = 900
DOWN_TIMEOUT_S = 300


def dags_repository(folder: Path) -> Path:
    """A git repository holding this checkout's ``dags/`` on branch ``main``.

    Made from the working tree, so uncommitted DAG edits are what the cluster runs.
    """
    shutil.copytree(REPO / "dags", folder / "dags", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q", "-b", "main", str(folder)], check=True)
    commit(folder, "DAGs of the checkout under test")
    return folder


def commit(repo: Path, message: str) -> str:
    """Commit everything in ``repo``; return the new commit's sha."""
    git = ["git", "-C", str(repo), "-c", "user.name=ct-tests", "-c", "user.email=ct-tests@localhost"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", message], check=True)
    return subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


@dataclass
class Cluster:
    """A running cluster: its settings, the ``ct`` environment, its DAG repository and a few probes."""

    home: Path
    env: dict[str, str]
    settings: Settings
    dags_repo: Path
    log: Path
    figures: dict[str, Any] = field(default_factory=dict)

    def airflow(self):
        from continuous_training.ops.airflow_client import AirflowClient
        from continuous_training.ops.stack import airflow_password

        return AirflowClient(self.settings.airflow_url, "admin", airflow_password(self.settings))

    def mlflow(self) -> httpx.Client:
        """The MLflow REST API as the pipeline's account."""
        from continuous_training.credentials import MLFLOW_PIPELINE, mlflow_credentials

        password = mlflow_credentials(self.settings)[MLFLOW_PIPELINE]
        return httpx.Client(
            base_url=self.settings.mlflow_tracking_uri, auth=(MLFLOW_PIPELINE, password), timeout=30
        )

    def model_name(self) -> str:
        from continuous_training.config import load_policy

        return load_policy(self.settings.config_dir).model.name

    def versions(self) -> list[dict[str, Any]]:
        with self.mlflow() as client:
            resp = client.get(
                "/api/2.0/mlflow/model-versions/search",
                params={"filter": f"name='{self.model_name()}'", "max_results": 1000},
            )
        resp.raise_for_status()
        return resp.json().get("model_versions", [])

    def champion(self) -> str | None:
        with self.mlflow() as client:
            resp = client.get(
                "/api/2.0/mlflow/registered-models/alias",
                params={"name": self.model_name(), "alias": "champion"},
            )
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        return resp.json()["model_version"]["version"]

    def status(self) -> dict[str, dict[str, Any]]:
        from continuous_training.ops.stack import stack_status

        return stack_status(self.settings)

    def part_pid(self, part: str) -> int:
        from continuous_training.ops.stack import read_pid

        pid = read_pid(self.settings, part)
        assert pid is not None, f"{part} has no pid file"
        return pid

    def child_pid(self, part: str) -> int:
        """The pid of the part's process itself (its supervisor's child), from the supervisor's state."""
        from continuous_training.ops.stack.process import part_state

        state = part_state(self.settings, part) or {}
        assert state.get("state") == "running", f"{part} is not running: {state}"
        assert state.get("child_pid"), f"{part} has no child: {state}"
        return int(state["child_pid"])

    def restarts(self) -> dict[str, int]:
        """Part -> restarts its supervisor made so far."""
        return {part: info["restarts"] for part, info in self.status().items()}

    def demo_summary(self) -> dict[str, Any]:
        return json.loads((self.settings.demo_dir / "summary.json").read_text())


def descendants(root: int) -> list[int]:
    """``root``'s descendants (children first), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop(0)
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def kill_tree(root: int) -> list[int]:
    """SIGKILL ``root`` and every descendant at once (a task runs in its own process group)."""
    victims = [root, *descendants(root)]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return victims


@pytest.fixture(scope="session")
def cluster_stack() -> Iterator[Cluster]:
    home = Path(tempfile.mkdtemp(prefix="ct-cluster-")).resolve()
    repo = dags_repository(home / "dags-repo")
    env = isolated_stack_env(
        home,
        CT_DEPLOYMENT="cluster",
        CT_POSTGRES_PORT=str(free_port()),
        CT_REDIS_PORT=str(free_port()),
        CT_DAGS_REPO=str(repo),
        CT_DAGS_REF="main",
        # Failures are what these tests cause: a task gets retried, soon.
        CT_TASK_RETRIES="2",
        CT_TASK_RETRY_DELAY_SECONDS="5",
    )
    settings = load_settings(env)
    log = home / "ct-commands.log"
    cluster = Cluster(home=home, env=env, settings=settings, dags_repo=repo, log=log)
    started = time.monotonic()
    try:
        run_ct(["stack", "up"], env, log, UP_TIMEOUT_S)
        cluster.figures["stack_up_s"] = round(time.monotonic() - started, 1)
        yield cluster
    finally:
        down = time.monotonic()
        run_ct(["stack", "down"], env, log, DOWN_TIMEOUT_S)
        print(
            f"\ncluster {home}: `ct stack down` took {time.monotonic() - down:.1f} s; figures {cluster.figures}"
        )
        left = processes_of_home(home)
        assert not left, f"still running after `ct stack down` ({home}): {left}"
