"""A small client of the Airflow 3 REST API (``/api/v2``), used by ``ct demo`` and the system tests."""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx

log = logging.getLogger(__name__)

FINISHED = {"success", "failed"}


class AirflowClient:
    """Token-authenticated calls to the Airflow API server (simple auth manager)."""

    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)
        resp = self._http.post("/auth/token", json={"username": username, "password": password})
        if resp.status_code not in (200, 201):
            raise RuntimeError(
                f"Airflow login as {username!r} at {self.base_url} failed: {resp.status_code} {resp.text}"
            )
        self._http.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str, **params: Any) -> Any:
        resp = self._http.get(path, params=params or None)
        resp.raise_for_status()
        return resp.json()

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
        self._http.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()

    def trigger(self, dag_id: str, run_id: str, conf: dict[str, Any] | None = None) -> bool:
        """Trigger a run with a fixed id; False if a run with that id already exists (idempotent)."""
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf or {}}
        resp = self._http.post(f"/api/v2/dags/{dag_id}/dagRuns", json=body)
        if resp.status_code == 409:
            return False
        if resp.status_code >= 400:
            raise RuntimeError(f"Triggering {dag_id} ({run_id}) failed: {resp.status_code} {resp.text}")
        return True

    def run(self, dag_id: str, run_id: str) -> dict[str, Any] | None:
        resp = self._http.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
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
