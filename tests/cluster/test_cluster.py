"""The cluster (CeleryExecutor, two schedulers, PostgreSQL, Redis, DAGs from git) doing real work.

Run by ``make test-cluster``. In order, on one cluster:

1. the demo's loop end to end: every task instance ran on a Celery worker, the retrained champion
   serves, the mails arrived;
2. a DAG edit committed to the bundle's repository becomes a new DAG version, and the next run
   records that commit;
3. a worker SIGKILLed in the middle of ``train_challenger``: the task is retried on the other worker
   within the heartbeat timeout plus slack, exactly one new model version, the champion unchanged
   until the retry passed the gate.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from services import CT, wait_until
from stacks import commit, kill_tree, run_ct

from continuous_training.ops.mailsink import read_mail
from continuous_training.ops.simulate import DRIFT_COLUMNS

pytestmark = pytest.mark.cluster

WORKERS = {"worker-1", "worker-2"}
DEMO_TIMEOUT_S = 1500


def _task_instances(client, dag_id: str, run_id: str = "~") -> list[dict]:
    return client._get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=1000)["task_instances"]


@pytest.mark.timeout(2700)  # the cluster comes up in this test's setup, then the demo
def test_the_demo_loop_runs_every_task_on_a_celery_worker(cluster_stack):
    log = cluster_stack.home / "demo.log"
    started = time.monotonic()
    with open(log, "ab") as out:
        done = subprocess.run(
            [str(CT), "demo"],
            env=cluster_stack.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=DEMO_TIMEOUT_S,
        )
    cluster_stack.figures["demo_s"] = round(time.monotonic() - started, 1)
    assert done.returncode == 0, log.read_text(errors="replace")[-4000:]
    summary = cluster_stack.demo_summary()

    assert summary["champion_before"] is not None
    assert int(summary["champion_after"]) > int(summary["champion_before"])
    assert summary["endpoint_serves"] == summary["champion_after"]
    assert summary["traffic"]["rows"] > 0
    assert summary["traffic"]["failed_requests"] == 0
    assert set(summary["training_workers"].values()) <= WORKERS
    subjects = [m["Subject"] for m in read_mail(cluster_stack.settings.mail_dir)]
    assert sum("Bad data" in s for s in subjects) == 1
    drift = [s for s in subjects if "Drift in" in s]
    assert len(drift) == 1
    # The three most drifted columns by name, the rest counted.
    assert sum(column in drift[0] for column in DRIFT_COLUMNS) == 3
    assert f"and {len(DRIFT_COLUMNS) - 3} more" in drift[0]
    assert drift[0].endswith(": retraining")
    # The retraining it triggered closes it with one mail: the new champion.
    (closing,) = [
        s for s in subjects if s.startswith("[ct] Retraining after monitor run demo__monitor__drift")
    ]
    assert closing.endswith(f": new champion v{summary['champion_after']}")

    with cluster_stack.airflow() as client:
        executed = [
            ti
            for dag_id in ("ingest", "train", "monitor")
            for ti in _task_instances(client, dag_id)
            if ti["state"] in ("success", "failed", "up_for_retry")
        ]
    assert executed
    hosts = {ti["hostname"] for ti in executed}
    assert hosts <= WORKERS, f"task instances ran outside the Celery workers: {hosts - WORKERS}"
    assert hosts == WORKERS, "both workers took work"
    trainings = [ti for ti in executed if ti["task_id"] == "train_challenger"]
    assert trainings
    assert all(ti["pool"] == "training" and ti["queue"] == "training" for ti in trainings)


def test_a_committed_dag_edit_is_a_new_dag_version_the_next_run_uses(cluster_stack):
    dag_file = Path(cluster_stack.dags_repo) / "dags" / "train.py"
    text = dag_file.read_text()
    marker = "Re-running or clearing any task is safe"
    assert marker in text
    dag_file.write_text(
        text.replace(marker, "Edited in the bundle's repository by the cluster test. " + marker, 1)
    )
    sha = commit(cluster_stack.dags_repo, "train: say where this version came from")
    committed = time.monotonic()

    with cluster_stack.airflow() as client:

        def version_of_commit():
            versions = client._get("/api/v2/dags/train/dagVersions", limit=100)["dag_versions"]
            return next((v for v in versions if v["bundle_version"] == sha), None)

        version = wait_until(
            version_of_commit, 240, f"a DAG version of train at commit {sha[:8]}", interval=2
        )
        cluster_stack.figures["dag_version_after_commit_s"] = round(time.monotonic() - committed, 1)
        assert version["bundle_name"] == "ct-dags"
        details = client._get("/api/v2/dags/train/details")
        assert "Edited in the bundle's repository" in (details.get("doc_md") or "")

        run_id = f"bundle_edit__{sha[:8]}"
        client.trigger("train", run_id, {"reason": "the DAG edit test"})
        run = client.wait_for_run("train", run_id, timeout=600)
    assert run["bundle_version"] == sha
    assert any(v["bundle_version"] == sha for v in run["dag_versions"])


@pytest.mark.timeout(2400)
def test_a_worker_killed_mid_training_is_retried_on_the_other_one(cluster_stack):
    versions_before = {v["version"] for v in cluster_stack.versions()}
    champion_before = cluster_stack.champion()
    assert champion_before is not None, "the demo test deploys a champion first"
    run_id = "worker_kill__train"
    with cluster_stack.airflow() as client:
        client.trigger("train", run_id, {"reason": "worker kill test", "force": True})

        def training_attempt(try_number: int):
            ti = client._get(f"/api/v2/dags/train/dagRuns/{run_id}/taskInstances/train_challenger")
            return (
                ti if ti["state"] == "running" and ti["try_number"] == try_number and ti["hostname"] else None
            )

        first = wait_until(lambda: training_attempt(1), 300, "train_challenger running", interval=0.5)
        victim = first["hostname"]
        assert victim in WORKERS
        time.sleep(3)  # in the middle: a training here takes tens of seconds
        # The whole part, its supervisor included: the machine is gone, nothing restarts the worker.
        killed = kill_tree(cluster_stack.part_pid(f"airflow-{victim}"))
        killed_at = time.monotonic()

        second = wait_until(
            lambda: training_attempt(2), 600, "the retry of train_challenger running", interval=1
        )
        cluster_stack.figures["kill_to_retry_running_s"] = round(time.monotonic() - killed_at, 1)
        assert second["hostname"] in WORKERS - {victim}
        assert cluster_stack.champion() == champion_before, "no promotion before the retry passed the gate"
        run = client.wait_for_run("train", run_id, timeout=900)
        states = {ti["task_id"]: ti["state"] for ti in _task_instances(client, "train", run_id)}
    assert run["state"] == "success", states
    new = {v["version"] for v in cluster_stack.versions()} - versions_before
    assert len(new) == 1, f"expected exactly one new model version, found {sorted(new)}"
    if states.get("deploy") == "success":
        assert cluster_stack.champion() == new.pop()
    else:
        assert cluster_stack.champion() == champion_before
    print(f"killed {victim} ({len(killed)} processes); retry ran on {second['hostname']}")
    # `up` starts what is missing (the killed worker) and leaves the rest alone.
    run_ct(["stack", "up"], cluster_stack.env, cluster_stack.log, 600)
    assert all(info["healthy"] for info in cluster_stack.status().values())
