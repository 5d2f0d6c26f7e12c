"""
# Monitor: drift of what the endpoint served → alert and retrain

Reads the predictions the endpoint **actually served** with the current champion in the window,
compares their inputs with the champion's reference sample (kept with the model version) and writes an
**Evidently drift report** to `$CT_LAKE/reports/drift/<run>/`: `drift_report.html` to look at (charts
drawn from a sample of at most 20,000 rows per side) and `summary.json` with every column's score,
computed over all served rows.

When drift is found (per-column normed Wasserstein / Jensen–Shannon at the thresholds of
`include/config/policy.yaml`, `drift:`):
* on-call gets a mail naming the drifted columns, with the report's path;
* the `train` DAG is triggered with the reason, the drifted columns and the report in its conf, unless a
  drift-triggered retraining already ran within the cooldown (`drift.cooldown_hours`).

## Running it
* **Scheduled** daily at 06:00 UTC over the last `drift.window_hours` hours.
* **Manually** with an explicit window (*window start* / *window end*, ISO 8601) or *window hours*.

A window with fewer served rows than `drift.min_rows` is skipped, not judged. Re-running a run sends no
second mail and triggers no second training run (the trigger's run id is derived from this run's id).
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import CronTriggerTimetable, Param, dag, task

from continuous_training.adapter.defaults import default_args, task_timeout


@dag(
    dag_id="monitor",
    schedule=CronTriggerTimetable("0 6 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["continuous-training", "monitoring"],
    doc_md=__doc__,
    default_args=default_args(),
    params={
        "window_start": Param(
            None,
            type=["null", "string"],
            format="date-time",
            title="Window start",
            description="ISO 8601, UTC if no offset. Empty: window end minus window hours.",
        ),
        "window_end": Param(
            None,
            type=["null", "string"],
            format="date-time",
            title="Window end",
            description="ISO 8601, exclusive. Empty: when the run starts.",
        ),
        "window_hours": Param(
            None,
            type=["null", "number"],
            exclusiveMinimum=0,
            title="Window hours",
            description="Length of the window when no start is given. Empty: drift.window_hours of policy.yaml.",
        ),
    },
)
def monitor() -> None:
    @task(execution_timeout=task_timeout("monitor", "collect_served"))
    def collect_served(params: dict[str, Any] | None = None, dag_run: Any = None) -> dict[str, Any]:
        """Snapshot what the endpoint served with the champion in the window."""
        from continuous_training.adapter import steps

        return steps.collect_served(params or {}, dag_run)

    @task.short_circuit(execution_timeout=task_timeout("monitor", "enough_rows"))
    def enough_rows(collected: dict[str, Any]) -> bool:
        """Too few served rows are not judged (the log says how many)."""
        from continuous_training.adapter import steps

        return steps.enough_rows(collected)

    @task(execution_timeout=task_timeout("monitor", "compute_drift"))
    def compute_drift(collected: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
        """Per-column drift scores of the window against the champion's reference sample, and the report."""
        from continuous_training.adapter import steps

        return steps.compute_drift(collected, run_id or "manual")

    @task.short_circuit(execution_timeout=task_timeout("monitor", "drift_found"))
    def drift_found(drift: dict[str, Any]) -> bool:
        """Stop here when no column drifted."""
        return bool(drift["drifted_columns"])

    @task(execution_timeout=task_timeout("monitor", "alert_on_call"))
    def alert_on_call(drift: dict[str, Any], run_id: str | None = None) -> bool:
        """Mail on-call the drifted columns and the report (once per run)."""
        from continuous_training.adapter import steps

        return steps.alert_drift(drift, run_id or "manual")

    @task.short_circuit(execution_timeout=task_timeout("monitor", "retrain_due"))
    def retrain_due(
        drift: dict[str, Any], run_id: str | None = None, dag_run: Any = None
    ) -> dict[str, Any] | None:
        """Policy and cooldown: returns the conf for the train DAG, or nothing to skip the trigger."""
        from continuous_training.adapter import steps

        return steps.retrain_due(drift, run_id or "manual", getattr(dag_run, "run_after", None))

    collected = collect_served()
    drift = compute_drift(collected)
    enough_rows(collected) >> drift
    found = drift_found(drift)
    due = retrain_due(drift)
    found >> [alert_on_call(drift), due]
    due >> TriggerDagRunOperator(
        task_id="trigger_train",
        trigger_dag_id="train",
        trigger_run_id="drift__{{ run_id }}",
        conf=due,
        skip_when_already_exists=True,
        wait_for_completion=False,
        execution_timeout=task_timeout("monitor", "trigger_train"),
    )


monitor()
