"""The Airflow adapter: one function per DAG task, plain JSON in, small JSON out.

The DAG files only wire these together; each function here calls one library function and decides
what the task returns through XCom (a path, a hash, a version, a verdict: never a DataFrame or a
model), turning "nothing to do" into a skip. It is the one module of the library, with the alerts,
that knows Airflow. Keeping these outside the DAG files lets them be tested without a scheduler and
keeps DAG parsing light (this module is imported inside task functions only).
"""

from __future__ import annotations

import logging
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException
from airflow.utils.deprecation_tools import DeprecatedImportWarning

from continuous_training import links
from continuous_training.alerts import mail
from continuous_training.alerts.notifier import notify
from continuous_training.config import load_policy
from continuous_training.lake import Lake, day_key
from continuous_training.settings import load_settings

log = logging.getLogger(__name__)

# Importing skops.io (every task that saves or loads a model) looks up each scipy ufunc's name in every
# loaded module (skops.io._utils.whichmodule), and each of Airflow's deprecated module aliases
# (airflow.utils.timezone, airflow.utils.trigger_rule, ...) answers with a DeprecatedImportWarning:
# about 1,160 warnings, 99% of a training task's log. Only that pair is silenced: any other warning,
# Airflow's deprecation warnings about our own code included, still reaches the task log.
warnings.filterwarnings("ignore", category=DeprecatedImportWarning, module=r"skops\.io\._utils")


def _lake() -> Lake:
    return Lake.from_settings()


def _run_url(dag_id: str, run_id: str) -> str:
    return links.airflow_run_url(load_settings().public_url, dag_id, run_id)


def _page_url(*segments: str) -> str:
    """A page of the project's UI, at the address people open (``CT_PUBLIC_URL``)."""
    return links.ui_url(load_settings().public_url, *segments)


# --------------------------------------------------------------------------------------------- ingest


def resolve_day(param_day: str | None, data_interval_start: Any) -> str:
    """The day a run ingests: the ``day`` param if given, else the start of its data interval."""
    if param_day:
        try:
            return day_key(param_day)
        except ValueError as exc:
            raise ValueError(f"param `day`: expected YYYY-MM-DD, got {param_day!r}") from exc
    if data_interval_start is None:
        raise ValueError("param `day` is empty and this run has no data interval: give a day (YYYY-MM-DD)")
    return data_interval_start.date().isoformat()


def stage_partition(day: str) -> dict[str, Any]:
    """Canonicalise the day's landing files into ``raw/dt=<day>``; skip the run if nothing landed."""
    from continuous_training.data.ingest import NoLandingFilesError, stage_raw_partition

    try:
        manifest = stage_raw_partition(_lake(), day)
    except NoLandingFilesError as exc:
        raise AirflowSkipException(f"Nothing to ingest for {day}: {exc}") from exc
    log.info("Staged %s: %s rows, sha256 %s", day, manifest["rows"], manifest["sha256"])
    return manifest


def validate_partition(staged: dict[str, Any]) -> dict[str, Any]:
    """Validate ``raw/dt=<day>``; the full GX result is stored in the lake, a summary is returned."""
    from continuous_training.data.validate import validate_day

    outcome, record = validate_day(_lake(), staged["day"])
    keys = ("success", "day", "sha256", "rows", "bad_rows", "evaluated", "parse_errors")
    summary = {k: outcome.get(k) for k in keys}
    summary["failed"] = [{k: v for k, v in f.items() if k != "kwargs"} for f in outcome["failed"]]
    summary["result_path"] = str(record)
    log.info(
        "Validation of %s: success=%s, %d failed expectation(s)",
        staged["day"],
        outcome["success"],
        len(outcome["failed"]),
    )
    return summary


def publish_partition(validation: dict[str, Any]) -> dict[str, Any]:
    """Publish ``validated/dt=<day>`` (idempotent)."""
    from continuous_training.data.partitions import publish_validated
    from continuous_training.data.validate import read_validation_record

    lake = _lake()
    outcome = read_validation_record(lake, validation["day"], validation["sha256"])
    return publish_validated(lake, validation["day"], outcome)


def quarantine_partition(validation: dict[str, Any], *, run_id: str = "") -> dict[str, Any]:
    """Move a failing batch to quarantine and mail on-call what failed (once per batch)."""
    from continuous_training.data.partitions import quarantine_partition as keep_in_quarantine
    from continuous_training.data.validate import read_validation_record, summarize_failures

    lake, day = _lake(), validation["day"]
    outcome = read_validation_record(lake, day, validation["sha256"])
    kept = keep_in_quarantine(lake, day, outcome)
    lines = summarize_failures(outcome)
    notify(
        mail.bad_data_mail(
            day=day,
            outcome=outcome,
            failures=lines,
            quarantine_path=kept["path"],
            landing_path=str(lake.landing(day)),
            run_url=_run_url("ingest", run_id) if run_id else None,
            page_url=links.quarantine_url(load_settings().public_url, day, Path(kept["path"]).name),
        )
    )
    return {"day": day, "path": kept["path"], "failed": lines}


# ---------------------------------------------------------------------------------------------- train


def run_reason(params: dict[str, Any] | None, dag_run: Any) -> str:
    """Why this training run happens: new data (Asset), drift (monitor) or what the user typed."""
    from continuous_training.model.training_set import NEW_DATA_REASON

    run_type = str(getattr(dag_run, "run_type", "") or "")
    if run_type.lower().endswith("asset_triggered"):
        return NEW_DATA_REASON
    return str((params or {}).get("reason") or "manual")


def lineage(dag_run: Any) -> dict[str, str]:
    """The DAG run and code version a model comes from."""
    from continuous_training.lineage import UNKNOWN, git_commit

    return {
        "dag_id": str(getattr(dag_run, "dag_id", "") or "train"),
        "dag_run_id": str(getattr(dag_run, "run_id", "") or UNKNOWN),
        "git_commit": git_commit(),
    }


def actor(dag_run: Any, task_id: str, user: str | None = None) -> dict[str, str | None]:
    """Who or what moves the champion, for the deployment ledger: the DAG run, the task and the person
    (``user``, else whoever triggered the run; None for scheduled and asset-triggered runs)."""
    return {
        "dag_id": str(getattr(dag_run, "dag_id", "") or "") or None,
        "dag_run_id": str(getattr(dag_run, "run_id", "") or "") or None,
        "task_id": task_id,
        "user": user or getattr(dag_run, "triggering_user_name", None) or None,
    }


def build_training_set(window_days: int | None, run_id: str) -> dict[str, Any]:
    """Snapshot the newest validated partitions, pinned to this DAG run; skip when there are none yet."""
    from continuous_training.model.training_set import snapshot_for_run

    window = int(window_days or load_policy().training.window_days)
    snapshot = snapshot_for_run(_lake(), run_id, window)
    if snapshot is None:
        raise AirflowSkipException("No validated partition yet: nothing to train on.")
    return snapshot


def should_train(
    training_set: dict[str, Any],
    reason: str,
    force: bool,
    params: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Apply :func:`continuous_training.model.training_set.training_decision`; log why.

    A drift-style run (a drift report in its conf) that the monitor did not trigger is first held to
    the drift cooldown (:func:`continuous_training.monitoring.retrain.admit_drift_run`); *force*
    skips that too.

    Returns:
        ``{"train": bool, "why": str}``.
    """
    from continuous_training.model.registry import get_champion
    from continuous_training.model.training_set import training_decision

    policy = load_policy()
    if params and params.get("drift_report") and not force:
        from continuous_training.monitoring.retrain import admit_drift_run

        admitted = admit_drift_run(_lake(), run_id or "manual", params, policy.drift)
        log.info("Drift-style run admitted? %s: %s", admitted["train"], admitted["why"])
        if not admitted["train"]:
            return admitted
    decision = training_decision(training_set, get_champion(), policy.training, reason, force)
    log.info("Train? %s: %s", decision["train"], decision["why"])
    return decision


def train_challenger(
    training_set: dict[str, Any], reason: str, lineage: dict[str, str], params: dict[str, Any] | None
) -> dict[str, Any]:
    """Fit the challenger and log it to MLflow, with the drift report that asked for it, if any."""
    from continuous_training.model.train import train_challenger as fit

    extra = dict(lineage)
    if params and params.get("drift_report"):
        extra["drift_report"] = str(params["drift_report"])
        extra["drifted_columns"] = ",".join(params.get("drifted_columns") or [])
    return fit(training_set, reason=reason, lineage=extra)


def evaluate(run_id: str) -> dict[str, Any]:
    """Score challenger and champion on the challenger's holdout."""
    from continuous_training.model.evaluate import evaluate_challenger

    return evaluate_challenger(run_id)


def gate(evaluation: dict[str, Any], force: bool) -> dict[str, Any]:
    """Apply the gate and record the verdict on the challenger's MLflow run (tag ``ct.gate_verdict``)."""
    from continuous_training.model.evaluate import gate_verdict
    from continuous_training.model.registry import record_gate_verdict

    verdict = gate_verdict(
        evaluation["challenger"],
        evaluation.get("champion"),
        load_policy().gate,
        force=force,
        champion_error=evaluation.get("champion_error"),
    )
    verdict["champion_version"] = evaluation.get("champion_version")
    record_gate_verdict(evaluation["run_id"], verdict)
    log.info("Gate %s: %s", "passed" if verdict["passed"] else "BLOCKED", "; ".join(verdict["reasons"]))
    return verdict


def register(run_id: str, lineage: dict[str, str]) -> dict[str, Any]:
    """Register a run that passed the gate (at most one version per run)."""
    from continuous_training.model.registry import register_passed

    return register_passed(run_id, lineage)


def deploy(registered: dict[str, Any], lineage: dict[str, str], dag_run: Any = None) -> dict[str, Any]:
    """Verify and smoke-test the version and make it the champion; mail on-call if it was refused (its
    provenance, files or format: once per version, the endpoint's mail included) or the endpoint did
    not serve it."""
    from continuous_training.model.deploy import (
        DeployRefused,
        DeployRolledBack,
        check_gated_against,
        check_provenance,
        promote_champion,
        smoke_test,
    )
    from continuous_training.model.registry import get_champion, recorded_verdict
    from continuous_training.modelstore import load_reference_sample

    name, version = registered["name"], str(registered["version"])
    champion = get_champion(name)
    try:
        # The signature first (tags only); the smoke test then loads the signed files, verified.
        check_provenance(name, version)
        gated_against = recorded_verdict(registered["run_id"]).get("champion_version")
        check_gated_against(name, version, gated_against, str(champion["version"]) if champion else None)
        sample = load_reference_sample(name, version).head(200)
        smoke = smoke_test(name, version, sample)
    except DeployRefused as exc:
        notify(
            mail.model_refused_mail(
                name=name,
                version=version,
                reason=str(exc),
                refused_by=f"the deploy task of {lineage['dag_id']} run {lineage['dag_run_id']}",
                serving=str(champion["version"]) if champion else None,
            )
        )
        raise
    log.info("Smoke test of %s v%s passed: %s", name, version, smoke)
    try:
        promoted = promote_champion(
            name,
            version,
            endpoint_url=load_settings().endpoint_url,
            moved_by={**actor(dag_run, "deploy", _approver(name, version)), **lineage},
        )
    except DeployRolledBack as exc:
        notify(
            mail.deploy_rolled_back_mail(
                name=name,
                version=version,
                error=str(exc),
                dag_run_id=lineage["dag_run_id"],
                run_url=_run_url(lineage["dag_id"], lineage["dag_run_id"]),
                page_url=_page_url("evaluation", registered["run_id"]),
            )
        )
        raise
    return {**promoted, "smoke_test": smoke}


def _approver(name: str, version: str) -> str | None:
    """The person who approved the version (None when the policy approved it, or nobody was asked)."""
    import json

    from continuous_training.adapter.approval import POLICY_USER
    from continuous_training.lineage import TAG_APPROVAL
    from continuous_training.modelstore import client

    raw = (client().get_model_version(name, version).tags or {}).get(TAG_APPROVAL)
    decision = json.loads(raw) if raw else {}
    by = decision.get("by")
    return (
        None if decision.get("decision") != "approved" or by == POLICY_USER["name"] else f"approved by {by}"
    )


def notify_gate_blocked(run_id: str, lineage: dict[str, str]) -> bool:
    """Mail on-call why the challenger was refused (once per MLflow run)."""
    from continuous_training.model.registry import recorded_verdict
    from continuous_training.modelstore import client

    verdict = recorded_verdict(run_id)
    experiment_id = client().get_run(run_id).info.experiment_id
    return notify(
        mail.gate_blocked_mail(
            run_id=run_id,
            verdict=verdict,
            mlflow_url=links.mlflow_run_url(load_settings().mlflow_tracking_uri, experiment_id, run_id),
            run_url=_run_url(lineage["dag_id"], lineage["dag_run_id"]),
            page_url=_page_url("evaluation", run_id),
        )
    )


#: The task states that mean a task did not do its work because something failed.
_FAILED_STATES = ("failed", "upstream_failed")
#: The train DAG's tasks in the order they run (the first failed one is the one named).
_TRAIN_TASKS = (
    "build_training_set",
    "should_train",
    "train_challenger",
    "evaluate",
    "gate",
    "register",
    "notify_gate_blocked",
    "shadow",
    "approve",
    "deploy",
)


def train_outcome(states: dict[str, str | None], pulled: dict[str, Any]) -> dict[str, Any]:
    """What a ``train`` run came to, from its task states and return values (pure).

    Args:
        states: task id -> state of the run's task instances.
        pulled: the XComs of ``should_train`` (its decision), ``evaluate``, ``register`` and ``deploy``
            (None where the task returned nothing).

    Returns:
        ``{"outcome", "summary", ...}``; ``outcome`` is ``new_champion`` (with ``version``,
        ``previous_version``), ``gate_blocked``, ``blocked`` (shadow verdict or approval, with
        ``version``), ``not_trained`` (with ``why``) or ``failed`` (with ``failed_tasks``).
    """
    failed = [t for t in _TRAIN_TASKS if states.get(t) in _FAILED_STATES]
    first_failed = [t for t in failed if states.get(t) == "failed"] or failed
    evaluation, registered, deployed = pulled.get("evaluate"), pulled.get("register"), pulled.get("deploy")
    run = {"mlflow_run_id": (evaluation or {}).get("run_id")}
    if first_failed:
        return {
            "outcome": "failed",
            "summary": f"failed at {first_failed[0]}: the serving champion stays",
            "failed_tasks": first_failed,
            **run,
        }
    if states.get("deploy") == "success" and deployed:
        return {
            "outcome": "new_champion",
            "summary": f"new champion v{deployed['version']}"
            + (f" (was v{deployed['previous_version']})" if deployed.get("previous_version") else ""),
            "version": str(deployed["version"]),
            "previous_version": deployed.get("previous_version"),
            **run,
        }
    if states.get("notify_gate_blocked") == "success" or (
        states.get("gate") == "success" and states.get("register") == "skipped"
    ):
        return {"outcome": "gate_blocked", "summary": "the gate blocked the challenger", **run}
    if registered and states.get("deploy") == "skipped":
        return {
            "outcome": "blocked",
            "summary": f"v{registered['version']} passed the gate but was stopped before deploy",
            "version": str(registered["version"]),
            **run,
        }
    decision = pulled.get("should_train") or {}
    if states.get("build_training_set") == "skipped":
        why = "no validated partition yet"
    else:
        why = decision.get("why") or "should_train decided not to train"
    return {"outcome": "not_trained", "summary": f"not trained: {why}", "why": why, **run}


def report_outcome(params: dict[str, Any], dag_run: Any, ti: Any) -> dict[str, Any]:
    """For a run the monitor triggered: put what it came to on the monitor run's decision record and mail
    on-call (once per train run). Other runs skip."""
    from continuous_training.lineage import TAG_GATE_VERDICT, json_tag
    from continuous_training.model.ledger import failed_live_checks, read_ledger
    from continuous_training.modelstore import client
    from continuous_training.monitoring.retrain import record_outcome

    monitor_run_id = params.get("monitor_run_id")
    if not monitor_run_id:
        raise AirflowSkipException("Not triggered by the monitor: its outcome is this run's own page.")
    dag_id, run_id = dag_run.dag_id, dag_run.run_id
    states = ti.get_task_states(dag_id=dag_id, run_ids=[run_id]).get(run_id, {})
    pulled = {task: ti.xcom_pull(task_ids=task) for task in ("evaluate", "register", "deploy")}
    pulled["should_train"] = ti.xcom_pull(task_ids="should_train", key="decision")
    outcome = train_outcome(states, pulled)
    if outcome.get("mlflow_run_id"):
        verdict = json_tag(client().get_run(outcome["mlflow_run_id"]).data.tags, TAG_GATE_VERDICT) or {}
        outcome["gate"] = {
            k: verdict.get(k) for k in ("passed", "metric", "challenger_value", "champion_value")
        }
        outcome["gate"]["reasons"] = list(verdict.get("reasons") or [])
    if outcome["outcome"] == "blocked":
        name = load_policy().model.name
        stops = failed_live_checks(read_ledger(_lake(), name), outcome["version"])
        outcome["why"] = stops[-1]["reason"] if stops else "stopped by the shadow stage or the approval"
    outcome["train_run_id"] = run_id
    record_outcome(_lake(), monitor_run_id, outcome)
    notify(
        mail.retrain_outcome_mail(
            outcome=outcome,
            reason=str(params.get("reason") or ""),
            monitor_run_id=monitor_run_id,
            run_url=_run_url(dag_id, run_id),
            monitor_url=_run_url("monitor", monitor_run_id),
            page_url=_page_url("models"),
        )
    )
    return outcome


# ------------------------------------------------------------------------------------------- rollback


def rollback_choose(params: dict[str, Any]) -> dict[str, Any]:
    """The version the rollback returns to (the form's, else the previous champion), refused if it
    failed a live check and *force* is off; the run is skipped if it is the champion already."""
    from continuous_training.model.rollback import choose_target

    chosen = choose_target(
        _lake(), load_policy().model.name, params.get("version"), force=bool(params.get("force"))
    )
    if chosen["noop"]:
        raise AirflowSkipException(
            f"{chosen['name']} v{chosen['version']} is the champion already: nothing to do"
        )
    if chosen["forced"]:
        log.warning(
            "Forced: returning to v%s although %s", chosen["version"], "; ".join(chosen["failed_checks"])
        )
    return chosen


def rollback_check(chosen: dict[str, Any]) -> dict[str, Any]:
    """Verify the target's signed provenance and files, and smoke-test it."""
    from continuous_training.model.rollback import check_target

    checked = check_target(chosen["name"], chosen["version"])
    log.info("v%s verified and smoke-tested: %s", chosen["version"], checked["smoke_test"])
    return {**chosen, "smoke_test": checked["smoke_test"]}


def rollback_move(checked: dict[str, Any], reason: str, dag_run: Any) -> dict[str, Any]:
    """Move the alias to the target, wait until every endpoint worker serves it, record the ledger entry."""
    from continuous_training.model import ledger
    from continuous_training.model.deploy import move_champion

    by = actor(dag_run, "move_alias")
    why = reason
    if checked.get("forced"):
        why = f"{reason} (forced although {'; '.join(checked['failed_checks'])})"
    return move_champion(
        checked["name"],
        checked["version"],
        kind=ledger.ROLLBACK,
        actor=by,
        reason=why,
        endpoint_url=load_settings().endpoint_url,
        detail={"forced": bool(checked.get("forced")), "smoke_test": checked["smoke_test"]},
    )


def notify_rollback(moved: dict[str, Any], dag_run: Any) -> bool:
    """Mail on-call the rollback's ledger record (once per move)."""
    return _mail_move(moved["name"], moved["ledger"], dag_run)


def _mail_move(name: str, key: str, dag_run: Any) -> bool:
    from continuous_training.model.ledger import read_ledger

    entry = next(e for e in read_ledger(_lake(), name) if e["key"] == key)
    dag_id, run_id = getattr(dag_run, "dag_id", None), getattr(dag_run, "run_id", None)
    return notify(
        mail.rollback_mail(
            name=name,
            entry=entry,
            run_url=_run_url(dag_id, run_id) if dag_id and run_id else None,
            page_url=_page_url("models"),
        )
    )


# --------------------------------------------------------------------------------------------- shadow


def shadow_target(registered: dict[str, Any]) -> dict[str, Any] | None:
    """What the shadow stage judges: the registered version, beside the champion serving now (None when
    there is no shadow stage: ``release.shadow`` is off, or no champion serves to compare with)."""
    from continuous_training.model.registry import get_champion

    name, version = registered["name"], str(registered["version"])
    if not load_policy().release.shadow:
        log.info("No shadow stage: release.shadow is false in policy.yaml")
        return None
    champion = get_champion(name)
    if champion is None:
        log.info("No shadow stage for %s v%s: no champion serves to compare it with", name, version)
        return None
    if str(champion["version"]) == version:
        log.info("No shadow stage: %s v%s is the champion already", name, version)
        return None
    return {
        "name": name,
        "version": version,
        "run_id": registered["run_id"],
        "champion": str(champion["version"]),
        "started": datetime.now(UTC).isoformat(),
    }


def shadow_check(target: dict[str, Any], now: datetime | None = None) -> dict[str, Any] | None:
    """The shadow verdict on the target so far (:func:`continuous_training.model.release.shadow_verdict`)
    over the rows the endpoint scored with it since it was registered: None while it waits for rows.

    A verdict already on the version (tag ``ct.shadow_verdict``) is the answer: a cleared task judges
    nothing twice."""
    import json

    from continuous_training.lineage import TAG_SHADOW_VERDICT
    from continuous_training.model.release import shadow_verdict
    from continuous_training.modelstore import client
    from continuous_training.predlog import read_predictions

    mlflow_client = client()
    mv = mlflow_client.get_model_version(target["name"], target["version"])
    recorded = (mv.tags or {}).get(TAG_SHADOW_VERDICT)
    if recorded:
        return json.loads(recorded)
    now = now or datetime.now(UTC)
    registered_at = datetime.fromtimestamp(int(mv.creation_timestamp) / 1000, UTC)
    rows = read_predictions(_lake(), registered_at, now, include_errors=True)
    verdict = shadow_verdict(
        rows,
        target["version"],
        load_policy().release,
        waited_s=(now - datetime.fromisoformat(target["started"])).total_seconds(),
    )
    return None if verdict is None else {"at": now.isoformat(), "champion": target["champion"], **verdict}


def shadow_conclude(target: dict[str, Any], verdict: dict[str, Any], dag_run: Any) -> dict[str, Any]:
    """Record the verdict on the version (tag ``ct.shadow_verdict``, with the run that judged it); a
    failed one blocks it: a ``blocked`` ledger record, its ``challenger`` alias removed, and a mail to
    on-call (each once, whichever run repeats it)."""
    import json

    from continuous_training.lineage import TAG_SHADOW_VERDICT
    from continuous_training.model.deploy import record_blocked
    from continuous_training.modelstore import client

    name, version = target["name"], target["version"]
    # Who judged goes with the verdict: a later run that finds it recorded repeats nothing.
    verdict = {"by": actor(dag_run, "shadow"), **verdict}
    client().set_model_version_tag(name, version, TAG_SHADOW_VERDICT, json.dumps(verdict, sort_keys=True))
    if verdict["passed"]:
        log.info("%s v%s passed its shadow verdict: %s", name, version, _shadow_figures(verdict))
        return {**target, "verdict": verdict}
    reasons = "; ".join(verdict["reasons"])
    log.warning("%s v%s blocked by its shadow verdict: %s", name, version, reasons)
    entry = record_blocked(
        name,
        version,
        actor=verdict["by"],
        reason=f"shadow verdict: {reasons}",
        at=verdict["at"],
        detail={"shadow": _shadow_figures(verdict)},
    )
    dag_id, run_id = getattr(dag_run, "dag_id", None) or "train", getattr(dag_run, "run_id", None) or ""
    notify(
        mail.shadow_blocked_mail(
            name=name,
            version=version,
            verdict=verdict,
            champion=verdict.get("champion"),
            run_url=_run_url(dag_id, run_id),
            page_url=_page_url("models"),
        )
    )
    return {**target, "verdict": verdict, "ledger": entry["key"]}


def _shadow_figures(verdict: dict[str, Any]) -> dict[str, Any]:
    keys = ("rows", "error_rate", "agreement", "score_shift", "waited_s")
    return {key: verdict.get(key) for key in keys}


# ---------------------------------------------------------------------------------------------- watch


def watch_target() -> dict[str, Any] | None:
    """The promotion to watch: the newest confirmed move of the ledger if it is a deploy and its version
    is still the champion (None otherwise: nothing was promoted, or it was moved on since)."""
    from continuous_training.lineage import CHAMPION
    from continuous_training.model import ledger
    from continuous_training.modelstore import alias_version, client

    name = load_policy().model.name
    confirmed = ledger.moves(ledger.read_ledger(_lake(), name))
    if not confirmed or confirmed[-1]["kind"] != ledger.DEPLOY:
        return None
    last = confirmed[-1]
    if alias_version(client(), name, CHAMPION) != last["to_version"]:
        return None
    return {
        "name": name,
        "version": last["to_version"],
        "from_version": last["from_version"],
        "at": last["at"],
        "key": last["key"],
    }


def watch_check(target: dict[str, Any], now: datetime | None = None) -> dict[str, Any] | None:
    """The watch verdict on the target so far (:func:`continuous_training.model.release.watch_verdict`):
    None while it keeps watching; ``{"stopped": ...}`` when the champion was moved meanwhile."""
    from datetime import timedelta

    from continuous_training.lineage import CHAMPION
    from continuous_training.model.release import watch_verdict
    from continuous_training.modelstore import alias_version, client
    from continuous_training.predlog import read_predictions

    policy = load_policy().release
    current = alias_version(client(), target["name"], CHAMPION)
    if current != target["version"]:
        return {"stopped": f"the champion is v{current} now, not v{target['version']}"}
    now = now or datetime.now(UTC)
    at = datetime.fromisoformat(target["at"])
    lake = _lake()
    new_rows = read_predictions(lake, at, now, target["version"], include_errors=True)
    previous_rows = new_rows.iloc[0:0]
    if target["from_version"]:
        before = at - timedelta(minutes=policy.watch_minutes)
        previous_rows = read_predictions(lake, before, at, target["from_version"], include_errors=True)
    return watch_verdict(
        new_rows,
        previous_rows,
        policy,
        version=target["version"],
        previous_version=target["from_version"],
        elapsed_s=(now - at).total_seconds(),
    )


def watch_conclude(target: dict[str, Any], verdict: dict[str, Any], dag_run: Any) -> dict[str, Any]:
    """Record the verdict on the version; on a breach, roll back to the previous champion through the
    rollback DAG's path (checked, moved, recorded as ``auto_rollback``) and mail on-call."""
    import json

    from continuous_training.lineage import TAG_WATCH_VERDICT
    from continuous_training.model import ledger
    from continuous_training.model.deploy import DeployError, move_champion
    from continuous_training.model.rollback import check_target
    from continuous_training.modelstore import client

    name, version = target["name"], target["version"]
    if "stopped" in verdict:
        log.info("Stopped watching %s v%s: %s", name, version, verdict["stopped"])
        return {**target, "verdict": verdict, "rolled_back": False}
    client().set_model_version_tag(
        name, version, TAG_WATCH_VERDICT, json.dumps({"move": target["key"], **verdict}, sort_keys=True)
    )
    if verdict["passed"]:
        log.info(
            "%s v%s %s after %.0f s: %s",
            name,
            version,
            "passed its watch" if verdict["judged"] else "served too few rows to judge",
            verdict["elapsed_s"],
            verdict["figures"],
        )
        return {**target, "verdict": verdict, "rolled_back": False}
    breaches = "; ".join(verdict["breaches"])
    previous = target["from_version"]
    if not previous:
        raise DeployError(
            f"{name} v{version} breaches its watch ({breaches}) but no champion served before it: "
            "nothing to roll back to; trigger the rollback DAG with a version, or train a new one"
        )
    log.warning("%s v%s breaches its watch: %s; rolling back to v%s", name, version, breaches, previous)
    check_target(name, previous)
    moved = move_champion(
        name,
        previous,
        kind=ledger.AUTO_ROLLBACK,
        actor=actor(dag_run, "watch_champion"),
        reason=f"v{version} breached its watch: {breaches}",
        endpoint_url=load_settings().endpoint_url,
        detail={"breaches": verdict["breaches"], "figures": verdict["figures"], "watched": target["key"]},
    )
    _mail_move(name, moved["ledger"], dag_run)
    return {**target, "verdict": verdict, "rolled_back": True, "ledger": moved["ledger"]}


# -------------------------------------------------------------------------------------------- monitor


def collect_served(params: dict[str, Any], dag_run: Any) -> dict[str, Any]:
    """Snapshot the champion's served rows of the window, and its reference sample, into the lake."""
    from continuous_training.lineage import CHAMPION
    from continuous_training.modelstore import alias_version, client
    from continuous_training.monitoring.window import snapshot_window, window_bounds

    policy = load_policy()
    run_after = getattr(dag_run, "run_after", None) or datetime.now(UTC)
    start, end = window_bounds(
        run_after,
        window_start=params.get("window_start"),
        window_end=params.get("window_end"),
        window_hours=float(params.get("window_hours") or policy.drift.window_hours),
    )
    version = alias_version(client(), policy.model.name, CHAMPION)
    if version is None:
        raise AirflowSkipException("No champion is serving yet: nothing to monitor.")
    run_id = str(getattr(dag_run, "run_id", "") or "manual")
    collected = snapshot_window(
        _lake(), run_id, start, end, model_name=policy.model.name, model_version=version
    )
    return {**collected, "min_rows": policy.drift.min_rows}


def enough_rows(collected: dict[str, Any], run_id: str, run_after: datetime | None = None) -> bool:
    """Whether the window holds enough served rows to be judged (``drift.min_rows``); when not, the run's
    decision record says so (``undecided``)."""
    if collected["rows"] >= collected["min_rows"]:
        return True
    from continuous_training.monitoring.retrain import decide_retrain

    window = {k: collected[k] for k in ("model_name", "model_version", "window_start", "window_end")}
    record = decide_retrain(
        _lake(), {**window, "rows_current": collected["rows"]}, load_policy().drift, run_id, now=run_after
    )
    log.info("Not judged: %s", record["why"])
    return False


def compute_drift(collected: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Drift report of the window against the champion's reference sample (both snapshotted by collect)."""
    from continuous_training.monitoring.drift import compute_drift as drift_report

    scores = collected.get("reference_scores_path")
    result = drift_report(
        Path(collected["reference_path"]),
        Path(collected["path"]),
        reference_scores=Path(scores) if scores else None,
        report_dir=_lake().drift_report_dir(run_id or "manual"),
        title=f"{collected['model_name']} v{collected['model_version']}: "
        f"{collected['window_start']} .. {collected['window_end']}",
    )
    result.update({k: collected[k] for k in ("model_name", "model_version", "window_start", "window_end")})
    return result


def new_training_data() -> dict[str, Any] | None:
    """Whether a retraining now would see data the champion was not trained on: the training set a
    ``train`` run would build (``training.window_days``) against the champion's own.

    Returns:
        ``{"new": bool, "why": str}``, or None when there is no champion or no validated day.
    """
    from continuous_training.model.registry import get_champion
    from continuous_training.model.training_set import select_training_days, training_set_sha256

    policy = load_policy()
    champion = get_champion()
    days = select_training_days(_lake(), policy.training.window_days)
    if champion is None or not days:
        return None
    if training_set_sha256(_lake(), days) != champion.get("training_set_sha256"):
        return {"new": True, "why": f"the training set ({days[0]}..{days[-1]}) differs from the champion's"}
    return {
        "new": False,
        "why": f"no validated day arrived since champion v{champion['version']} was trained "
        f"(its training set {days[0]}..{days[-1]} is the newest): a retraining would learn nothing; the "
        "next validated day triggers a drift check again",
    }


def decisive_drift(drift: dict[str, Any], policy: Any) -> bool:
    """Whether the window drifted in a way that counts towards retraining (columns, or the scores when
    ``drift.prediction_drift_counts``)."""
    from continuous_training.monitoring.retrain import counted_drift

    return bool(counted_drift(drift, policy))


def decide(drift: dict[str, Any], run_id: str, run_after: datetime | None = None) -> dict[str, Any]:
    """Retrain or not (policy, N-of-M windows, cooldown, new data), written as the run's decision record."""
    from continuous_training.monitoring.retrain import decide_retrain

    new_data = new_training_data() if decisive_drift(drift, load_policy().drift) else None
    # The run's own time, not the wall clock: re-running an old monitor run judges the cooldown as it was.
    return decide_retrain(_lake(), drift, load_policy().drift, run_id, now=run_after, new_data=new_data)


def alert_drift(drift: dict[str, Any], decision: dict[str, Any], run_id: str) -> bool:
    """Mail on-call the drifted columns, their scores, the report and what happens next (once per run);
    skipped when no column drifted."""
    if not drift["drifted_columns"] and not (drift.get("prediction_drift") or {}).get("drifted"):
        raise AirflowSkipException("No column drifted, nor the scores: nothing to mail.")
    return notify(
        mail.drift_mail(
            drift=drift,
            decision=decision,
            monitor_run_id=run_id,
            run_url=_run_url("monitor", run_id),
            page_url=_page_url("drift", Path(drift["report_html"]).parent.name),
            train_run_url=_run_url("train", decision["train_run_id"])
            if decision.get("train_run_id")
            else None,
        )
    )


def retrain_due(decision: dict[str, Any]) -> dict[str, Any] | None:
    """Conf for the ``train`` DAG when the decision triggers it, else None (the trigger is skipped)."""
    return decision["conf"] if decision["retrain"] else None


# -------------------------------------------------------------------------------------------- silence


def check_landing(run_id: str, run_after: datetime | None = None) -> dict[str, Any]:
    """Mail each day past its landing deadline with nothing landed (once per day)."""
    from continuous_training.monitoring.silence import missing_days

    alerts = load_policy().alerts
    now = run_after or datetime.now(UTC)
    missing = missing_days(
        _lake(), now, after_hours=alerts.data_missing_after_hours, report_days=alerts.data_missing_days
    )
    mailed = [
        m["day"]
        for m in missing
        if notify(
            mail.data_missing_mail(missing=m, run_url=_run_url("silence", run_id), page_url=_page_url())
        )
    ]
    log.info("Missing days: %s (mailed now: %s)", [m["day"] for m in missing] or "none", mailed or "none")
    return {"missing": [m["day"] for m in missing], "mailed": mailed}


def check_traffic(run_id: str, run_after: datetime | None = None) -> dict[str, Any]:
    """Mail a silence of the endpoint (no served row for ``alerts.no_traffic_minutes``) once; skipped
    when the check is off or no champion is deployed."""
    from continuous_training.lineage import CHAMPION
    from continuous_training.modelstore import alias_version, client
    from continuous_training.monitoring.silence import traffic_silence

    policy = load_policy()
    minutes = policy.alerts.no_traffic_minutes
    if not minutes:
        raise AirflowSkipException("alerts.no_traffic_minutes is 0: the traffic check is off")
    version = alias_version(client(), policy.model.name, CHAMPION)
    if version is None:
        raise AirflowSkipException("No champion is deployed: no traffic is expected yet")
    silence = traffic_silence(_lake(), run_after or datetime.now(UTC), minutes=minutes)
    if silence is None:
        log.info("Traffic flows: rows served within the last %s minutes", minutes)
        return {"silent": False}
    mailed = notify(
        mail.no_traffic_mail(
            silence=silence,
            champion=f"{policy.model.name} v{version}",
            endpoint=load_settings().endpoint_url,
            run_url=_run_url("silence", run_id),
            page_url=_page_url(),
        )
    )
    log.warning("No traffic since %s (mailed now: %s)", silence["since"], mailed)
    return {"silent": True, **silence, "mailed": mailed}
