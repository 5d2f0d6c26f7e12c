"""The release stages that wait on live traffic: deferrable tasks that check, then wait on the triggerer.

* :class:`ShadowChallenger` is the ``shadow`` task of the ``train`` DAG, between ``register`` and
  ``approve``: while the endpoint scores live requests with the registered version beside the champion
  (alias ``challenger``), it waits for the shadow verdict
  (:func:`continuous_training.adapter.steps.shadow_check`). A failed verdict blocks the version: the
  downstream tasks (approval, deploy) are skipped and the run succeeds, as after a rejection.
* :class:`WatchChampion` is the ``watch_champion`` task of the ``watch`` DAG: it watches a new
  champion on live traffic (:func:`continuous_training.adapter.steps.watch_check`) and rolls it back
  through the rollback DAG's path on a breach (:func:`continuous_training.adapter.steps.watch_conclude`).

Each check reads the prediction log on a worker; while the verdict is not in, the task defers to
Airflow's triggerer (:class:`~airflow.providers.standard.triggers.temporal.TimeDeltaTrigger`): no
worker slot is held between checks. What is being judged is kept in XCom (key ``target``), so a
resumed check judges the same version.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.bases.skipmixin import SkipMixin
from airflow.sdk.exceptions import AirflowSkipException

#: The XCom key holding what is being judged.
TARGET_KEY = "target"


class _LiveCheck(BaseOperator):
    """Check, and defer for ``poll_seconds`` until :meth:`_verdict` gives a verdict; then conclude."""

    def _poll_seconds(self) -> float:
        raise NotImplementedError

    def _verdict(self, target: dict[str, Any]) -> dict[str, Any] | None:
        raise NotImplementedError

    def _conclude(self, context: Any, target: dict[str, Any], verdict: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _start(self, context: Any, target: dict[str, Any]) -> Any:
        context["ti"].xcom_push(key=TARGET_KEY, value=target)
        return self._check(context, target)

    def resume(self, context: Any, event: Any = None) -> Any:
        """Called by Airflow after each wait: check the same target again."""
        target = context["ti"].xcom_pull(task_ids=self.task_id, key=TARGET_KEY)
        if not target:
            raise RuntimeError(f"{self.task_id}: what is judged is missing from XCom key {TARGET_KEY!r}")
        return self._check(context, target)

    def _check(self, context: Any, target: dict[str, Any]) -> Any:
        from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

        verdict = self._verdict(target)
        if verdict is None:
            self.defer(
                trigger=TimeDeltaTrigger(timedelta(seconds=self._poll_seconds())),
                method_name="resume",
            )
        return self._conclude(context, target, verdict)


class ShadowChallenger(_LiveCheck, SkipMixin):
    """Wait for the registered version's shadow verdict; skip approval and deploy when it fails.

    Args:
        register_task_id: the task whose XCom is the registered version (``name``, ``version``,
            ``run_id``).
        kwargs: passed to :class:`~airflow.sdk.BaseOperator`.
    """

    inherits_from_skipmixin = True

    def __init__(self, *, register_task_id: str = "register", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.register_task_id = register_task_id

    def execute(self, context: Any) -> Any:
        from continuous_training.adapter import steps

        registered = context["ti"].xcom_pull(task_ids=self.register_task_id)
        target = steps.shadow_target(registered)
        if target is None:
            return {"shadow": False, "version": str(registered["version"])}
        self.log.info(
            "Shadow stage of %s v%s beside champion v%s",
            target["name"],
            target["version"],
            target["champion"],
        )
        return self._start(context, target)

    def _poll_seconds(self) -> float:
        from continuous_training.config import load_policy

        return load_policy().release.shadow_poll_seconds

    def _verdict(self, target: dict[str, Any]) -> dict[str, Any] | None:
        from continuous_training.adapter import steps

        return steps.shadow_check(target)

    def _conclude(self, context: Any, target: dict[str, Any], verdict: dict[str, Any]) -> Any:
        from continuous_training.adapter import steps

        concluded = steps.shadow_conclude(target, verdict, context["dag_run"])
        if not verdict["passed"]:
            downstream = [
                t for t in context["task"].get_direct_relatives(upstream=False) if not t.is_teardown
            ]
            self.log.info("Blocked: skipping %s", [t.task_id for t in downstream])
            self.skip(ti=context["ti"], tasks=downstream)
        return {"shadow": True, **concluded}


class WatchChampion(_LiveCheck):
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
        return self._start(context, target)

    def _poll_seconds(self) -> float:
        from continuous_training.config import load_policy

        return load_policy().release.watch_poll_seconds

    def _verdict(self, target: dict[str, Any]) -> dict[str, Any] | None:
        from continuous_training.adapter import steps

        return steps.watch_check(target)

    def _conclude(self, context: Any, target: dict[str, Any], verdict: dict[str, Any]) -> Any:
        from continuous_training.adapter import steps

        return steps.watch_conclude(target, verdict, context["dag_run"])
