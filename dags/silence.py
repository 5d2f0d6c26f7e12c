"""
# Silence: a day whose data never landed, an endpoint nobody calls

Absences fail no task, so this DAG looks for them every hour and mails on-call, once per event:

* **Data missing.** A day's labelled batch must be in the landing folder
  (`$CT_LAKE/landing/<day>/`) within `alerts.data_missing_after_hours` of the day's end (UTC). A day
  after the newest one that landed, past that deadline with nothing landed or ingested, is mailed once
  ("Data missing: <day>"), for the first `alerts.data_missing_days` days of an outage. Once the export
  is in the folder, trigger `ingest` with the *day* param.
* **No traffic.** While a champion is deployed, no row served for `alerts.no_traffic_minutes` (0 turns
  the check off) mails once per silence: the event is the silence that began after the last served
  row, however many hourly checks see it.

Re-running a run sends no second mail (the alert ledger in the lake keys each event).
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import CronTriggerTimetable, dag, task

from continuous_training.adapter.defaults import default_args, task_timeout


@dag(
    dag_id="silence",
    schedule=CronTriggerTimetable("15 * * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["continuous-training", "monitoring"],
    doc_md=__doc__,
    default_args=default_args(),
)
def silence() -> None:
    @task(execution_timeout=task_timeout("silence", "check_landing"))
    def check_landing(run_id: str | None = None, dag_run: Any = None) -> dict[str, Any]:
        """Days past their landing deadline with nothing landed: one mail per day."""
        from continuous_training.adapter import steps

        return steps.check_landing(run_id or "manual", getattr(dag_run, "run_after", None))

    @task(execution_timeout=task_timeout("silence", "check_traffic"))
    def check_traffic(run_id: str | None = None, dag_run: Any = None) -> dict[str, Any]:
        """No served row for alerts.no_traffic_minutes while a champion is deployed: one mail per silence."""
        from continuous_training.adapter import steps

        return steps.check_traffic(run_id or "manual", getattr(dag_run, "run_after", None))

    check_landing()
    check_traffic()


silence()
