"""Outages on the cluster while work runs: the tracking server during a registration.

Runs after ``test_cluster.py`` (the demo leaves a champion serving).
"""

from __future__ import annotations

import time
from datetime import date

import pytest
from services import wait_until
from stacks import run_ct

pytestmark = pytest.mark.cluster

#: Longer than one MLflow call's retries inside a task (about 64 s), so the task itself fails and retries.
MLFLOW_OUTAGE_S = 90


@pytest.mark.timeout(2400)
def test_mlflow_down_during_registration_is_retried_and_the_endpoint_keeps_serving(cluster_stack):
    from bench.loop import Traffic
    from continuous_training.ops.simulate import SimulatorConfig, client_requests, to_json_rows
    from continuous_training.ops.stack import stack_down

    settings = cluster_stack.settings
    champion_before = cluster_stack.champion()
    assert champion_before is not None, "the demo test deploys a champion first"
    versions_before = {v["version"] for v in cluster_stack.versions()}
    traffic = Traffic(
        settings.endpoint_url, to_json_rows(client_requests(date(2026, 11, 12), SimulatorConfig(seed=5)))
    )
    traffic.start()
    run_id = "mlflow_outage__train"
    try:
        with cluster_stack.airflow() as client:
            client.trigger("train", run_id, {"reason": "MLflow outage test", "force": True})

            def registering():
                ti = client._get(f"/api/v2/dags/train/dagRuns/{run_id}/taskInstances/register")
                return ti if ti["state"] == "running" else None

            wait_until(registering, 900, "register running", interval=0.5)
            stack_down(settings, parts=["mlflow"])
            down_at = time.monotonic()
            time.sleep(MLFLOW_OUTAGE_S)
            run_ct(["stack", "up"], cluster_stack.env, cluster_stack.log, 600)
            cluster_stack.figures["mlflow_outage_s"] = round(time.monotonic() - down_at, 1)
            run = client.wait_for_run("train", run_id, timeout=1200)
            register = client._get(f"/api/v2/dags/train/dagRuns/{run_id}/taskInstances/register")
            states = client.task_states("train", run_id)
    finally:
        traffic.stop()
    cluster_stack.figures["register_tries"] = register["try_number"]
    failed = [answer for answer in traffic.answers if answer[1] != 200]
    assert traffic.answers, "the clients were answered during the test"
    assert not failed, (
        f"{len(failed)} of {len(traffic.answers)} requests failed during the outage: {traffic.errors[:3]}"
    )
    assert run["state"] == "success", states
    assert register["try_number"] >= 2, (
        "the outage outlasted the client's retries: the task failed and was retried"
    )
    new = {v["version"] for v in cluster_stack.versions()} - versions_before
    assert len(new) == 1, f"expected exactly one new version, found {sorted(new)}"
    assert cluster_stack.champion() == (new.pop() if states.get("deploy") == "success" else champion_before)
