"""Parts of the cluster failing while a ``train`` run is in flight.

Runs after ``test_cluster.py`` (the demo leaves a champion serving and data in the lake). Each test
forces one ``train`` run (about a minute of work on the cluster), breaks one part at a chosen task,
and checks what the reliability checklist asks of that failure: the run ends in a defined state
within a bound, nothing stays queued or running, no side effect happened twice (model versions,
moves of the champion alias, mails), and the stack is whole again afterwards.

Parts are broken the way they break in production: a worker is stopped with SIGTERM (a node drained),
Redis and PostgreSQL are killed and come back through their supervisor with no ``ct`` command (a
crash; Redis has no persistence, so what it held is gone), a scheduler is SIGKILLed with its
supervisor (the machine is gone) and the other one restarted.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest
from services import wait_until
from stacks import Cluster, kill_tree, run_ct

from continuous_training.ops.mailsink import read_mail
from continuous_training.ops.stack.task_env import HEARTBEAT_TIMEOUT_S

pytestmark = pytest.mark.cluster

WORKERS = {"worker-1", "worker-2"}
#: A forced ``train`` run takes about a minute on the cluster; this is the bound for a run's end
#: after the failure, when no task had to wait for the heartbeat timeout.
RUN_BOUND_S = 420
#: States a task instance must not be left in once its run ended.
UNFINISHED = {"queued", "running", "scheduled", "up_for_retry", "restarting", "deferred"}
#: Redis stays down this long after the next task was queued (the publish keeps being retried).
REDIS_DOWN_AFTER_QUEUED_S = 20
#: PostgreSQL stays down this long: longer than the restarts a supervisor allows would last
#: (1 + 2 + 4 + 8 + 16 s of backoff, each start failing within seconds).
POSTGRES_DOWN_S = 75
#: How long the cluster has to be whole again, with no ``ct`` command, after Redis or PostgreSQL
#: came back (the supervisor's restarts of the parts that died with it, and their first heartbeat).
RECOVERY_S = 180


def _ti(client, run_id: str, task_id: str) -> dict[str, Any]:
    return client._get(f"/api/v2/dags/train/dagRuns/{run_id}/taskInstances/{task_id}")


def _running(client, run_id: str, task_id: str, try_number: int | None = None) -> dict[str, Any] | None:
    ti = _ti(client, run_id, task_id)
    if ti["state"] != "running" or not ti["hostname"]:
        return None
    return ti if try_number is None or ti["try_number"] == try_number else None


def _alias_moves(cluster: Cluster, run_id: str) -> list[str]:
    """The champion alias moves the run's ``deploy`` task logged, over all its attempts."""
    folder = cluster.settings.airflow_home / "logs" / "dag_id=train" / f"run_id={run_id}" / "task_id=deploy"
    moves = []
    for attempt in sorted(folder.glob("attempt=*.log")):
        for line in attempt.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line).get("event", "")
            except ValueError:
                continue
            if isinstance(event, str) and event.startswith("Alias champion of") and " moved from " in event:
                moves.append(event)
    return moves


class Baseline:
    """What exists before a test's run, to count the run's side effects against."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.versions = {v["version"] for v in cluster.versions()}
        self.champion = cluster.champion()
        self.mails = len(read_mail(cluster.settings.mail_dir))
        assert self.champion is not None, "the demo test deploys a champion first"

    def check_side_effects(self, client, run_id: str) -> dict[str, str | None]:
        """The run's work happened once: one version if it registered, one alias move at most, no mail twice."""
        states = client.task_states("train", run_id)
        left = {task: state for task, state in states.items() if state in UNFINISHED}
        assert not left, f"task instances of {run_id} left unfinished: {left}"
        new = {v["version"] for v in self.cluster.versions()} - self.versions
        registered = states.get("register") == "success"
        assert len(new) == int(registered), f"{run_id} registered {registered}: new versions {sorted(new)}"
        version = next(iter(new), None)
        moves = _alias_moves(self.cluster, run_id)
        assert len(moves) <= 1, f"the champion alias moved {len(moves)} times: {moves}"
        if states.get("deploy") == "success":
            assert self.cluster.champion() == version
            assert len(moves) == 1
        else:
            assert self.cluster.champion() == self.champion
            assert not moves
        subjects = [m["Subject"] for m in read_mail(self.cluster.settings.mail_dir)[self.mails :]]
        assert len(subjects) == len(set(subjects)), f"a mail was sent twice: {subjects}"
        blocked = [s for s in subjects if "gate" in s.lower() and "block" in s.lower()]
        assert len(blocked) == (1 if states.get("notify_gate_blocked") == "success" else 0), subjects
        return states


def _restored(cluster: Cluster) -> None:
    """``ct stack up`` starts what a test stopped for good; then every part is healthy."""
    run_ct(["stack", "up"], cluster.env, cluster.log, 600)
    unhealthy = {p: i["health"] for p, i in cluster.status().items() if not i["healthy"]}
    assert not unhealthy, unhealthy


def _whole_without_ct(cluster: Cluster, timeout: float) -> float:
    """Seconds until every part is healthy again by itself (supervisors only, no ``ct`` command)."""
    started = time.monotonic()

    def whole():
        status = cluster.status()
        failed = {p: i["last_reason"] for p, i in status.items() if i["state"] == "failed"}
        assert not failed, f"a supervisor gave up: {failed}"
        return all(info["healthy"] and info["state"] == "running" for info in status.values())

    wait_until(whole, timeout, "every part of the cluster healthy again", interval=2)
    return round(time.monotonic() - started, 1)


@pytest.mark.timeout(1200)
def test_a_worker_stopped_with_sigterm_during_a_short_task(cluster_stack):
    base = Baseline(cluster_stack)
    run_id = "worker_sigterm__train"
    with cluster_stack.airflow() as client:
        client.trigger("train", run_id, {"reason": "worker SIGTERM test", "force": True})
        short = wait_until(
            lambda: _running(client, run_id, "build_training_set"), 300, "build_training_set running", 0.2
        )
        victim = short["hostname"]
        assert victim in WORKERS
        stopping = time.monotonic()
        # What a drained node does: SIGTERM to the worker, which stops taking work and finishes
        # what it runs (Celery's warm shutdown); its supervisor kills the rest after its stop timeout.
        from continuous_training.ops.stack import stack_down

        stack_down(cluster_stack.settings, parts=[f"airflow-{victim}"])
        cluster_stack.figures["worker_sigterm_stop_s"] = round(time.monotonic() - stopping, 1)
        run = client.wait_for_run("train", run_id, timeout=HEARTBEAT_TIMEOUT_S + RUN_BOUND_S)
        cluster_stack.figures["worker_sigterm_run_end_s"] = round(time.monotonic() - stopping, 1)
        states = base.check_side_effects(client, run_id)
        short_after = _ti(client, run_id, "build_training_set")
        others = {
            ti["hostname"]
            for ti in client.task_instances("train", run_id)
            if ti["task_id"] != "build_training_set"
        }
    assert run["state"] == "success", states
    # The short task either finished on the stopped worker or was retried on the other one.
    assert (short_after["try_number"], short_after["hostname"]) == (1, victim) or (
        short_after["try_number"] > 1 and short_after["hostname"] in WORKERS - {victim}
    ), short_after
    assert others - {None, ""} <= WORKERS - {victim}, f"tasks ran on the stopped worker afterwards: {others}"
    cluster_stack.figures["worker_sigterm_short_task"] = (
        f"try {short_after['try_number']} on {short_after['hostname']}"
    )
    _restored(cluster_stack)


@pytest.mark.timeout(1200)
def test_redis_restarted_during_a_run(cluster_stack):
    base = Baseline(cluster_stack)
    restarts = cluster_stack.restarts()
    run_id = "redis_restart__train"
    with cluster_stack.airflow() as client:
        client.trigger("train", run_id, {"reason": "Redis restart test", "force": True})
        training = wait_until(
            lambda: _running(client, run_id, "train_challenger"), 300, "train_challenger running", 0.5
        )
        # Redis goes away (its supervisor too: it stays down until started again) while the training
        # runs: the training's unacknowledged message is lost, and the next task is queued while the
        # broker refuses connections.
        kill_tree(cluster_stack.part_pid("redis"))
        down_at = time.monotonic()
        wait_until(
            lambda: _ti(client, run_id, "evaluate")["state"] == "queued", RUN_BOUND_S, "evaluate queued", 0.5
        )
        time.sleep(REDIS_DOWN_AFTER_QUEUED_S)
        during = cluster_stack.status()
        # Started again, empty (no persistence), by `ct stack up`, which starts only what is missing.
        run_ct(["stack", "up"], cluster_stack.env, cluster_stack.log, 600)
        cluster_stack.figures["redis_down_s"] = round(time.monotonic() - down_at, 1)
        run = client.wait_for_run("train", run_id, timeout=RUN_BOUND_S)
        cluster_stack.figures["redis_restart_run_end_s"] = round(time.monotonic() - down_at, 1)
        states = base.check_side_effects(client, run_id)
        instances = client.task_instances("train", run_id)
    assert run["state"] == "success", states
    # Nothing died with the broker, nothing was failed for it: every task ran once, the training on
    # the worker it was running on when Redis died.
    others = {p: (i["state"], i["restarts"] - restarts[p]) for p, i in during.items() if p != "redis"}
    assert all(v == ("running", 0) for v in others.values()), f"parts hit by the Redis outage: {others}"
    tries = {ti["task_id"]: (ti["try_number"], ti["hostname"]) for ti in instances if ti["try_number"]}
    assert all(n == 1 for n, _ in tries.values()), f"a task was failed for the broker outage: {tries}"
    assert tries["train_challenger"] == (1, training["hostname"])
    evaluate = next(ti for ti in instances if ti["task_id"] == "evaluate")
    queued_s = _seconds(evaluate["queued_when"], evaluate["start_date"])
    cluster_stack.figures["redis_restart_evaluate_queued_s"] = queued_s
    assert queued_s <= cluster_stack.figures["redis_down_s"] + 60, f"evaluate stayed queued {queued_s} s"


@pytest.mark.timeout(1200)
def test_one_scheduler_killed_then_the_other_restarted(cluster_stack):
    base = Baseline(cluster_stack)
    restarts = cluster_stack.restarts()
    run_id = "scheduler_kill__train"
    with cluster_stack.airflow() as client:
        client.trigger("train", run_id, {"reason": "scheduler kill test", "force": True})
        wait_until(lambda: _running(client, run_id, "train_challenger"), 300, "train_challenger running", 0.5)
        # The machine of scheduler 1 is gone: no supervisor brings it back.
        kill_tree(cluster_stack.part_pid("airflow-scheduler-1"))
        killed_at = time.monotonic()
        # Scheduler 2 alone moves the run on...
        wait_until(
            lambda: (
                _ti(client, run_id, "train_challenger")["state"] == "success"
                and _ti(client, run_id, "evaluate")["state"] in ("queued", "running", "success")
            ),
            RUN_BOUND_S,
            "the run going on with one scheduler",
            interval=0.5,
        )
        # ...and is restarted in the middle of it (its supervisor starts it again).
        os.kill(cluster_stack.child_pid("airflow-scheduler-2"), signal.SIGTERM)
        run = client.wait_for_run("train", run_id, timeout=RUN_BOUND_S + HEARTBEAT_TIMEOUT_S)
        cluster_stack.figures["scheduler_kill_run_end_s"] = round(time.monotonic() - killed_at, 1)
        states = base.check_side_effects(client, run_id)
        tries = {ti["task_id"]: ti["try_number"] for ti in client.task_instances("train", run_id)}
    assert run["state"] == "success", states
    assert all(n <= 1 for n in tries.values()), f"a task ran twice: {tries}"
    assert cluster_stack.restarts()["airflow-scheduler-2"] == restarts["airflow-scheduler-2"] + 1
    _restored(cluster_stack)


@pytest.mark.timeout(1200)
def test_postgresql_restarted_during_a_run(cluster_stack):
    base = Baseline(cluster_stack)
    restarts = cluster_stack.restarts()
    supervisors = {
        part: cluster_stack.part_pid(part) for part in cluster_stack.status() if part != "postgres"
    }
    run_id = "postgres_restart__train"
    with cluster_stack.airflow() as client:
        client.trigger("train", run_id, {"reason": "PostgreSQL restart test", "force": True})
        wait_until(lambda: _running(client, run_id, "train_challenger"), 300, "train_challenger running", 0.5)
        # The database server goes away mid-training (killed, its supervisor too) for longer than the
        # parts that exit without it would take to spend their restarts, then comes back (crash
        # recovery from its WAL). `ct stack up` starts only what is not running: PostgreSQL.
        kill_tree(cluster_stack.part_pid("postgres"))
        down_at = time.monotonic()
        time.sleep(POSTGRES_DOWN_S)
        during = cluster_stack.status()
        run_ct(["stack", "up"], cluster_stack.env, cluster_stack.log, 600)
        cluster_stack.figures["postgres_down_s"] = round(time.monotonic() - down_at, 1)
        cluster_stack.figures["postgres_recovery_s"] = _whole_without_ct(cluster_stack, RECOVERY_S)
        run = client.wait_for_run("train", run_id, timeout=RUN_BOUND_S + HEARTBEAT_TIMEOUT_S)
        cluster_stack.figures["postgres_restart_run_end_s"] = round(time.monotonic() - down_at, 1)
        states = base.check_side_effects(client, run_id)
    waiting = sorted(part for part, info in during.items() if info["state"] == "waiting")
    cluster_stack.figures["postgres_outage_waiting"] = waiting
    assert "airflow-scheduler-1" in waiting, f"the schedulers exit without their database: {during}"
    # No part gave up or was started again by `ct stack up`: their supervisors brought them back.
    assert {part: cluster_stack.part_pid(part) for part in supervisors} == supervisors
    # A defined end: the run finished, and did the work once (checked above).
    assert run["state"] in ("success", "failed"), states
    cluster_stack.figures["postgres_restart_run"] = run["state"]
    after = cluster_stack.restarts()
    cluster_stack.figures["postgres_restart_restarts"] = {
        part: after[part] - restarts[part] for part in supervisors if after[part] != restarts[part]
    }
    # And the cluster works: the next run succeeds.
    with cluster_stack.airflow() as client:
        client.trigger("train", "postgres_restart__after", {"reason": "after the PostgreSQL restart"})
        assert (
            client.wait_for_run("train", "postgres_restart__after", timeout=RUN_BOUND_S)["state"] == "success"
        )


def _seconds(start: str, end: str) -> float:
    from datetime import datetime

    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 1)
