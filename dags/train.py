"""
# Train: training set → challenger → gate → registry → champion

Trains a challenger on a snapshot of the validated partitions, compares it with the serving
champion **on the same holdout**, and promotes it only if it passes the gate.

| step | what it does |
| --- | --- |
| `build_training_set` | newest *window_days* validated partitions → snapshot (partition list + content hash) |
| `should_train` | skips the run when there is nothing new to learn (see below) |
| `train_challenger` | scikit-learn pipeline, logged to MLflow with params, metrics, the dataset as input and a drift reference sample; one training at a time (pool and queue `training`) |
| `evaluate` | challenger **and** champion scored on the newest held-out days; HTML evaluation report in the run |
| `gate` | absolute floor **and** no regression against the champion (`include/config/policy.yaml`, `gate:`) |
| `register` | MLflow model version with lineage tags (training-set hash, DAG run, git commit, verdict), alias `challenger` |
| `shadow` | when `release.shadow` is true: waits (deferred, no worker slot held) while the endpoint scores live requests with the challenger beside the champion, then judges it (enough rows, errors, agreement, score shift). A failed verdict blocks it: approval and deploy are skipped, the ledger records it, on-call is mailed. Otherwise it passes at once |
| `approve` | when `gate.require_approval` is true: a person approves or rejects the version (the UI's *Required Actions*, on-call is mailed); unanswered after `gate.approval_timeout_hours` it is rejected. Otherwise it approves at once |
| `deploy` | smoke test, move alias `champion`, wait until the endpoint serves it; restores the previous champion if not |
| `notify_gate_blocked` | mails on-call why the challenger was refused |
| `report_outcome` | for a run the monitor triggered, after everything else: what it came to (new champion, gate blocked, stopped before deploy, not trained and why, failed) goes on the monitor run's decision record and in one mail to on-call |

A confirmed deploy emits the **champion_promoted** Asset: the `watch` DAG then watches the new champion
on live traffic and rolls it back on a breach.

## When it runs
* On every new **validated_applications** Asset event. Such runs train only when the first model can be
  built (`training.min_partitions`) or enough new days arrived (`training.refresh_after_new_partitions`).
* When the **monitor** DAG finds drift (conf carries the reason and the drift report).
* **Manually** with the form: a *reason*, the *training window* and *force* (train even on the champion's
  own training set and skip the no-regression rule; the floor always holds).

Re-running or clearing any task is safe: the same training set in the same run reuses its MLflow run,
and a run is registered at most once (no second model version).
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import Param, dag, task

from continuous_training.adapter.approval import PolicyApproval
from continuous_training.adapter.assets import CHAMPION_PROMOTED, VALIDATED_DATA
from continuous_training.adapter.defaults import TRAINING_POOL, TRAINING_QUEUE, default_args, task_timeout
from continuous_training.adapter.release import ShadowChallenger


@dag(
    dag_id="train",
    schedule=VALIDATED_DATA,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["continuous-training", "model"],
    doc_md=__doc__,
    default_args=default_args(),
    params={
        "reason": Param(
            "manual",
            type="string",
            minLength=1,
            title="Reason",
            description="Why this model is trained; recorded on the MLflow run and the model version.",
        ),
        "window_days": Param(
            None,
            type=["null", "integer"],
            minimum=2,
            maximum=3650,
            title="Training window (days)",
            description="Newest validated daily partitions to use. Empty: training.window_days of policy.yaml.",
        ),
        "force": Param(
            False,
            type="boolean",
            title="Force",
            description="Train even if nothing changed and skip the no-regression rule (never the floor).",
        ),
        # Filled in by the monitor DAG, empty in a manual trigger: nullable, so the form submits as is
        # (a string or array Param without null is a required field in the trigger form).
        "drift_report": Param(
            None,
            type=["null", "string"],
            title="Drift report",
            description="Set by the monitor DAG: the drift report that triggered this run. Leave empty.",
        ),
        "drifted_columns": Param(
            None,
            type=["null", "array"],
            title="Drifted columns",
            description="Set by the monitor DAG: the columns found drifting. Leave empty.",
        ),
        "monitor_run_id": Param(
            None,
            type=["null", "string"],
            title="Monitor run",
            description="Set by the monitor DAG: the run that decided this retraining. Leave empty.",
        ),
    },
)
def train() -> None:
    @task(execution_timeout=task_timeout("train", "build_training_set"))
    def build_training_set(params: dict[str, Any] | None = None, run_id: str | None = None) -> dict[str, Any]:
        """Snapshot the newest validated partitions (list + content hash), pinned to this run."""
        from continuous_training.adapter import steps

        return steps.build_training_set((params or {}).get("window_days"), run_id or "manual")

    @task.short_circuit(execution_timeout=task_timeout("train", "should_train"))
    def should_train(
        training_set: dict[str, Any],
        params: dict[str, Any] | None = None,
        dag_run: Any = None,
        ti: Any = None,
    ) -> bool:
        """Skip the rest when there is nothing new to learn (the reason is in XCom `decision` and the log)."""
        from continuous_training.adapter import steps

        decision = steps.should_train(
            training_set,
            steps.run_reason(params, dag_run),
            bool((params or {}).get("force")),
            params,
            getattr(dag_run, "run_id", None),
        )
        ti.xcom_push(key="decision", value=decision)
        return bool(decision["train"])

    # One training at a time across DAG runs (and, in the cluster, workers): the pool has one slot, and
    # only the workers that listen on the training queue take it.
    @task(
        pool=TRAINING_POOL,
        pool_slots=1,
        queue=TRAINING_QUEUE,
        execution_timeout=task_timeout("train", "train_challenger"),
    )
    def train_challenger(
        training_set: dict[str, Any], params: dict[str, Any] | None = None, dag_run: Any = None
    ) -> dict[str, Any]:
        """Fit the pipeline and log it to MLflow (reused if this run already trained this set)."""
        from continuous_training.adapter import steps

        return steps.train_challenger(
            training_set, steps.run_reason(params, dag_run), steps.lineage(dag_run), params
        )

    @task(execution_timeout=task_timeout("train", "evaluate"))
    def evaluate(trained: dict[str, Any]) -> dict[str, Any]:
        """Score challenger and champion on the same holdout."""
        from continuous_training.adapter import steps

        return steps.evaluate(trained["run_id"])

    @task.branch(execution_timeout=task_timeout("train", "gate"))
    def gate(evaluation: dict[str, Any], params: dict[str, Any] | None = None) -> str:
        """Floor and no-regression rules; the verdict is recorded on the MLflow run."""
        from continuous_training.adapter import steps

        verdict = steps.gate(evaluation, bool((params or {}).get("force")))
        return "register" if verdict["passed"] else "notify_gate_blocked"

    @task(execution_timeout=task_timeout("train", "register"))
    def register(evaluation: dict[str, Any], dag_run: Any = None) -> dict[str, Any]:
        """Register the challenger as a model version with lineage tags (once per MLflow run)."""
        from continuous_training.adapter import steps

        return steps.register(evaluation["run_id"], steps.lineage(dag_run))

    # A confirmed promotion emits champion_promoted: the watch DAG then watches it on live traffic.
    @task(execution_timeout=task_timeout("train", "deploy"), outlets=[CHAMPION_PROMOTED])
    def deploy(registered: dict[str, Any], dag_run: Any = None) -> dict[str, Any]:
        """Smoke-test the version, make it `champion` and wait until the endpoint serves it."""
        from continuous_training.adapter import steps

        return steps.deploy(registered, steps.lineage(dag_run), dag_run)

    @task(execution_timeout=task_timeout("train", "notify_gate_blocked"))
    def notify_gate_blocked(evaluation: dict[str, Any], dag_run: Any = None) -> bool:
        """Mail on-call why the challenger was refused."""
        from continuous_training.adapter import steps

        return steps.notify_gate_blocked(evaluation["run_id"], steps.lineage(dag_run))

    # Runs after everything else, whatever happened (a teardown: it does not change the run's state, so a
    # failed deploy still fails the run): what a monitor-triggered retraining came to, on the monitor
    # run's record and in one mail.
    @task(execution_timeout=task_timeout("train", "report_outcome"))
    def report_outcome(
        params: dict[str, Any] | None = None, dag_run: Any = None, ti: Any = None
    ) -> dict[str, Any]:
        """For a run the monitor triggered: its outcome (new champion, gate blocked, not trained and why)."""
        from continuous_training.adapter import steps

        return steps.report_outcome(params or {}, dag_run, ti)

    # A person's approval between registration and deployment, when policy.yaml says so
    # (gate.require_approval); otherwise it approves at once. Rejected or unanswered: deploy is skipped.
    approve = PolicyApproval(
        task_id="approve",
        register_task_id="register",
        doc_md="Approve or reject the registered version (the UI's Required Actions).",
    )

    # The challenger on live traffic beside the champion (shadow scoring), when policy.yaml says so
    # (release.shadow); a failed verdict skips approval and deploy.
    shadow = ShadowChallenger(
        task_id="shadow",
        register_task_id="register",
        execution_timeout=task_timeout("train", "shadow"),
        doc_md="Wait for the challenger's shadow verdict on live traffic; block it if it fails.",
    )

    training_set = build_training_set()
    trained = train_challenger(training_set)
    should_train(training_set) >> trained
    evaluation = evaluate(trained)
    registered = register(evaluation)
    blocked = notify_gate_blocked(evaluation)
    gate(evaluation) >> [registered, blocked]
    deployed = deploy(registered)
    registered >> shadow >> approve >> deployed
    [deployed, blocked] >> report_outcome().as_teardown()


train()
