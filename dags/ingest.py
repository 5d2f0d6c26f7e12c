"""
# Ingest: landing files → validated daily partition

Takes the day's files from the landing folder (`$CT_LAKE/landing/<day>/`), writes them as one
**immutable raw partition** (same files → same bytes and content hash), validates it with the
**Great Expectations** suite built from the dataset contract (`include/config/dataset.yaml`), then:

* **passes** → publishes `validated/dt=<day>` and emits the `validated_applications` Asset, which
  schedules the `train` DAG;
* **fails** → copies the batch to `quarantine/dt=<day>/<hash>/` with the validation result (nothing is
  ever deleted) and mails on-call the failed expectations, column by column.

## Running it
* **Scheduled** daily at midnight UTC for the day that just ended (its data interval).
* **Manually** with the *day* param to (re)ingest a given day. Re-running is safe: an identical
  partition is not written twice and an alert is not mailed twice.

A day with no landing files is **skipped** (logged), not failed.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, dag, task

from continuous_training.adapter.assets import VALIDATED_DATA
from continuous_training.adapter.defaults import default_args, task_timeout


@dag(
    dag_id="ingest",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=4,
    tags=["continuous-training", "data"],
    doc_md=__doc__,
    default_args=default_args(),
    params={
        "day": Param(
            None,
            type=["null", "string"],
            format="date",
            title="Day to ingest",
            description="YYYY-MM-DD. Empty: the run's data interval (the day that just ended).",
        ),
    },
)
def ingest() -> None:
    @task(execution_timeout=task_timeout("ingest", "stage_partition"))
    def stage_partition(
        params: dict[str, Any] | None = None, data_interval_start: Any = None
    ) -> dict[str, Any]:
        """Canonicalise the day's landing files into the immutable raw partition."""
        from continuous_training.adapter import steps

        day = steps.resolve_day((params or {}).get("day"), data_interval_start)
        return steps.stage_partition(day)

    @task(execution_timeout=task_timeout("ingest", "validate_partition"))
    def validate_partition(staged: dict[str, Any]) -> dict[str, Any]:
        """Run the Great Expectations suite; the full result is kept in the lake, a summary goes to XCom."""
        from continuous_training.adapter import steps

        return steps.validate_partition(staged)

    @task.branch(execution_timeout=task_timeout("ingest", "route"))
    def route(validation: dict[str, Any]) -> str:
        """Publish a passing batch, quarantine a failing one."""
        return "publish" if validation["success"] else "quarantine"

    @task(outlets=[VALIDATED_DATA], execution_timeout=task_timeout("ingest", "publish"))
    def publish(validation: dict[str, Any], outlet_events: Any = None) -> dict[str, Any]:
        """Publish `validated/dt=<day>` and emit the Asset event."""
        from continuous_training.adapter import steps

        manifest = steps.publish_partition(validation)
        outlet_events[VALIDATED_DATA].extra = {k: manifest[k] for k in ("day", "sha256", "rows", "path")}
        return manifest

    @task(execution_timeout=task_timeout("ingest", "quarantine"))
    def quarantine(validation: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
        """Keep the bad batch in quarantine and mail on-call what failed."""
        from continuous_training.adapter import steps

        return steps.quarantine_partition(validation, run_id=run_id or "")

    validation = validate_partition(stage_partition())
    route(validation) >> [publish(validation), quarantine(validation)]


ingest()
