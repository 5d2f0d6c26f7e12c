"""The mails on-call gets: subjects and HTML bodies, pure functions of the event (no I/O, no Airflow).

Each domain event gives a :class:`Mail` with its event key, the key that makes it go out once
(:func:`continuous_training.alerts.notifier.send_alert`). The task-failure mail is a Jinja template
Airflow renders with the task's context (:data:`FAILURE_SUBJECT`, :data:`FAILURE_HTML`). Everything
interpolated into HTML is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

FAILURE_SUBJECT = "[ct] FAILED {{ ti.dag_id }}.{{ ti.task_id }} (run {{ run_id }}, try {{ ti.try_number }})"

FAILURE_HTML = """\
<h2>Task failed: {{ ti.dag_id }}.{{ ti.task_id }}</h2>
<table>
<tr><th align="left">DAG</th><td>{{ ti.dag_id }}</td></tr>
<tr><th align="left">Task</th><td>{{ ti.task_id }}{% if ti.map_index is not none and ti.map_index >= 0 %} [{{ ti.map_index }}]{% endif %}</td></tr>
<tr><th align="left">Run</th><td>{{ run_id }}</td></tr>
<tr><th align="left">Try</th><td>{{ ti.try_number }}</td></tr>
<tr><th align="left">Log</th><td><a href="{{ ti.log_url }}">{{ ti.log_url }}</a></td></tr>
</table>
<h3>Error</h3>
<pre>{{ exception | string | e }}</pre>
<p>Clear the task in the Airflow UI to retry it once the cause is fixed: every task of this project is
idempotent, so a re-run gives the same result and no duplicates.</p>
"""


@dataclass(frozen=True)
class Mail:
    """One domain alert: the event it is about (mailed once), its subject, HTML body and facts.

    Attributes:
        event_key: identifies the event (same event -> same key).
        subject: the subject, without the ``[ct]`` prefix the notifier adds.
        html: the body.
        details: JSON-serialisable facts kept in the alert ledger beside the mail.
    """

    event_key: str
    subject: str
    html: str
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Link:
    """A value of :func:`render_table` shown as a link (``text`` defaults to the URL)."""

    url: str
    text: str = ""


def _cell(value: Any) -> str:
    if isinstance(value, Link):
        return f'<a href="{html.escape(value.url, quote=True)}">{html.escape(value.text or value.url)}</a>'
    return html.escape(str(value))


def render_table(rows: Sequence[tuple[str, Any]]) -> str:
    """A two-column HTML table of (label, value), values escaped; a :class:`Link` value is a link."""
    cells = "".join(
        f'<tr><th align="left">{html.escape(str(k))}</th><td>{_cell(v)}</td></tr>' for k, v in rows
    )
    return f"<table>{cells}</table>"


def bad_data_mail(
    *,
    day: str,
    outcome: Mapping[str, Any],
    failures: Sequence[str],
    quarantine_path: str,
    landing_path: str,
    run_url: str | None,
    page_url: str,
) -> Mail:
    """A batch failed validation and was quarantined.

    Args:
        day: the partition day.
        outcome: the validation outcome (``failed``, ``evaluated``, ``rows``, ``bad_rows``, ``sha256``).
        failures: one readable line per failed check.
        quarantine_path: where the batch and its evidence are kept.
        landing_path: the landing folder to drop a corrected export in.
        run_url: the ingest run's page, if known.
        page_url: the batch on the project's Quarantine page (failed expectations, failing rows).
    """
    body = (
        f"<h2>Bad data: the batch of {html.escape(day)} was quarantined</h2>"
        f"<p>{len(outcome['failed'])} of {outcome.get('evaluated', '?')} expectations of the dataset contract failed. "
        "The batch was <b>not</b> published, so no model trains on it; nothing was deleted.</p>"
        "<h3>Failed expectations</h3><ul>"
        + "".join(f"<li>{html.escape(line)}</li>" for line in failures)
        + "</ul>"
        + render_table(
            [
                ("Day", day),
                ("Rows", outcome.get("rows")),
                ("Rows failing a row-level check", outcome.get("bad_rows", "-")),
                ("Batch sha256", outcome["sha256"]),
                ("The batch: failed expectations, failing rows", Link(page_url)),
                ("Landing folder (on the server)", landing_path),
                ("Ingest run", Link(run_url) if run_url else "-"),
            ]
        )
        + "<p>To recover: replace the bad file(s) in the landing folder with a corrected export (the bad "
        "ones are kept in quarantine), then trigger <code>ingest</code> with the <i>day</i> param.</p>"
    )
    return Mail(
        event_key=f"bad-data/{day}/{outcome['sha256'][:12]}",
        subject=f"Bad data: batch of {day} quarantined ({len(outcome['failed'])} expectation(s) failed)",
        html=body,
        details={"day": day, "failed": list(failures), "quarantine": quarantine_path, "page": page_url},
    )


def deploy_rolled_back_mail(
    *, name: str, version: str, error: str, dag_run_id: str, run_url: str, page_url: str
) -> Mail:
    """A deploy was not confirmed by the endpoint and the champion alias went back.

    Args:
        name: registered model name.
        version: the version that was not served.
        error: what the deploy step said (the rollback target included).
        dag_run_id: the train run that deployed.
        run_url: its page.
        page_url: the version's evaluation on the project's pages (gate verdict, report).
    """
    return Mail(
        event_key=f"deploy-rolled-back/{name}/{version}/{dag_run_id}",
        subject=f"Deploy rolled back: {name} v{version} was not served",
        html=f"<h2>Deploy of {html.escape(name)} v{html.escape(version)} rolled back</h2>"
        f"<p>{html.escape(error)}</p>"
        + render_table([("Train run", Link(run_url)), ("The version's evaluation", Link(page_url))]),
    )


def gate_blocked_mail(
    *, run_id: str, verdict: Mapping[str, Any], mlflow_url: str, run_url: str, page_url: str
) -> Mail:
    """The gate refused a challenger; the champion stays.

    Args:
        run_id: the challenger's MLflow run.
        verdict: the gate verdict (reasons, metric, values, floor, champion version).
        mlflow_url: the run's MLflow page (its evaluation report is under Artifacts).
        run_url: the train run's page.
        page_url: the verdict and the evaluation report on the project's pages.
    """
    body = (
        "<h2>Gate blocked the challenger</h2><p>The serving champion stays in place.</p><ul>"
        + "".join(f"<li>{html.escape(r)}</li>" for r in verdict["reasons"])
        + "</ul>"
        + render_table(
            [
                ("Metric", verdict.get("metric")),
                ("Challenger", verdict.get("challenger_value")),
                ("Champion", verdict.get("champion_value")),
                ("Floor", verdict.get("floor")),
                ("Champion version", verdict.get("champion_version")),
                ("Verdict and evaluation report", Link(page_url)),
                ("MLflow run", Link(mlflow_url)),
                ("Train run", Link(run_url)),
            ]
        )
        + "<p>To promote it anyway (never below the floor), trigger <code>train</code> with <i>force</i>.</p>"
    )
    return Mail(
        event_key=f"gate-blocked/{run_id}",
        subject=f"Gate blocked challenger (run {run_id[:8]})",
        html=body,
        details=dict(verdict),
    )


#: What each retrain decision means for the reader of a drift mail: the next step, in a few words.
NEXT_STEP = {
    "triggered": "Retraining: the train DAG is triggered",
    "waiting": "Not retraining yet: too few recent windows drifted",
    "cooldown": "Not retraining now: in cooldown",
    "no_new_data": "Not retraining: no new data to learn from",
    "below_min_columns": "Not retraining: too few columns drifted",
    "no_drift": "Not retraining: no drift",
    "undecided": "Not judged: too few served rows",
}


def drift_mail(
    *,
    drift: Mapping[str, Any],
    decision: Mapping[str, Any],
    monitor_run_id: str,
    run_url: str,
    page_url: str,
    train_run_url: str | None = None,
) -> Mail:
    """Drift was found in what the endpoint served; what happens next.

    Args:
        drift: the drift result (drifted columns, scores, methods, threshold, window, report paths).
        decision: the run's retrain decision record (``decision``, ``why``, ``windows``, ``train_run_id``).
        monitor_run_id: the monitor run that found it.
        run_url: its page.
        page_url: its verdict on the project's Drift page (every column's score, the Evidently report).
        train_run_url: the page of the ``train`` run it triggered, if it triggered one.
    """
    scores = drift["scores"]
    unseen = drift.get("unseen_categories") or {}
    ranked = list(drift["drifted_columns"])  # most drifted first (compute_drift's order)
    rows = [
        (
            c,
            ("-" if scores[c] is None else f"{scores[c]:.3f}")
            + "".join(
                f"; new category {u['value']!r} on {u['share']:.1%} of rows" for u in unseen.get(c, [])
            ),
        )
        for c in ranked
    ]
    nulls = drift.get("null_columns") or {}
    findings = [
        f"{c}: no value at all in the {'served window' if side == 'current' else 'reference sample'} (not judged)"
        for side in ("current", "reference")
        for c in nulls.get(side) or []
    ]
    predicted = drift.get("prediction_drift") or {}
    if predicted.get("score") is not None:
        rows.append(
            (
                f"{predicted['column']} (the prediction)",
                f"{predicted['score']:.3f}"
                + (" drifted" if predicted.get("drifted") else "")
                + f" against {predicted.get('reference_rows')} holdout scores",
            )
        )
    body = (
        f"<h2>Drift found in {len(drift['drifted_columns'])} column(s)"
        + (" and in the predictions" if predicted.get("drifted") else "")
        + "</h2>"
        f"<p>What the endpoint served with {html.escape(drift['model_name'])} v{html.escape(drift['model_version'])} "
        f"between {html.escape(drift['window_start'])} and {html.escape(drift['window_end'])} "
        f"({drift['rows_current']} rows) differs from the model's reference sample "
        f"({drift['num_method']} / {drift['cat_method']}, threshold {drift['threshold']}).</p>"
        + render_table([("Column", "Score"), *rows])
        + (
            "<h3>Data quality</h3><ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in findings) + "</ul>"
            if findings
            else ""
        )
        + render_table(
            [
                ("Every column's score", Link(page_url)),
                ("Evidently report", Link(f"{page_url}/report")),
                ("Monitor run", Link(run_url)),
            ]
        )
        + _next_step_html(decision, train_run_url)
    )
    return Mail(
        event_key=f"drift/{monitor_run_id}",
        subject=f"Drift in {_leading(ranked or ['the predictions'])} ({drift['model_name']} v{drift['model_version']}): "
        + (
            "retraining"
            if decision["decision"] == "triggered"
            else f"not retraining ({decision['decision']})"
        ),
        html=body,
        details={
            **{k: drift[k] for k in ("drifted_columns", "scores", "report_html", "report_json")},
            "decision": decision["decision"],
            "train_run_id": decision.get("train_run_id"),
        },
    )


def _next_step_html(decision: Mapping[str, Any], train_run_url: str | None) -> str:
    """The retrain decision, as the drift mail states it: what happens next and why."""
    kind = decision["decision"]
    windows = decision.get("windows") or {}
    rows: list[tuple[str, Any]] = [("Decision", kind), ("Why", decision.get("why", ""))]
    if windows.get("considered", 0) > 1 or windows.get("required", 1) > 1:
        rows.append(
            (
                "Drifted windows",
                f"{windows.get('drifted')} of the last {windows.get('considered')} judged "
                f"(retrain at {windows.get('required')})",
            )
        )
    if decision.get("train_run_id"):
        run = decision["train_run_id"]
        rows.append(("Train run", Link(train_run_url, run) if train_run_url else run))
    after = (
        "Its outcome (new champion, gate blocked, or why it did not train) is mailed when the run ends."
        if kind == "triggered"
        else "The decision is on the monitor run's record (the Drift page); nothing is retrained."
    )
    return (
        f"<h3>{html.escape(NEXT_STEP.get(kind, kind))}</h3>"
        + render_table(rows)
        + f"<p>{html.escape(after)}</p>"
    )


#: The subject's verdict of each retrain outcome.
OUTCOME_SUBJECT = {
    "new_champion": "new champion",
    "gate_blocked": "gate blocked the challenger",
    "blocked": "stopped before deploy",
    "not_trained": "not trained",
    "failed": "failed",
}


def retrain_outcome_mail(
    *,
    outcome: Mapping[str, Any],
    reason: str,
    monitor_run_id: str,
    run_url: str,
    monitor_url: str,
    page_url: str,
) -> Mail:
    """What the retraining a monitor run triggered came to: the close of its drift mail.

    Args:
        outcome: from :func:`continuous_training.adapter.steps.train_outcome`, with ``train_run_id``,
            ``gate`` (the verdict's figures and reasons) and ``why`` where known.
        reason: the train run's reason (``drift in ...``).
        monitor_run_id: the monitor run that triggered it.
        run_url: the train run's page.
        monitor_url: the monitor run's page.
        page_url: the Models page (versions, verdicts, ledger).
    """
    kind = outcome["outcome"]
    gate = outcome.get("gate") or {}
    rows: list[tuple[str, Any]] = [("Outcome", outcome["summary"]), ("Reason", reason)]
    if gate.get("metric"):
        rows.append(
            (
                f"Gate ({gate['metric']})",
                f"challenger {gate.get('challenger_value')}, champion {gate.get('champion_value')}",
            )
        )
    if outcome.get("why") and kind != "not_trained":
        rows.append(("Why", outcome["why"]))
    if outcome.get("failed_tasks"):
        rows.append(("Failed task(s)", ", ".join(outcome["failed_tasks"])))
    rows += [
        ("Train run", Link(run_url, outcome.get("train_run_id") or run_url)),
        ("Monitor run that asked for it", Link(monitor_url, monitor_run_id)),
        ("Models and ledger", Link(page_url)),
    ]
    reasons = gate.get("reasons") or []
    body = (
        f"<h2>Retraining {html.escape(OUTCOME_SUBJECT.get(kind, kind))}</h2>"
        f"<p>{html.escape(outcome['summary'])}.</p>"
        + ("<ul>" + "".join(f"<li>{html.escape(str(r))}</li>" for r in reasons) + "</ul>" if reasons else "")
        + render_table(rows)
        + (
            "<p>The failure mail of the task has the error; clear the task once the cause is fixed.</p>"
            if kind == "failed"
            else ""
        )
    )
    version = f" v{outcome['version']}" if outcome.get("version") else ""
    return Mail(
        event_key=f"retrain-outcome/{outcome.get('train_run_id')}",
        subject=f"Retraining after monitor run {monitor_run_id}: {OUTCOME_SUBJECT.get(kind, kind)}{version}",
        html=body,
        details=dict(outcome),
    )


def data_missing_mail(*, missing: Mapping[str, Any], run_url: str, page_url: str) -> Mail:
    """A day's batch did not land by its deadline.

    Args:
        missing: from :func:`continuous_training.monitoring.silence.missing_days` (``day``,
            ``deadline``, ``last_landed``, ``landing``).
        run_url: the silence run that noticed.
        page_url: the project's Overview page.
    """
    day = str(missing["day"])
    body = (
        f"<h2>Data missing: nothing landed for {html.escape(day)}</h2>"
        f"<p>The batch of {html.escape(day)} was due in the landing folder by "
        f"{html.escape(str(missing['deadline']))}; nothing is there and nothing was ingested for the day. "
        "No model trains on a day that never arrived, and the monitor's labels for it will be missing.</p>"
        + render_table(
            [
                ("Day", day),
                ("Due by", missing["deadline"]),
                ("Newest day that landed", missing["last_landed"]),
                ("Landing folder (on the server)", missing["landing"]),
                ("Silence run", Link(run_url)),
                ("Overview", Link(page_url)),
            ]
        )
        + "<p>To recover: drop the day's export in the landing folder, then trigger <code>ingest</code> with "
        "the <i>day</i> param (the scheduled run for the day has already passed).</p>"
    )
    return Mail(
        event_key=f"data-missing/{day}",
        subject=f"Data missing: no batch landed for {day}",
        html=body,
        details=dict(missing),
    )


def no_traffic_mail(
    *, silence: Mapping[str, Any], champion: str, endpoint: str, run_url: str, page_url: str
) -> Mail:
    """The endpoint served nothing for a while though a champion is deployed.

    Args:
        silence: from :func:`continuous_training.monitoring.silence.traffic_silence`.
        champion: the deployed version (``name vN``).
        endpoint: the endpoint's URL.
        run_url: the silence run that noticed.
        page_url: the project's Overview page (the endpoint's health and last hour).
    """
    since = str(silence["since"])
    last = silence.get("last_served_at") or "none in the last 7 days"
    body = (
        f"<h2>No traffic: the endpoint served nothing for {silence['minutes']} minutes or more</h2>"
        f"<p>{html.escape(champion)} is deployed, but no prediction was logged since {html.escape(since)}. "
        "Either the clients stopped calling, or their requests no longer reach the endpoint; drift and "
        "performance cannot be judged without traffic.</p>"
        + render_table(
            [
                ("Last served row", last),
                ("Silent for (minutes)", silence.get("silent_minutes") or "-"),
                ("Endpoint", endpoint),
                ("Overview: the endpoint's health", Link(page_url)),
                ("Silence run", Link(run_url)),
            ]
        )
        + "<p>This silence is mailed once; traffic that resumes and stops again is a new one.</p>"
    )
    return Mail(
        event_key=f"no-traffic/{since}",
        subject=f"No traffic: nothing served since {since} ({champion})",
        html=body,
        details=dict(silence),
    )


#: Columns a drift mail's subject names; the rest are counted ("and N more").
SUBJECT_COLUMNS = 3


def _leading(columns: Sequence[str]) -> str:
    """The first :data:`SUBJECT_COLUMNS` names, then how many more: a subject stays one line."""
    shown = ", ".join(columns[:SUBJECT_COLUMNS])
    more = len(columns) - SUBJECT_COLUMNS
    return f"{shown} and {more} more" if more > 0 else shown


def model_refused_event_key(name: str, version: str) -> str:
    """The event of a refused model version: one mail per version, whoever refused it (deploy, endpoint)."""
    return f"model-refused/{name}/{version}"


def model_refused_mail(*, name: str, version: str, reason: str, refused_by: str, serving: str | None) -> Mail:
    """A model version was refused: its provenance, files or format are not what the pipeline made.

    Args:
        name: registered model name.
        version: the refused version.
        reason: what was refused and why (the refusal's message: the tag or file and what was expected).
        refused_by: who refused it (the endpoint worker, the deploy task of a run).
        serving: the version that keeps serving, if any.
    """
    kept = f"v{serving}" if serving else "nothing (the endpoint answers 503 until a trusted champion is set)"
    body = (
        f"<h2>Model refused: {html.escape(name)} v{html.escape(version)} will not serve</h2>"
        "<p>Only versions registered by the <code>train</code> DAG may serve: signed provenance (run, passing "
        "gate verdict, the digest of the model's files), files matching that digest, and a skops model. This "
        "version failed that check, so none of its model file was loaded.</p>"
        f"<pre>{html.escape(reason)}</pre>"
        + render_table(
            [
                ("Model", name),
                ("Refused version", version),
                ("Refused by", refused_by),
                ("Serving instead", kept),
            ]
        )
        + "<p>If nobody meant to move the <code>champion</code> alias to this version, treat it as an "
        "incident: check in MLflow who registered the version and moved the alias, and whether the artifact "
        "store was written to. Then point <code>champion</code> back at a signed version, or trigger "
        "<code>train</code> to make a new one.</p>"
    )
    return Mail(
        event_key=model_refused_event_key(name, version),
        subject=f"Model refused: {name} v{version} will not serve",
        html=body,
        details={
            "name": name,
            "version": version,
            "reason": reason,
            "refused_by": refused_by,
            "serving": serving,
        },
    )


def approval_waiting_mail(
    *, name: str, version: str, page_url: str, actions_url: str, timeout_hours: float
) -> Mail:
    """A version passed the gate and waits for a person's approval before it deploys."""
    body = (
        f"<h2>{html.escape(name)} v{html.escape(version)} waits for approval</h2>"
        "<p>It passed the gate; the policy asks a person to approve each version before it deploys. "
        f"Unanswered after {timeout_hours:g} hour(s), it is rejected and the champion stays.</p>"
        + render_table(
            [
                ("Approve or reject", Link(actions_url)),
                ("Evaluation and comparison with the champion", Link(page_url)),
            ]
        )
    )
    return Mail(
        event_key=f"approval-waiting/{name}/{version}",
        subject=f"Approval needed: deploy {name} v{version}?",
        html=body,
        details={"name": name, "version": version},
    )


def approval_rejected_mail(*, name: str, version: str, decision: Mapping[str, Any], page_url: str) -> Mail:
    """A version was rejected (by a person, or because nobody answered in time)."""
    who = "nobody answered in time" if decision.get("timed_out") else f"rejected by {decision.get('by')}"
    body = (
        f"<h2>{html.escape(name)} v{html.escape(version)} will not deploy</h2>"
        f"<p>Its approval request was {html.escape(who)} ({html.escape(str(decision.get('at')))}). "
        "The champion stays; the decision is recorded on the model version (tag <code>ct.approval</code>).</p>"
        + render_table([("Evaluation", Link(page_url)), ("Train run", decision.get("dag_run_id"))])
    )
    return Mail(
        event_key=f"approval-rejected/{name}/{version}",
        subject=f"Rejected: {name} v{version} ({who})",
        html=body,
        details=dict(decision),
    )


def shadow_blocked_mail(
    *, name: str, version: str, verdict: Mapping[str, Any], champion: str | None, run_url: str, page_url: str
) -> Mail:
    """A challenger's shadow verdict failed: live traffic scored by it disagrees with the champion, or
    it failed, or too few rows came in; it will not deploy.

    Args:
        name: registered model name.
        version: the challenger.
        verdict: its shadow verdict (rows, error rate, agreement, score shift, limits, reasons).
        champion: the version that stays the champion.
        run_url: the train DAG run.
        page_url: the Models page (versions, verdicts and the deployment ledger).
    """
    limits = verdict.get("limits") or {}
    body = (
        f"<h2>{html.escape(name)} v{html.escape(version)} blocked by its shadow verdict</h2>"
        f"<p>It was scored beside champion v{html.escape(str(champion))} on live requests; it will not "
        "deploy and the champion stays.</p>"
        "<ul>"
        + "".join(f"<li>{html.escape(r)}</li>" for r in verdict.get("reasons") or [])
        + "</ul>"
        + render_table(
            [
                ("Shadow-scored rows", f"{verdict.get('rows')} (at least {limits.get('min_rows')})"),
                (
                    "Challenger error rate",
                    f"{verdict.get('error_rate')} (at most {limits.get('max_error_rate')})",
                ),
                (
                    "Decided as the champion",
                    f"{verdict.get('agreement')} (at least {limits.get('min_agreement')})",
                ),
                (
                    "Score shift (Wasserstein)",
                    f"{verdict.get('score_shift')} (at most {limits.get('max_score_shift')})",
                ),
                ("Waited", f"{verdict.get('waited_s')} s"),
                ("Models and ledger", Link(page_url)),
                ("Train run", Link(run_url)),
            ]
        )
        + "<p>The verdict is recorded on the model version (tag <code>ct.shadow_verdict</code>) and in the "
        "deployment ledger; the rollback DAG refuses the version unless forced.</p>"
    )
    return Mail(
        event_key=f"shadow-blocked/{name}/{version}",
        subject=f"Blocked by shadow verdict: {name} v{version}",
        html=body,
        details={"name": name, "version": version, "verdict": dict(verdict)},
    )


def rollback_mail(
    *,
    name: str,
    entry: Mapping[str, Any],
    run_url: str | None,
    page_url: str,
) -> Mail:
    """The champion was returned to an earlier version, by a person or by the watcher.

    Args:
        name: registered model name.
        entry: the move's ledger record (kind, from, to, reason, actor, outcome, detail).
        run_url: the DAG run that moved it.
        page_url: the Models page (versions and the deployment ledger).
    """
    automatic = entry["kind"] == "auto_rollback"
    frm, to = entry.get("from_version"), entry.get("to_version")
    actor = entry.get("actor") or {}
    who = "the watcher" if automatic else (actor.get("user") or actor.get("dag_run_id") or "someone")
    breaches = (entry.get("detail") or {}).get("breaches") or []
    figures = (entry.get("detail") or {}).get("figures") or {}
    body = (
        f"<h2>{html.escape(name)}: champion {'rolled back automatically' if automatic else 'rolled back'}"
        f" from v{html.escape(str(frm))} to v{html.escape(str(to))}</h2>"
        f"<p>{html.escape(entry.get('reason') or '')}</p>"
        + ("<ul>" + "".join(f"<li>{html.escape(b)}</li>" for b in breaches) + "</ul>" if breaches else "")
        + render_table(
            [
                ("By", who),
                ("Outcome", f"{entry.get('outcome')}: every endpoint worker serves v{to}"),
                *((f"{k}", v) for k, v in sorted(figures.items())),
                ("Ledger record", entry.get("key")),
                ("Models and ledger", Link(page_url)),
                *((("DAG run", Link(run_url)),) if run_url else ()),
            ]
        )
    )
    if automatic:
        body += (
            f"<p>v{html.escape(str(frm))} stays registered; the rollback DAG can return to it with Force "
            "(it failed a live check).</p>"
        )
    return Mail(
        event_key=f"rollback/{name}/{entry['key']}",
        subject=f"{'Auto-rollback' if automatic else 'Rollback'}: {name} v{frm} -> v{to} ({who})",
        html=body,
        details={"ledger": entry.get("key"), "kind": entry["kind"], "from": frm, "to": to},
    )
