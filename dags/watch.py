"""
# Watch: the new champion on live traffic, rolled back on a breach

Runs after every promotion of the train DAG (the **champion_promoted** Asset), or by hand. For
`release.watch_minutes` of `policy.yaml` it compares what the new champion serves with what the
previous champion served before it, from the prediction log:

| figure | breach when |
| --- | --- |
| error rate (failed requests and non-finite scores) | above `release.watch_max_error_rate` |
| p99 request latency | above `release.watch_max_p99_ratio` times the previous champion's |
| score distribution (Wasserstein distance) | above `release.watch_max_score_shift` |

The figures are compared once `release.watch_min_rows` rows came in; a breach ends the watch at once.
Between checks (`release.watch_poll_seconds`) the task is **deferred** to the triggerer: it holds no
worker slot while it waits.

On a breach the champion returns to the previous version through the rollback DAG's steps (signed
provenance and smoke test, alias moved, every endpoint worker serving it), the ledger records an
`auto_rollback` with the figures, and on-call is mailed. The verdict is kept on the version
(`ct.watch_verdict`); a version rolled back this way needs *force* in the rollback DAG.

Clearing the task is safe: the move is made, recorded and mailed once.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag

from continuous_training.adapter.assets import CHAMPION_PROMOTED
from continuous_training.adapter.defaults import default_args, task_timeout
from continuous_training.adapter.release import WatchChampion


@dag(
    dag_id="watch",
    schedule=CHAMPION_PROMOTED,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["continuous-training", "model", "release"],
    doc_md=__doc__,
    default_args=default_args(),
)
def watch() -> None:
    WatchChampion(
        task_id="watch_champion",
        execution_timeout=task_timeout("watch", "watch_champion"),
        doc_md="Compare the new champion's live figures with the previous champion's; roll back on a breach.",
    )


watch()
