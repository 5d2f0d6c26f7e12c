"""A person approves a version before it deploys, when the policy asks for it (``gate.require_approval``).

:class:`PolicyApproval` is the ``approve`` task of the ``train`` DAG, between ``register`` and
``deploy``. It is Airflow's own Human-in-the-loop :class:`ApprovalOperator` (the standard provider),
so the request is in the UI's *Required Actions*, answered there or over the REST API, and Airflow
records who answered and when. What it adds:

* the policy decides at run time: with ``require_approval: false`` (the default) the task approves at
  once and logs why, so the DAG's shape never depends on a file read while parsing;
* the request says what is being approved (the version, the gate's verdict and metrics against the
  champion) and links its evaluation page and the MLflow run;
* on-call is mailed that an approval waits (once per version);
* the answer is recorded on the model version (tag ``ct.approval``: decision, who, when); a
  rejection is also a ``blocked`` record of the deployment ledger, takes the version's ``challenger``
  alias, and is mailed; an unanswered request is rejected after ``approval_timeout_hours`` (the
  operator's default answer), and the rejection says so.

A rejected version does not deploy (``deploy`` is skipped) and the run still succeeds: a human
decision is not a failure.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

log = logging.getLogger(__name__)

#: Who decided when the policy does not ask a person.
POLICY_USER = {"id": "policy", "name": "policy (gate.require_approval is false)"}
#: Who decided when nobody answered within ``approval_timeout_hours``.
TIMEOUT_USER = {"id": "timeout", "name": "nobody (the request timed out)"}


class PolicyApproval(ApprovalOperator):
    """Airflow's approval step, switched on by the policy, documented by the version it approves.

    Args:
        register_task_id: the task whose XCom is the registered version (``name``, ``version``,
            ``run_id``).
        kwargs: passed to :class:`ApprovalOperator` (``subject`` is filled in at run time).
    """

    def __init__(self, *, register_task_id: str = "register", **kwargs: Any) -> None:
        kwargs.setdefault("subject", "Approve a model version for deployment")
        super().__init__(defaults=ApprovalOperator.REJECT, **kwargs)
        self.register_task_id = register_task_id

    def execute(self, context: Any) -> Any:
        from continuous_training.config import load_policy

        gate = load_policy().gate
        registered = context["ti"].xcom_pull(task_ids=self.register_task_id)
        if not gate.require_approval:
            log.info("No approval asked: gate.require_approval is false in policy.yaml")
            return {"chosen_options": [self.APPROVE], "responded_by_user": POLICY_USER, "params_input": {}}
        request = approval_request(registered, context["dag_run"].run_id)
        self.subject = request["subject"]
        self.body = request["body"]
        self.response_timeout = timedelta(hours=float(gate.approval_timeout_hours))
        actions = self.generate_link_to_ui(task_instance=context["task_instance"], base_url=_public_url())
        _notify_waiting(registered, request, self.response_timeout, actions)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        registered = context["ti"].xcom_pull(task_ids=self.register_task_id)
        if event.get("error_type") == "timeout" or not event.get("responded_by_user"):
            # Nobody answered in time: the scheduler gives the operator's default answer, Reject.
            event = {
                **{k: v for k, v in event.items() if k not in ("error", "error_type")},
                "chosen_options": [self.REJECT],
                "params_input": event.get("params_input") or {},
                "responded_at": event.get("responded_at") or datetime.now(UTC),
                "responded_by_user": TIMEOUT_USER,
            }
        decision = record_decision(registered, event, context["dag_run"].run_id)
        if decision["decision"] == "rejected":
            _record_rejected(registered, decision, context["dag_run"])
            _notify_rejected(registered, decision)
        return super().execute_complete(context, event)


def approval_request(registered: dict[str, Any], dag_run_id: str) -> dict[str, str]:
    """The subject and Markdown body of the approval request of a registered version."""
    from continuous_training import links
    from continuous_training.model.registry import recorded_verdict
    from continuous_training.settings import load_settings

    settings = load_settings()
    verdict = recorded_verdict(registered["run_id"])
    page = links.ui_url(settings.public_url, "evaluation", registered["run_id"])
    champion = verdict.get("champion_value")
    lines = [
        f"**{registered['name']} v{registered['version']}** passed the gate in run `{dag_run_id}`.",
        "",
        f"* {verdict.get('metric')} on the holdout: **{_fmt(verdict.get('challenger_value'))}**"
        + (f" (champion: {_fmt(champion)})" if champion is not None else " (no champion yet)"),
        *(f"* {reason}" for reason in verdict.get("reasons", [])),
        "",
        f"[Evaluation report and comparison with the champion]({page})",
        "",
        "Approve deploys it; Reject keeps the champion. Unanswered, the request is rejected.",
    ]
    return {
        "subject": f"Deploy {registered['name']} v{registered['version']}?",
        "body": "\n".join(lines),
        "page": page,
    }


def record_decision(registered: dict[str, Any], event: dict[str, Any], dag_run_id: str) -> dict[str, Any]:
    """Tag the model version with the approval decision; the tag as recorded."""
    from continuous_training.lineage import TAG_APPROVAL
    from continuous_training.modelstore import client

    by = event.get("responded_by_user") or {}
    at = event.get("responded_at")
    decision = {
        "decision": "approved" if event["chosen_options"] == [ApprovalOperator.APPROVE] else "rejected",
        "by": by.get("name") or by.get("id") or "unknown",
        "at": at.isoformat() if hasattr(at, "isoformat") else str(at),
        "timed_out": by.get("id") == TIMEOUT_USER["id"],
        "dag_run_id": dag_run_id,
    }
    client().set_model_version_tag(
        registered["name"], registered["version"], TAG_APPROVAL, json.dumps(decision, sort_keys=True)
    )
    log.info(
        "%s v%s %s by %s", registered["name"], registered["version"], decision["decision"], decision["by"]
    )
    return decision


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def _notify_waiting(
    registered: dict[str, Any], request: dict[str, str], timeout: timedelta, actions: str
) -> None:
    from continuous_training.alerts import mail
    from continuous_training.alerts.notifier import notify

    notify(
        mail.approval_waiting_mail(
            name=registered["name"],
            version=str(registered["version"]),
            page_url=request["page"],
            actions_url=actions,
            timeout_hours=timeout.total_seconds() / 3600,
        )
    )


def _record_rejected(registered: dict[str, Any], decision: dict[str, Any], dag_run: Any) -> None:
    """The deployment ledger's ``blocked`` record of a rejection (once: keyed by the decision's time)."""
    from continuous_training.adapter.steps import actor
    from continuous_training.model.deploy import record_blocked

    who = "nobody answered in time" if decision.get("timed_out") else f"rejected by {decision['by']}"
    record_blocked(
        registered["name"],
        registered["version"],
        actor=actor(dag_run, "approve", None if decision.get("timed_out") else decision["by"]),
        reason=f"approval {who}",
        at=decision["at"],
        detail={"approval": decision},
    )


def _notify_rejected(registered: dict[str, Any], decision: dict[str, Any]) -> None:
    from continuous_training import links
    from continuous_training.alerts import mail
    from continuous_training.alerts.notifier import notify

    notify(
        mail.approval_rejected_mail(
            name=registered["name"],
            version=str(registered["version"]),
            decision=decision,
            page_url=links.ui_url(_public_url(), "evaluation", registered["run_id"]),
        )
    )


def _public_url() -> str:
    from continuous_training.settings import load_settings

    return load_settings().public_url
