"""
# Monitor: drift of what the endpoint served → alert and retrain

Reads the predictions the endpoint **actually served** with the current champion in the window,
compares their inputs with the champion's reference sample (kept with the model version) and writes an
**Evidently drift report** to `$CT_LAKE/reports/drift/<run>/`: `drift_report.html` to look at (charts
drawn from a sample of at most 20,000 rows per side) and `summary.json` with every column's score,
computed over all served rows.

Every run **decides** and puts the decision on the record (`$CT_LAKE/decisions/monitor/<run>.json`,
shown on the Drift page and returned by `decide`): *undecided* (too few rows), *no_drift*,
*below_min_columns*, *waiting* (fewer than `drift.windows_drifted` of the last
`drift.windows_considered` judged windows drifted), *cooldown* (a drift-triggered retraining ran within
`drift.cooldown_hours`), *no_new_data* (the training set would be the champion's own) or *triggered*.

When drift is found (per-column normed Wasserstein / Jensen–Shannon at the thresholds of
`include/config/policy.yaml`, `drift:`):
* on-call gets a mail naming the drifted columns (most drifted first), the report and the decision;
* on *triggered*, the `train` DAG runs with the reason, the drifted columns and the report in its conf,
  and mails the outcome (new champion, gate blocked, or why it did not train) when it ends.

## Running it
* **Scheduled** daily at 06:00 UTC over the last `drift.window_hours` hours.
* **Manually** with an explicit window (*window start* / *window end*, ISO 8601) or *window hours*.

A window with fewer served rows than `drift.min_rows` is not judged (decision *undecided*). Re-running a run sends no
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
    def enough_rows(collected: dict[str, Any], run_id: str | None = None, dag_run: Any = None) -> bool:
        """Too few served rows are not judged: the run's decision record says `undecided`."""
        from continuous_training.adapter import steps

        return steps.enough_rows(collected, run_id or "manual", getattr(dag_run, "run_after", None))

    @task(execution_timeout=task_timeout("monitor", "compute_drift"))
    def compute_drift(collected: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
        """Per-column drift scores of the window against the champion's reference sample, and the report."""
        from continuous_training.adapter import steps

        return steps.compute_drift(collected, run_id or "manual")

    @task(execution_timeout=task_timeout("monitor", "decide"))
    def decide(drift: dict[str, Any], run_id: str | None = None, dag_run: Any = None) -> dict[str, Any]:
        """Retrain or not, and why (policy, N-of-M windows, cooldown, new data): the run's decision record."""
        from continuous_training.adapter import steps

        return steps.decide(drift, run_id or "manual", getattr(dag_run, "run_after", None))

    @task(execution_timeout=task_timeout("monitor", "alert_on_call"))
    def alert_on_call(drift: dict[str, Any], decision: dict[str, Any], run_id: str | None = None) -> bool:
        """Mail on-call the drifted columns, the report and the decision (once per run); skipped without drift."""
        from continuous_training.adapter import steps

        return steps.alert_drift(drift, decision, run_id or "manual")

    @task.short_circuit(execution_timeout=task_timeout("monitor", "retrain_due"))
    def retrain_due(decision: dict[str, Any]) -> dict[str, Any] | None:
        """The conf for the train DAG when the decision triggers it, or nothing to skip the trigger."""
        from continuous_training.adapter import steps

        return steps.retrain_due(decision)

    collected = collect_served()
    drift = compute_drift(collected)
    enough_rows(collected) >> drift
    decision = decide(drift)
    alert_on_call(drift, decision)
    due = retrain_due(decision)
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
