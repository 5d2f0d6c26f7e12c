"""The failure bounds of tasks: the MLflow retry budget fits the timeouts, heartbeats ride out an outage.

The worst cases are computed from the values :func:`task_runtime_config` returns, with the objects the
libraries really build from them (MLflow's urllib3 ``Retry``, the execution API client's tenacity
policy, the supervisor's constants), so a change of a value, or of a library's formula, fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from unittest import mock

import pytest

from continuous_training.adapter.defaults import DEFERRED_WAITS, MLFLOW_TASKS, TASK_TIMEOUTS
from continuous_training.ops.stack import airflow_config, task_env
from continuous_training.ops.stack.task_env import task_runtime_config

#: MLflow 3.17's defaults (``mlflow/environment_variables.py``).
MLFLOW_DEFAULTS = {"retries": 7, "factor": 2, "jitter": 1.0, "timeout": 120}


@pytest.fixture
def config(settings) -> dict[str, str]:
    return task_runtime_config(settings)


def _mlflow_budget(config: dict[str, str]) -> tuple[int, int, float, int]:
    return (
        int(config["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]),
        int(config["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]),
        float(config["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"]),
        int(config["MLFLOW_HTTP_REQUEST_TIMEOUT"]),
    )


def _urllib3_sleeps(retries: int, factor: int, jitter: float, random_part: float) -> list[float]:
    """The sleeps of the ``Retry`` MLflow builds, for a call whose every attempt is refused."""
    import urllib3
    from mlflow.utils.request_utils import _TRANSIENT_FAILURE_RESPONSE_CODES, _get_request_session

    session = _get_request_session(retries, factor, jitter, _TRANSIENT_FAILURE_RESPONSE_CODES, True, False)
    retry = session.adapters["http://"].max_retries
    sleeps = []
    with mock.patch("urllib3.util.retry.random.random", return_value=random_part):
        while True:
            try:
                retry = retry.increment(
                    method="POST",
                    url="/api/2.0/mlflow/runs/create",
                    error=urllib3.exceptions.NewConnectionError(None, "refused"),
                )
            except urllib3.exceptions.MaxRetryError:
                return sleeps
            sleeps.append(retry.get_backoff_time())


@pytest.mark.parametrize("deployment", ["embedded", "cluster"])
def test_pure_strings_and_wired_into_the_airflow_config(settings, monkeypatch, deployment):
    from continuous_training.settings import load_settings

    monkeypatch.setenv("CT_DEPLOYMENT", deployment)  # on top of the fresh state dir of `settings`
    settings = load_settings()
    config = task_runtime_config(settings)
    assert config == task_runtime_config(settings)
    assert all(isinstance(k, str) and isinstance(v, str) and v for k, v in config.items())
    # Every Airflow process of either deployment gets it (the scheduler, the workers and so the tasks).
    assert config.items() <= airflow_config(settings).items()


@pytest.mark.parametrize("jitter_part", [0.0, 1.0])
def test_the_formula_is_urllib3s(config, jitter_part):
    retries, factor, jitter, _ = _mlflow_budget(config)
    assert _urllib3_sleeps(retries, factor, jitter, jitter_part) == task_env.mlflow_backoff_sleeps(
        retries, factor, jitter * jitter_part
    )
    defaults = MLFLOW_DEFAULTS
    assert _urllib3_sleeps(defaults["retries"], defaults["factor"], defaults["jitter"], jitter_part) == (
        task_env.mlflow_backoff_sleeps(
            defaults["retries"], defaults["factor"], defaults["jitter"] * jitter_part
        )
    )


def test_mlflow_defaults_are_what_the_issue_saw():
    """With MLflow's defaults a call to a stopped server retries for 244-249 s (the 4.5 minutes)."""
    d = MLFLOW_DEFAULTS
    assert sum(task_env.mlflow_backoff_sleeps(d["retries"], d["factor"], 0.0)) == 244
    assert task_env.mlflow_call_worst_case_s(d["retries"], d["factor"], d["jitter"], d["timeout"]) > 30 * 60


def test_one_mlflow_call_fits_well_inside_every_mlflow_task_timeout(config):
    worst = task_env.mlflow_call_worst_case_s(*_mlflow_budget(config))
    shortest = min(TASK_TIMEOUTS[key].total_seconds() for key in MLFLOW_TASKS)
    # Half the timeout at most: the task's own work and its other calls need the rest.
    assert worst <= shortest / 2, (
        f"one MLflow call may take {worst:.0f} s; shortest MLflow task timeout {shortest:.0f} s"
    )
    assert set(MLFLOW_TASKS) <= set(TASK_TIMEOUTS)


def test_one_mlflow_call_rides_out_a_restart(config):
    retries, factor, _, _ = _mlflow_budget(config)
    # A restart of the tracking server is 30-60 s; a longer outage is left to the task's retry.
    assert task_env.mlflow_outage_ridden_s(retries, factor) >= 60
    assert config["MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER"] == "false"  # no server-dictated sleep


def test_heartbeats_tolerate_an_api_server_restart_and_still_catch_a_dead_worker(config):
    heartbeat_timeout = int(config["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"])
    interval = int(config["AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL"])
    attempts = int(config["AIRFLOW__WORKERS__EXECUTION_API_RETRIES"])
    wait_min = float(config["AIRFLOW__WORKERS__EXECUTION_API_RETRY_WAIT_MIN"])
    wait_max = float(config["AIRFLOW__WORKERS__EXECUTION_API_RETRY_WAIT_MAX"])
    failures = int(config["AIRFLOW__WORKERS__MAX_FAILED_HEARTBEATS"])
    assert wait_min == wait_max, "equal bounds make tenacity's random wait exact"
    call = (attempts - 1) * wait_min
    tolerated = task_env.api_outage_tolerated_s()
    # A restart of the API server (stop 7-17 s, start 40-70 s) and then some.
    assert tolerated >= 90
    assert tolerated <= heartbeat_timeout - interval
    # Any one call (an XCom push, the final state) rides out the same outage as the heartbeats...
    assert call >= tolerated
    # ...and the supervisor gives up later than the scheduler, which is the one that decides.
    assert failures * call > heartbeat_timeout
    # A dead worker's task is up for retry within a few minutes.
    assert task_env.dead_worker_detected_s() <= 3 * 60


def test_airflow_and_mlflow_read_these_values(config):
    """In a process started with the config, the supervisor, the execution API client and MLflow see
    the values the tests above reason about."""
    code = r"""
import json
import tenacity
from airflow.sdk.api import client
from airflow.sdk.execution_time import supervisor
from mlflow import environment_variables as mev

policy = client.Client.request.retry
state = tenacity.RetryCallState(policy, None, (), {})
waits = []
for attempt in range(1, policy.stop.max_attempt_number):
    state.attempt_number = attempt
    waits.append(policy.wait(state))
print(json.dumps({
    "heartbeat_timeout": supervisor.HEARTBEAT_TIMEOUT,
    "interval": supervisor.MIN_HEARTBEAT_INTERVAL,
    "failures": supervisor.MAX_FAILED_HEARTBEATS,
    "attempts": policy.stop.max_attempt_number,
    "waits": waits,
    "api_timeout": client.API_TIMEOUT,
    "mlflow": [mev.MLFLOW_HTTP_REQUEST_MAX_RETRIES.get(), mev.MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get(),
               mev.MLFLOW_HTTP_REQUEST_BACKOFF_JITTER.get(), mev.MLFLOW_HTTP_REQUEST_TIMEOUT.get(),
               mev.MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER.get()],
}))
"""
    env = {**os.environ, **config}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["heartbeat_timeout"] == task_env.HEARTBEAT_TIMEOUT_S
    assert seen["interval"] == task_env.MIN_HEARTBEAT_INTERVAL_S
    assert seen["failures"] == task_env.MAX_FAILED_HEARTBEATS
    assert seen["attempts"] == task_env.EXECUTION_API_ATTEMPTS
    assert seen["api_timeout"] == task_env.EXECUTION_API_TIMEOUT_S
    assert sum(seen["waits"]) == task_env.execution_api_call_ridden_s()
    assert seen["mlflow"] == [*_mlflow_budget(config), False]


# ------------------------------------------------------------------------------------------ the broker


def test_the_broker_settings_are_the_clusters_only(settings, monkeypatch):
    from continuous_training.settings import load_settings

    broker = task_env.broker_config()
    assert all(isinstance(v, str) and v for v in broker.values())
    assert not broker.keys() & airflow_config(settings).keys()  # the embedded stack has no broker
    monkeypatch.setenv("CT_DEPLOYMENT", "cluster")
    assert broker.items() <= airflow_config(load_settings()).items()


def test_a_refused_publish_is_cut_off_as_a_timeout_which_the_executor_retries():
    """Celery's default policy gives up on a refused broker in 0.6 s and the executor fails the task;
    ours keeps kombu retrying past ``operation_timeout``, and a publish that timed out is retried."""
    from kombu.utils.functional import fxrange

    policy = json.loads(task_env.broker_config()["AIRFLOW__CELERY__EXTRA_CELERY_CONFIG"])[
        "task_publish_retry_policy"
    ]
    intervals = fxrange(
        policy["interval_start"],
        policy["interval_max"] + policy["interval_start"],
        policy["interval_step"],
        repeatlast=True,
    )
    retrying_s = sum(next(intervals) for _ in range(policy["max_retries"]))
    assert retrying_s > 10 * task_env.PUBLISH_TIMEOUT_S
    assert task_env.broker_outage_tolerated_s() >= 120  # a Redis restart, or a minute or two down


def test_no_task_is_redelivered_while_it_runs_and_a_lost_message_is_requeued_within_minutes():
    # The shadow and watch tasks wait deferred to the triggerer between their short checks: no Celery
    # message is outstanding while they wait, so their day-long timeouts are not task runs the broker
    # must outlast.
    longest_task_s = max(t.total_seconds() for key, t in TASK_TIMEOUTS.items() if key not in DEFERRED_WAITS)
    assert task_env.VISIBILITY_TIMEOUT_S >= 2 * longest_task_s
    lost_after_s = task_env.TASK_QUEUED_TIMEOUT_S + task_env.TASK_QUEUED_CHECK_INTERVAL_S
    assert lost_after_s <= 6 * 60
