"""
# Rollback: return the champion to an earlier version

Trigger it with the form when the serving champion must go, now. It returns the `champion` alias to
the version you give (by default the champion before the current one, from the deployment ledger) and
waits until **every endpoint worker serves it**.

| step | what it does |
| --- | --- |
| `choose_version` | the form's version, or the previous champion in the ledger; refuses a version that failed a live check unless *force* is on; skips the run if it is the champion already |
| `check_version` | its signed provenance and file digests (a version the pipeline never signed never serves, forced or not), then a smoke test on its own reference sample |
| `move_alias` | moves `champion`, waits until every endpoint worker serves it, appends the move to the deployment ledger; if the endpoint does not serve it in time, the alias goes back to the version it left |
| `notify_on_call` | mails on-call who rolled back, from which version to which, and why |

A version "failed a live check" when its shadow verdict failed, a person rejected it, or the watcher
rolled it back after it was promoted. Returning to such a version needs *force*; the ledger record says
it was forced and why.

Every step is safe to clear and re-run: the alias moves once, the ledger gets one record and on-call
one mail per move. The same steps serve the watcher's automatic rollback (`watch` DAG).
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import Param, dag, task

from continuous_training.adapter.defaults import default_args, task_timeout


@dag(
    dag_id="rollback",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["continuous-training", "model", "release"],
    doc_md=__doc__,
    default_args=default_args(),
    params={
        "version": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Version to return to",
            description="A registered version of the model. Empty: the champion before the current one, "
            "from the deployment ledger (the Models page lists both).",
        ),
        "reason": Param(
            "",
            type="string",
            minLength=3,
            title="Reason",
            description="Why the champion goes back (kept in the deployment ledger and the mail).",
        ),
        "force": Param(
            False,
            type="boolean",
            title="Force",
            description="A version that did not pass every gate (its shadow verdict or approval failed, or "
            "the watcher rolled it back) is refused unless this is on. A version the pipeline never "
            "signed is refused even with Force.",
        ),
    },
)
def rollback() -> None:
    @task(execution_timeout=task_timeout("rollback", "choose_version"))
    def choose_version(params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The version to return to, checked against the ledger and its recorded verdicts."""
        from continuous_training.adapter import steps

        return steps.rollback_choose(params or {})

    @task(execution_timeout=task_timeout("rollback", "check_version"))
    def check_version(chosen: dict[str, Any]) -> dict[str, Any]:
        """Signed provenance, file digests and a smoke test of the version."""
        from continuous_training.adapter import steps

        return steps.rollback_check(chosen)

    @task(execution_timeout=task_timeout("rollback", "move_alias"))
    def move_alias(
        checked: dict[str, Any], params: dict[str, Any] | None = None, dag_run: Any = None
    ) -> dict[str, Any]:
        """Move `champion`, wait until every endpoint worker serves it, record it in the ledger."""
        from continuous_training.adapter import steps

        return steps.rollback_move(checked, str((params or {}).get("reason") or "manual rollback"), dag_run)

    @task(execution_timeout=task_timeout("rollback", "notify_on_call"))
    def notify_on_call(moved: dict[str, Any], dag_run: Any = None) -> bool:
        """Mail on-call the move (once per move)."""
        from continuous_training.adapter import steps

        return steps.notify_rollback(moved, dag_run)

    notify_on_call(move_alias(check_version(choose_version())))


rollback()
