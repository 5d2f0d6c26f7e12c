"""Benchmark 6: 30 days ingested at once, on the cluster (CeleryExecutor) against the embedded stack.

Each deployment gets a stack of its own (``ct stack up`` / ``ct stack up --cluster`` under its own
state dir and free ports). The ``train`` and ``monitor`` DAGs are paused, 30 simulated days land, and 30
``ingest`` runs are triggered at once over the REST API. The figures, the embedded stack being the
anchor:

* wall time from the first trigger to the last run's end (the 30 triggers are sent back to back by
  one client, a second or two);
* where a task's time goes, as medians over every task instance: waiting for the scheduler
  (``scheduled`` to ``queued``), waiting for the executor (``queued`` to ``running``: LocalExecutor's
  pre-forked workers vs Celery's broker round trip and worker pickup), and running (a task process
  starts, parses its DAG file, runs our code and reports back).

Then, on the cluster only, the loop figure of benchmark 5 (first drifted batch landing to every answer
from the new champion, failed requests) through the same demo.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.core import BenchContext, Figure, free_port

DAYS = 30
FIRST_DAY = date(2026, 3, 2)
RUNS_TIMEOUT_S = 1800
CT = Path(sys.executable).parent / "ct"


def _env(home: Path, cluster: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CT_", "AIRFLOW", "MLFLOW_"))}
    env.update(
        {
            "CT_HOME": str(home),
            "CT_AIRFLOW_PORT": str(free_port()),
            "CT_MLFLOW_PORT": str(free_port()),
            "CT_ENDPOINT_PORT": str(free_port()),
            "CT_SMTP_PORT": str(free_port()),
        }
    )
    if cluster:
        # PostgreSQL runs as its own user when we are root: it must be able to pass through the
        # scratch folder (a private temporary folder) to reach the stack's home.
        home.parent.chmod(home.parent.stat().st_mode | 0o001)
        env.update(
            {
                "CT_DEPLOYMENT": "cluster",
                "CT_POSTGRES_PORT": str(free_port()),
                "CT_REDIS_PORT": str(free_port()),
                "CT_DAGS_REPO": str(_dags_repo(home / "dags-repo")),
            }
        )
    return env


def _dags_repo(folder: Path) -> Path:
    """This checkout's ``dags/`` as a one-commit git repository (the cluster's DAG bundle)."""
    import shutil

    from bench.core import REPO

    shutil.copytree(REPO / "dags", folder / "dags", ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-C", str(folder), "-c", "user.name=ct-bench", "-c", "user.email=ct-bench@localhost"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(folder)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "bench"], check=True)
    return folder


def _ct(args: list[str], env: dict[str, str], log: Path, timeout: float = 900) -> None:
    with open(log, "ab") as out:
        done = subprocess.run(
            [str(CT), *args], env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
        )
    if done.returncode != 0:
        raise RuntimeError(f"`ct {' '.join(args)}` exited with {done.returncode}; see {log}")


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def ingest_burst(ctx: BenchContext, cluster: bool) -> dict[str, Any]:
    """Bring a stack up, ingest :data:`DAYS` days at once, return the timings; the stack is stopped."""
    from continuous_training.lake import Lake
    from continuous_training.ops.airflow_client import AirflowClient
    from continuous_training.ops.simulate import SimulatorConfig, land_day
    from continuous_training.ops.stack import airflow_password
    from continuous_training.settings import load_settings

    mode = "cluster" if cluster else "embedded"
    home = ctx.workdir / f"executors-{mode}"
    home.mkdir(parents=True, exist_ok=True)
    env = _env(home, cluster)
    settings = load_settings(env)
    log = home / "ct.log"
    t0 = time.monotonic()
    try:
        # Inside the try: a failed `up` leaves the parts that did start running, and `down` stops them.
        _ct(["stack", "up"], env, log)
        up_s = time.monotonic() - t0
        client = AirflowClient(settings.airflow_url, "admin", airflow_password(settings))
        client.wait_for_dags({"ingest", "train", "monitor"})
        for dag_id in ("train", "monitor"):
            client._request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": True})
        lake = Lake(settings.lake)
        sim = SimulatorConfig(seed=7)
        days = [FIRST_DAY + timedelta(days=i) for i in range(DAYS)]
        for day in days:
            land_day(lake, day, sim)
        run_ids = [f"bench__ingest__{day}" for day in days]
        # One client, back to back: what is measured is the executors, not the API under 30 writers
        # (on SQLite that many simultaneous clients outlast the retries: see the README).
        started = time.time()
        for day, run_id in zip(days, run_ids, strict=True):
            client.trigger("ingest", run_id, {"day": day.isoformat()})
        triggered_s = time.time() - started
        runs = [client.wait_for_run("ingest", run_id, timeout=RUNS_TIMEOUT_S) for run_id in run_ids]
        ended = max(_ts(r["end_date"]) or 0.0 for r in runs)
        tis = [
            ti
            for run_id in run_ids
            for ti in client._get(f"/api/v2/dags/ingest/dagRuns/{run_id}/taskInstances")["task_instances"]
            if ti["start_date"] and ti["end_date"]
        ]
        client.close()
    finally:
        _ct(["stack", "down"], env, log)
    waits = {
        "scheduler_s": [
            _ts(t["queued_when"]) - _ts(t["scheduled_when"])
            for t in tis
            if t["queued_when"] and t["scheduled_when"]
        ],
        "executor_s": [_ts(t["start_date"]) - _ts(t["queued_when"]) for t in tis if t["queued_when"]],
        "running_s": [float(t["duration"]) for t in tis if t["duration"] is not None],
    }
    result = {
        "mode": mode,
        "stack_up_s": round(up_s, 1),
        "wall_s": round(ended - started, 1),
        "triggers_s": round(triggered_s, 1),
        "runs_failed": sum(r["state"] != "success" for r in runs),
        "task_instances": len(tis),
        **{f"median_{k}": _median(v) for k, v in waits.items()},
        "hosts": sorted({t["hostname"] for t in tis}),
    }
    ctx.log(f"executors: {mode}: {result}")
    return result


def cluster_loop(ctx: BenchContext) -> list[Figure]:
    """Benchmark 5's loop figures on a cluster of its own (the demo reads the process's environment)."""
    from bench import loop
    from continuous_training.ops.stack import pipeline_client_env
    from continuous_training.settings import load_settings

    home = ctx.workdir / "loop-cluster"
    home.mkdir(parents=True, exist_ok=True)
    env = _env(home, cluster=True)
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        settings = load_settings()
        os.environ.update(pipeline_client_env(settings))
        return loop.measure(ctx, settings, bench="executors", where=" (cluster)")
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run(ctx: BenchContext) -> list[Figure]:
    embedded = ingest_burst(ctx, cluster=False)
    cluster = ingest_burst(ctx, cluster=True)
    note = "anchor: the embedded stack (LocalExecutor, SQLite), same days, same machine"
    figures = [
        Figure(
            "executors",
            f"{DAYS} days ingested at once, wall time",
            "s",
            cluster["wall_s"],
            embedded["wall_s"],
            note=f"{note}; runs failed: cluster {cluster['runs_failed']}, embedded {embedded['runs_failed']}",
            detail={"cluster": cluster, "embedded": embedded},
        )
    ]
    for key, label in (
        ("median_scheduler_s", "task wait for the scheduler (scheduled->queued), median"),
        ("median_executor_s", "task wait for the executor (queued->running), median"),
        ("median_running_s", "task running (process, DAG parse, our code), median"),
    ):
        figures.append(Figure("executors", label, "s", cluster[key], embedded[key], note=note))
    return figures + cluster_loop(ctx)
