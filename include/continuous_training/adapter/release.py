"""The watcher: a deferrable task that watches a new champion on live traffic.

:class:`WatchChampion` is the ``watch_champion`` task of the ``watch`` DAG. Each check reads the
prediction log on a worker (:func:`continuous_training.adapter.steps.watch_check`), then, while the
verdict is not in, the task defers to Airflow's triggerer for ``release.watch_poll_seconds``
(:class:`~airflow.providers.standard.triggers.temporal.TimeDeltaTrigger`): no worker slot is held
between checks. The promotion it watches travels in the deferral, so a resumed check watches the same
move. On a breach the task rolls back through the rollback DAG's path and mails on-call
(:func:`continuous_training.adapter.steps.watch_conclude`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

#: The XCom key holding the move being watched.
TARGET_KEY = "target"


class WatchChampion(BaseOperator):
    """Watch the newest promotion for ``release.watch_minutes``; roll it back on a breach."""

    def execute(self, context: Any) -> Any:
        from continuous_training.adapter import steps
        from continuous_training.config import load_policy

        if not load_policy().release.watch:
            raise AirflowSkipException("release.watch is false in policy.yaml: nothing is watched")
        target = steps.watch_target()
        if target is None:
            raise AirflowSkipException(
                "The newest confirmed move of the champion is not a promotion still serving: nothing to watch"
            )
        self.log.info(
            "Watching %s v%s (promoted %s over v%s)",
            target["name"],
            target["version"],
            target["at"],
            target["from_version"],
        )
        context["ti"].xcom_push(key=TARGET_KEY, value=target)
        return self._check(context, target)

    def resume(self, context: Any, event: Any = None) -> Any:
        """Called by Airflow after each wait: check the same move again."""
        target = context["ti"].xcom_pull(task_ids=self.task_id, key=TARGET_KEY)
        if not target:
            raise RuntimeError(f"{self.task_id}: the watched move is missing from XCom key {TARGET_KEY!r}")
        return self._check(context, target)

    def _check(self, context: Any, target: dict[str, Any]) -> Any:
        from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

        from continuous_training.adapter import steps
        from continuous_training.config import load_policy

        verdict = steps.watch_check(target)
        if verdict is None:
            self.defer(
                trigger=TimeDeltaTrigger(timedelta(seconds=load_policy().release.watch_poll_seconds)),
                method_name="resume",
            )
        return steps.watch_conclude(target, verdict, context["dag_run"])
