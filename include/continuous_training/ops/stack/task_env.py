"""What bounds a failure inside a task: the MLflow client's retry budget and the heartbeat tolerance.

:func:`task_runtime_config` is given to every Airflow process of a deployment (embedded stack or
cluster): the scheduler reads the heartbeat timeout, the workers' task supervisors the heartbeat and
execution-API settings, and the task processes, which inherit the worker's environment, the MLflow
client's. Pure: the same settings always give the same dict. The figures below are derived from the
installed sources (named per constant); the functions next to them compute what they amount to, so
the tests can hold them against the tasks' ``execution_timeout`` (``adapter/defaults.py``).

**MLflow client, inside tasks.** ``mlflow.utils.rest_utils.http_request`` retries every call through
urllib3's ``Retry`` (``mlflow.utils.request_utils``): ``total`` = ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``
(so up to that many retries after the first attempt), on connection errors, read errors and 408, 429,
500, 502, 503 and 504, sleeping ``backoff_factor * 2 ** (n - 1) + random() * jitter`` after the n-th
consecutive error (nothing after the first), capped at ``Retry.DEFAULT_BACKOFF_MAX`` (120 s), and each
attempt waits up to ``MLFLOW_HTTP_REQUEST_TIMEOUT`` to connect and as long again for the answer
(requests applies a single number to both). MLflow's defaults (7 retries, factor 2, jitter 1, 120 s)
sleep 4 + 8 + 16 + 32 + 64 + 120 = 244-249 s before a call to a stopped server gives up (the 4.5 minutes
a training attempt spent in retries, twice), and up to 36 minutes against a server that accepts
connections but never answers. Ours: 5 retries, factor 2, jitter 1, 15 s sleep 4 + 8 + 16 + 32 = 60-64 s
(a call rides out a stopped or restarting MLflow server for a minute; a longer outage fails the call,
the task, and its retry starts ``CT_TASK_RETRY_DELAY_SECONDS`` later), and give up on a hung server
after at most 64 + 6 x (15 + 15) = 244 s, 40% of the shortest timeout of a task that calls MLflow.
``Retry-After`` headers are ignored, or a 429 or 503 could make urllib3 sleep up to 6 hours.

**Heartbeats.** A task's supervisor (``airflow/sdk/execution_time/supervisor.py``) heartbeats the API
server every ``[workers] min_heartbeat_interval`` seconds through the execution API client
(``airflow/sdk/api/client.py``), which retries each call ``[workers] execution_api_retries`` times in all,
waiting ``wait_random_exponential(min, max)`` between attempts; after ``[workers]
max_failed_heartbeats`` failed calls in a row the supervisor kills the task. The scheduler, on its side,
fails (or retries) a running task whose last heartbeat is older than ``[scheduler]
task_instance_heartbeat_timeout``, checking every ``task_instance_heartbeat_timeout_detection_interval``
seconds. Airflow's defaults (5 attempts, waits of 1 to 1-8 s, 3 failures) kill every running task
14 to 50 s into an API-server outage; the heartbeat timeout of 300 s lets a dead worker's task sit five
minutes before its retry. Ours: 28 attempts 5 s apart, so any call to the API server (heartbeat, XCom,
final state) rides out 135 s of outage; the scheduler's 150 s is then what decides: a running task
survives an API server that is unreachable for up to about 130 s (:func:`api_outage_tolerated_s`; a
restart is its stop, 7-17 s, plus its start, 40-70 s here), and a dead worker's task is up for retry
about 2.5 minutes after its last heartbeat (:func:`dead_worker_detected_s`).

**Measured** (api-server, scheduler and dag-processor on 2 busy cores, LocalExecutor, SIGKILL of the
API server's process group, restarted after a pause): with Airflow's defaults both running tasks were
killed 33 and 39 s into the outage; with these values both ran through outages of 85 s and 104 s
(one finished its work during the outage; its XCom push and success waited for the server), and a
worker's supervisor and task killed with SIGKILL were up for retry 153 s later. One MLflow call made
while ``ct stack up`` restarted a stopped tracking server answered after 30 s.
"""

from __future__ import annotations

import json

from continuous_training.settings import Settings

# ------------------------------------------------------------------------------------- MLflow client

#: Retries of one MLflow REST call after its first attempt (MLflow's default: 7).
MLFLOW_MAX_RETRIES = 5
#: urllib3 backoff factor: sleeps of 0, 4, 8, 16, 32 s after the 1st..5th failure (MLflow: 2). An
#: integer: MLflow parses this variable with ``int``.
MLFLOW_BACKOFF_FACTOR = 2
#: Up to this much random time added to each sleep but the first (MLflow's default: 1.0).
MLFLOW_BACKOFF_JITTER = 1.0
#: Seconds one attempt waits to connect, and as long again for the answer (MLflow's default: 120).
#: Every request of the tasks (registry, run data, artifacts of a few MB) answers within seconds.
MLFLOW_REQUEST_TIMEOUT_S = 15
#: ``urllib3.util.Retry.DEFAULT_BACKOFF_MAX``: no sleep is longer.
URLLIB3_BACKOFF_MAX_S = 120.0

# ---------------------------------------------------------------------------------------- heartbeats

#: ``[scheduler] task_instance_heartbeat_timeout`` (default 300): a running task whose last heartbeat
#: is older than this is failed or put up for retry by the scheduler.
HEARTBEAT_TIMEOUT_S = 150
#: ``[scheduler] task_instance_heartbeat_timeout_detection_interval`` (default 10).
HEARTBEAT_DETECTION_INTERVAL_S = 5
#: ``[workers] min_heartbeat_interval`` (default 5): seconds between two heartbeat calls.
MIN_HEARTBEAT_INTERVAL_S = 5
#: ``[workers] max_failed_heartbeats`` (default 3): failed heartbeat calls in a row before the
#: supervisor kills its task. Each call already retries for 135 s, so this fires after 405 s of outage,
#: long after the scheduler's heartbeat timeout.
MAX_FAILED_HEARTBEATS = 3
#: ``[workers] execution_api_retries`` (default 5): attempts of one execution-API call, in all.
EXECUTION_API_ATTEMPTS = 28
#: ``[workers] execution_api_retry_wait_min`` and ``_max`` (defaults 1 and 90): equal, so tenacity's
#: ``wait_random_exponential`` waits exactly this long between two attempts.
EXECUTION_API_RETRY_WAIT_S = 5.0
#: ``[workers] execution_api_timeout`` (default 5.0): seconds one attempt waits for the API server.
EXECUTION_API_TIMEOUT_S = 5.0
#: After a restart the API server answers its first execution-API call 5-7 s late (it starts that app
#: lazily, measured); counted against the outage a task survives.
API_WARM_UP_S = 7.0


# ------------------------------------------------------------------------- the broker (cluster only)

#: ``[celery] operation_timeout`` (default 1.0): one publish of a task message to the broker may take
#: this long (the scheduler's loop waits for it); then it raises ``AirflowTaskTimeout``.
PUBLISH_TIMEOUT_S = 1.0
#: kombu's retry of one publish while the broker refuses connections (``task_publish_retry_policy``;
#: Celery's default gives up after 3 quick retries, 0.6 s, and the executor then *fails* the task):
#: retries every 0.2-0.5 s until :data:`PUBLISH_TIMEOUT_S` cuts it off as a timeout, which the
#: executor retries at its next heartbeat instead.
PUBLISH_RETRY_POLICY = {"max_retries": 100, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
#: ``[celery] task_publish_max_retries`` (default 3): publishes that timed out, tried again once per
#: scheduler loop (1 s of publishing plus the loop's own second or so), before the task is failed.
PUBLISH_ATTEMPTS = 150
#: ``[scheduler] task_queued_timeout`` (default 600) and its check interval (default 120): a task
#: whose message was lost (Redis restarted without persistence after the message was sent, before a
#: worker took it) is revoked and scheduled again after this long, twice, then failed. Nothing waits
#: that long in ``queued`` otherwise: the schedulers queue at most ``parallelism`` tasks, the
#: workers' slots. Also the lifetime of the token a queued task authenticates with.
TASK_QUEUED_TIMEOUT_S = 300
TASK_QUEUED_CHECK_INTERVAL_S = 60
#: ``[celery_broker_transport_options] visibility_timeout``: Redis hands an unacknowledged message
#: to another worker after this long (acks are late, at the task's end). Airflow's default is 24 h
#: and it warns when unset; ours is twice the longest ``execution_timeout`` of a task (30 min),
#: so no task is redelivered while it runs.
VISIBILITY_TIMEOUT_S = 3600


def broker_outage_tolerated_s() -> float:
    """At least how long the broker may refuse connections before a task waiting to be queued fails.

    Each of :data:`PUBLISH_ATTEMPTS` publishes lasts :data:`PUBLISH_TIMEOUT_S` (the scheduler's loop
    adds its own second or so between two, so the real figure is about twice this).
    """
    return PUBLISH_ATTEMPTS * PUBLISH_TIMEOUT_S


def broker_config() -> dict[str, str]:
    """The Celery executor's tolerance of a broker that is down or lost its messages (cluster only).

    Returns:
        Variable name -> value, ``AIRFLOW__CELERY__*``, ``AIRFLOW__SCHEDULER__TASK_QUEUED_*`` and
        ``AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT``.
    """
    return {
        "AIRFLOW__CELERY__OPERATION_TIMEOUT": str(PUBLISH_TIMEOUT_S),
        "AIRFLOW__CELERY__TASK_PUBLISH_MAX_RETRIES": str(PUBLISH_ATTEMPTS),
        "AIRFLOW__CELERY__EXTRA_CELERY_CONFIG": json.dumps(
            {"task_publish_retry_policy": PUBLISH_RETRY_POLICY}
        ),
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": str(TASK_QUEUED_TIMEOUT_S),
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": str(TASK_QUEUED_CHECK_INTERVAL_S),
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_S),
    }


def mlflow_backoff_sleeps(
    max_retries: int = MLFLOW_MAX_RETRIES,
    backoff_factor: float = MLFLOW_BACKOFF_FACTOR,
    backoff_jitter: float = 0.0,
) -> list[float]:
    """The sleeps of one MLflow call that fails every attempt, as ``urllib3.util.Retry`` computes them.

    ``Retry.get_backoff_time``: after the n-th consecutive error, nothing if n is 1, else
    ``backoff_factor * 2 ** (n - 1)`` plus ``random() * backoff_jitter``, capped at ``backoff_max``;
    urllib3 sleeps after each of the first ``max_retries`` errors (the next one raises).

    Args:
        max_retries: ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``.
        backoff_factor: ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``.
        backoff_jitter: the random part taken at its largest (give ``MLFLOW_HTTP_REQUEST_BACKOFF_JITTER``
            for the longest sleeps, 0 for the shortest).

    Returns:
        One sleep per retry, in seconds.
    """
    sleeps = []
    for errors in range(1, max_retries + 1):
        if errors <= 1:
            sleeps.append(0.0)
            continue
        sleeps.append(
            max(0.0, min(URLLIB3_BACKOFF_MAX_S, backoff_factor * 2 ** (errors - 1) + backoff_jitter))
        )
    return sleeps


def mlflow_call_worst_case_s(
    max_retries: int = MLFLOW_MAX_RETRIES,
    backoff_factor: float = MLFLOW_BACKOFF_FACTOR,
    backoff_jitter: float = MLFLOW_BACKOFF_JITTER,
    request_timeout_s: float = MLFLOW_REQUEST_TIMEOUT_S,
) -> float:
    """The longest one MLflow call can take before it raises: a server that never answers.

    ``max_retries + 1`` attempts, each waiting the connect timeout and the read timeout (requests gives
    urllib3 one number for both), plus the longest sleeps between them.
    """
    attempts = max_retries + 1
    return attempts * 2 * request_timeout_s + sum(
        mlflow_backoff_sleeps(max_retries, backoff_factor, backoff_jitter)
    )


def mlflow_outage_ridden_s(
    max_retries: int = MLFLOW_MAX_RETRIES, backoff_factor: float = MLFLOW_BACKOFF_FACTOR
) -> float:
    """How long an MLflow server may refuse connections while one call still succeeds (jitter at 0)."""
    return sum(mlflow_backoff_sleeps(max_retries, backoff_factor, 0.0))


def execution_api_call_ridden_s(
    attempts: int = EXECUTION_API_ATTEMPTS, wait_s: float = EXECUTION_API_RETRY_WAIT_S
) -> float:
    """How long the API server may refuse connections while one execution-API call still succeeds."""
    return (attempts - 1) * wait_s


def api_outage_tolerated_s() -> float:
    """The longest API-server outage a running task survives (the scheduler's heartbeat timeout decides).

    The last heartbeat before the outage may be up to one heartbeat interval old when it starts; after
    it ends, the next successful heartbeat comes within one retry wait (or the next heartbeat interval)
    plus the API server's warm-up. The supervisor itself gives up later (``MAX_FAILED_HEARTBEATS`` calls
    of :func:`execution_api_call_ridden_s` each).
    """
    after = max(EXECUTION_API_RETRY_WAIT_S, MIN_HEARTBEAT_INTERVAL_S) + API_WARM_UP_S
    by_scheduler = HEARTBEAT_TIMEOUT_S - MIN_HEARTBEAT_INTERVAL_S - after
    by_supervisor = MAX_FAILED_HEARTBEATS * execution_api_call_ridden_s()
    return min(by_scheduler, by_supervisor)


def dead_worker_detected_s() -> float:
    """At most how long after a worker dies its running task is failed or up for retry.

    Its last heartbeat is at most one interval old, the scheduler looks every detection interval;
    the callback that sets the state then takes a moment more (seconds, measured).
    """
    return HEARTBEAT_TIMEOUT_S + MIN_HEARTBEAT_INTERVAL_S + HEARTBEAT_DETECTION_INTERVAL_S


def task_runtime_config(settings: Settings) -> dict[str, str]:
    """The environment that bounds failures in tasks, for every Airflow process of a deployment.

    The same for every deployment today (the settings are taken so that it may differ per deployment
    without changing its callers).

    Args:
        settings: the deployment's settings.

    Returns:
        Variable name -> value: the MLflow client's retry budget (``MLFLOW_HTTP_REQUEST_*``) and the
        heartbeat tolerance (``AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_*``,
        ``AIRFLOW__WORKERS__*``).
    """
    del settings  # the same figures for every deployment, see the module docstring
    return {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(MLFLOW_MAX_RETRIES),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(MLFLOW_BACKOFF_FACTOR),
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": str(MLFLOW_BACKOFF_JITTER),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(MLFLOW_REQUEST_TIMEOUT_S),
        "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": str(
            HEARTBEAT_DETECTION_INTERVAL_S
        ),
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": str(MIN_HEARTBEAT_INTERVAL_S),
        "AIRFLOW__WORKERS__MAX_FAILED_HEARTBEATS": str(MAX_FAILED_HEARTBEATS),
        "AIRFLOW__WORKERS__EXECUTION_API_RETRIES": str(EXECUTION_API_ATTEMPTS),
        "AIRFLOW__WORKERS__EXECUTION_API_RETRY_WAIT_MIN": str(EXECUTION_API_RETRY_WAIT_S),
        "AIRFLOW__WORKERS__EXECUTION_API_RETRY_WAIT_MAX": str(EXECUTION_API_RETRY_WAIT_S),
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": str(EXECUTION_API_TIMEOUT_S),
    }
