"""What the project's DAGs share: ``default_args``, every task's ``execution_timeout``, the training pool.

Light: imported at DAG-parse time, reads no file.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from continuous_training.alerts.notifier import OnCallNotifier
from continuous_training.settings import TRAINING_POOL, TRAINING_QUEUE, load_settings

__all__ = [
    "DEFERRED_WAITS",
    "MLFLOW_TASKS",
    "TASK_TIMEOUTS",
    "TRAINING_POOL",
    "TRAINING_QUEUE",
    "default_args",
    "task_timeout",
]

_MIN = timedelta(minutes=1)

#: ``execution_timeout`` of every task, by ``<dag_id>.<task_id>``. Measured in the demo on 2 busy cores
#: (``ct demo``: days of 2,500 rows, a training set of 12,000 rows): every task took between 0.2 s and
#: 110 s. The figures leave room for a training window of months instead of days, a loaded machine and,
#: for a task that calls MLflow, one call spending its whole retry budget (at most 244 s, see
#: ``continuous_training.ops.stack.task_env``) besides its work; each still stops a hung task long
#: before the next scheduled run. A timed-out task fails (its retry, if any, starts after the retry
#: delay) and on-call is mailed.
TASK_TIMEOUTS: dict[str, timedelta] = {
    # ingest
    # Canonicalises one day's landing CSVs into one parquet file (measured: at most 5 s).
    "ingest.stage_partition": 10 * _MIN,
    # Great Expectations over the day (measured: 13-16 s, most of it GX's own start-up).
    "ingest.validate_partition": 15 * _MIN,
    # A branch on the validation summary: no I/O.
    "ingest.route": 5 * _MIN,
    # Copies the partition into validated/ (measured: at most 2.3 s).
    "ingest.publish": 10 * _MIN,
    # Copies the batch into quarantine/ and mails on-call (the SMTP client gives up after 10 s).
    "ingest.quarantine": 10 * _MIN,
    # train
    # Lists and hashes the validated partitions of the window (measured: at most 3 s).
    "train.build_training_set": 10 * _MIN,
    # Reads the champion from the registry: a few MLflow calls (measured: 2-15 s).
    "train.should_train": 10 * _MIN,
    # Fits the pipeline and logs model, datasets and reference sample to MLflow (measured: 29-68 s on
    # 12,000 rows): the only CPU-bound task, alone in the training pool.
    "train.train_challenger": 30 * _MIN,
    # Loads challenger and champion, scores both on the holdout, draws the report (measured: 13-48 s).
    "train.evaluate": 20 * _MIN,
    # Records the verdict on the MLflow run: one tag (measured: 2-7 s).
    "train.gate": 10 * _MIN,
    # Registers the version and waits until MLflow calls it READY (up to 300 s by design, twice), then
    # verifies the files and signs the provenance (measured: 29-78 s).
    "train.register": 20 * _MIN,
    # Verifies and smoke-tests the version, moves the alias and waits up to 120 s for every endpoint
    # worker to serve it, and rolls back otherwise (measured: 33-109 s).
    "train.deploy": 20 * _MIN,
    # Reads the verdict from MLflow and mails on-call.
    "train.notify_gate_blocked": 10 * _MIN,
    # The whole shadow stage (checks on a worker, waits deferred): shadow_max_wait_minutes is at most a day.
    "train.shadow": 25 * 60 * _MIN,
    # rollback
    # Reads the alias, the ledger and the target's tags: a few MLflow calls.
    "rollback.choose_version": 10 * _MIN,
    # Verifies the signature (tags), downloads the reference sample and the model, smoke-tests it (as deploy).
    "rollback.check_version": 15 * _MIN,
    # Moves the alias and waits up to 120 s for every endpoint worker (as deploy).
    "rollback.move_alias": 20 * _MIN,
    # Reads the ledger record and mails on-call.
    "rollback.notify_on_call": 10 * _MIN,
    # watch
    # The whole watch (checks on a worker, waits deferred): release.watch_minutes is at most a day.
    "watch.watch_champion": 25 * 60 * _MIN,
    # Reads the run's task states, its XComs, the gate verdict (MLflow) and the ledger; mails on-call once.
    "train.report_outcome": 10 * _MIN,
    # silence
    # Lists the lake's day folders; mails at most a few days (once each).
    "silence.check_landing": 10 * _MIN,
    # Asks MLflow for the champion, reads the served_at column of the last hour's prediction-log files.
    "silence.check_traffic": 10 * _MIN,
    # monitor
    # Snapshots the window's served rows and downloads the champion's reference sample (measured: 8-40 s).
    "monitor.collect_served": 15 * _MIN,
    # A comparison of two counts; a small window writes its decision record (a file in the lake).
    "monitor.enough_rows": 5 * _MIN,
    # Per-column scores over every served row and the Evidently report (measured: 14 s).
    "monitor.compute_drift": 20 * _MIN,
    # Reads the decision records and the cooldown ledger, asks MLflow for the champion's training set,
    # writes the run's record (measured: 1-2 s).
    "monitor.decide": 10 * _MIN,
    # Mails on-call (once per run: a file in the lake says it was sent).
    "monitor.alert_on_call": 10 * _MIN,
    # Reads the decision: no I/O.
    "monitor.retrain_due": 5 * _MIN,
    # Creates the train DAG run through the execution API (does not wait for it).
    "monitor.trigger_train": 5 * _MIN,
}

#: The tasks that call the MLflow server: the worst case of one MLflow call must fit well inside their
#: timeouts (``tests/unit/ops/test_task_env.py``).
MLFLOW_TASKS = frozenset(
    {
        "train.should_train",
        "train.train_challenger",
        "train.evaluate",
        "train.gate",
        "train.register",
        "train.deploy",
        "train.notify_gate_blocked",
        "train.shadow",
        "train.report_outcome",
        "monitor.collect_served",
        "monitor.decide",
        "silence.check_traffic",
        "rollback.choose_version",
        "rollback.check_version",
        "rollback.move_alias",
        "watch.watch_champion",
    }
)


#: The tasks that wait deferred on the triggerer between short checks on a worker: their long timeouts
#: cover the whole wait, while each check is a short task run (and no Celery message is outstanding
#: while they wait).
DEFERRED_WAITS = frozenset({"train.shadow", "watch.watch_champion"})


def task_timeout(dag_id: str, task_id: str) -> timedelta:
    """The ``execution_timeout`` of a task, from :data:`TASK_TIMEOUTS`.

    Raises:
        KeyError: the task has no entry (every task must have one; add it with the reason).
    """
    key = f"{dag_id}.{task_id}"
    try:
        return TASK_TIMEOUTS[key]
    except KeyError:
        raise KeyError(f"no execution_timeout for {key}: add it to TASK_TIMEOUTS in {__name__}") from None


def default_args() -> dict[str, Any]:
    """Owner, retries and the on-call failure mail.

    ``CT_TASK_RETRIES`` (default 1) and ``CT_TASK_RETRY_DELAY_SECONDS`` (default 60) tune retries per
    deployment without editing DAG files. The ``execution_timeout`` of each task is given where the task
    is declared (:func:`task_timeout`).
    """
    settings = load_settings()
    return {
        "owner": "ml-platform",
        "retries": settings.task_retries,
        "retry_delay": timedelta(seconds=settings.task_retry_delay_seconds),
        "on_failure_callback": OnCallNotifier(),
    }
