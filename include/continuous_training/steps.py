"""One function per DAG task: plain JSON in, small JSON out.

The DAG files only wire these together; each function here calls the library and decides what the task
returns through XCom (a path, a hash, a version, a verdict: never a DataFrame or a model). Keeping them
outside the DAG files lets them be tested without a scheduler and keeps DAG parsing light (this module is
imported inside task functions only).
"""

from __future__ import annotations

import html
import json
import logging
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException

from continuous_training.alert import render_table, send_alert
from continuous_training.config import load_policy
from continuous_training.settings import load_settings
from continuous_training.storage import Lake, read_json, safe_name, write_json_atomic

log = logging.getLogger(__name__)


def _lake() -> Lake:
    return Lake.from_settings()


def _airflow_run_link(dag_id: str, run_id: str) -> str:
    return f"{load_settings().airflow_url}/dags/{dag_id}/runs/{run_id}"


# --------------------------------------------------------------------------------------------- ingest


def resolve_day(param_day: str | None, data_interval_start: Any) -> str:
    """The day a run ingests: the ``day`` param if given, else the start of its data interval."""
    if param_day:
        try:
            return date.fromisoformat(str(param_day)).isoformat()
        except ValueError as exc:
            raise ValueError(f"param `day`: expected YYYY-MM-DD, got {param_day!r}") from exc
    if data_interval_start is None:
        raise ValueError("param `day` is empty and this run has no data interval: give a day (YYYY-MM-DD)")
    return data_interval_start.date().isoformat()


def stage_partition(day: str) -> dict[str, Any]:
    """Canonicalise the day's landing files into ``raw/dt=<day>``; skip the run if nothing landed."""
    from continuous_training.ingest import NoLandingFilesError, stage_raw_partition

    try:
        manifest = stage_raw_partition(_lake(), day)
    except NoLandingFilesError as exc:
        raise AirflowSkipException(f"Nothing to ingest for {day}: {exc}") from exc
    log.info("Staged %s: %s rows, sha256 %s", day, manifest["rows"], manifest["sha256"])
    return manifest


def _validation_record(lake: Lake, day: str, raw_sha256: str) -> Any:
    return lake.root / "validation" / f"dt={day}" / f"{raw_sha256[:12]}.json"


def validate_partition(staged: dict[str, Any]) -> dict[str, Any]:
    """Validate ``raw/dt=<day>``; the full GX result is stored in the lake, a summary is returned."""
    from continuous_training.ingest import stage_raw_partition
    from continuous_training.storage import MANIFEST_FILE
    from continuous_training.validate import validate_partition as run_suite

    lake, day = _lake(), staged["day"]
    if not (lake.raw(day) / MANIFEST_FILE).exists():
        # Quarantine retires the raw partition; a cleared validate task stages it again (same bytes).
        stage_raw_partition(lake, day)
    outcome = run_suite(lake, day)
    record = _validation_record(lake, day, outcome["sha256"])
    write_json_atomic(record, outcome)
    keys = ("success", "day", "sha256", "rows", "bad_rows", "evaluated", "parse_errors")
    summary = {k: outcome.get(k) for k in keys}
    summary["failed"] = [{k: v for k, v in f.items() if k != "kwargs"} for f in outcome["failed"]]
    summary["result_path"] = str(record)
    log.info(
        "Validation of %s: success=%s, %d failed expectation(s)",
        day,
        outcome["success"],
        len(outcome["failed"]),
    )
    return summary


def publish_partition(validation: dict[str, Any]) -> dict[str, Any]:
    """Publish ``validated/dt=<day>`` (idempotent)."""
    from continuous_training.validate import publish_validated

    outcome = read_json(_validation_record(_lake(), validation["day"], validation["sha256"]))
    return publish_validated(_lake(), validation["day"], outcome)


def quarantine_partition(validation: dict[str, Any], *, run_id: str = "") -> dict[str, Any]:
    """Move a failing batch to quarantine and mail on-call what failed (once per batch)."""
    from continuous_training.validate import quarantine_partition as keep_in_quarantine
    from continuous_training.validate import summarize_failures

    lake, day = _lake(), validation["day"]
    outcome = read_json(_validation_record(lake, day, validation["sha256"]))
    kept = keep_in_quarantine(lake, day, outcome)
    lines = summarize_failures(outcome)
    body = (
        f"<h2>Bad data: the batch of {html.escape(day)} was quarantined</h2>"
        f"<p>{len(outcome['failed'])} of {outcome.get('evaluated', '?')} expectations of the dataset contract failed. "
        "The batch was <b>not</b> published, so no model trains on it; nothing was deleted.</p>"
        "<h3>Failed expectations</h3><ul>"
        + "".join(f"<li>{html.escape(line)}</li>" for line in lines)
        + "</ul>"
        + render_table(
            [
                ("Day", day),
                ("Rows", outcome.get("rows")),
                ("Rows failing a row-level check", outcome.get("bad_rows", "-")),
                ("Batch sha256", outcome["sha256"]),
                ("Quarantined in (the batch, its GX result, the failing rows)", kept["path"]),
                ("Landing files", str(lake.landing(day))),
                ("Ingest run", _airflow_run_link("ingest", run_id) if run_id else "-"),
            ]
        )
        + "<p>To recover: replace the bad file(s) in the landing folder with a corrected export (the bad "
        "ones are kept in quarantine), then trigger <code>ingest</code> with the <i>day</i> param.</p>"
    )
    send_alert(
        f"bad-data/{day}/{outcome['sha256'][:12]}",
        f"Bad data: batch of {day} quarantined ({len(outcome['failed'])} expectation(s) failed)",
        body,
        details={"day": day, "failed": lines, "quarantine": kept["path"]},
    )
    return {"day": day, "path": kept["path"], "failed": lines}


# ---------------------------------------------------------------------------------------------- train


def run_reason(params: dict[str, Any] | None, dag_run: Any) -> str:
    """Why this training run happens: new data (Asset), drift (monitor) or what the user typed."""
    from continuous_training.train import NEW_DATA_REASON

    run_type = str(getattr(dag_run, "run_type", "") or "")
    if run_type.lower().endswith("asset_triggered"):
        return NEW_DATA_REASON
    return str((params or {}).get("reason") or "manual")


def lineage(dag_run: Any) -> dict[str, str]:
    """The DAG run and code version a model comes from."""
    from continuous_training.registry import git_commit

    return {
        "dag_id": str(getattr(dag_run, "dag_id", "") or "train"),
        "dag_run_id": str(getattr(dag_run, "run_id", "") or "unknown"),
        "git_commit": git_commit(),
    }


def build_training_set(window_days: int | None, run_id: str) -> dict[str, Any]:
    """Snapshot the newest validated partitions; skip when there are none yet.

    The snapshot is pinned to the DAG run: clearing the run after new partitions arrived trains on the
    same set again (and so reuses its MLflow run and model version) instead of a new one.
    """
    from continuous_training import train

    lake = _lake()
    pinned = lake.root / "training_sets" / "by_run" / f"{safe_name(run_id)}.json"
    if pinned.exists():
        snapshot = read_json(pinned)
        log.info("Run %s already chose training set %s; reusing it", run_id, snapshot["sha256"][:12])
        return snapshot
    policy = load_policy()
    days = train.select_training_days(lake, int(window_days or policy.training.window_days))
    if not days:
        raise AirflowSkipException("No validated partition yet: nothing to train on.")
    snapshot = train.build_training_set(lake, days)
    write_json_atomic(pinned, snapshot)
    return snapshot


def should_train(training_set: dict[str, Any], reason: str, force: bool) -> bool:
    """Apply :func:`continuous_training.train.training_decision`; log why."""
    from continuous_training.registry import get_champion
    from continuous_training.train import training_decision

    decision = training_decision(training_set, get_champion(), load_policy().training, reason, force)
    log.info("Train? %s: %s", decision["train"], decision["why"])
    return bool(decision["train"])


def train_challenger(
    training_set: dict[str, Any], reason: str, lineage: dict[str, str], params: dict[str, Any] | None
) -> dict[str, Any]:
    from continuous_training.train import train_challenger as fit

    extra = dict(lineage)
    if params and params.get("drift_report"):
        extra["drift_report"] = str(params["drift_report"])
        extra["drifted_columns"] = ",".join(params.get("drifted_columns") or [])
    return fit(training_set, reason=reason, lineage=extra)


def evaluate(run_id: str) -> dict[str, Any]:
    from continuous_training.evaluate import evaluate_challenger

    return evaluate_challenger(run_id)


def _client() -> Any:
    from continuous_training.registry import client

    return client()


def gate(evaluation: dict[str, Any], force: bool) -> dict[str, Any]:
    """Apply the gate and record the verdict on the challenger's MLflow run (tag ``ct.gate_verdict``)."""
    from continuous_training.evaluate import gate_verdict

    verdict = gate_verdict(
        evaluation["challenger"],
        evaluation.get("champion"),
        load_policy().gate,
        force=force,
        champion_error=evaluation.get("champion_error"),
    )
    verdict["champion_version"] = evaluation.get("champion_version")
    _client().set_tag(evaluation["run_id"], "ct.gate_verdict", json.dumps(verdict, default=str))
    log.info("Gate %s: %s", "passed" if verdict["passed"] else "BLOCKED", "; ".join(verdict["reasons"]))
    return verdict


def _recorded_verdict(run_id: str) -> dict[str, Any]:
    raw = _client().get_run(run_id).data.tags.get("ct.gate_verdict")
    if not raw:
        raise RuntimeError(f"MLflow run {run_id} has no ct.gate_verdict tag: run the `gate` task first")
    return json.loads(raw)


def register(run_id: str, lineage: dict[str, str]) -> dict[str, Any]:
    """Register a run that passed the gate (at most one version per run)."""
    from continuous_training.registry import register_challenger

    verdict = _recorded_verdict(run_id)
    if not verdict.get("passed"):
        raise RuntimeError(f"MLflow run {run_id} did not pass the gate; refusing to register it")
    return register_challenger(run_id, verdict=verdict, lineage=lineage)


def deploy(registered: dict[str, Any], lineage: dict[str, str]) -> dict[str, Any]:
    """Smoke-test the version and make it the champion; mail on-call if the endpoint refused it."""
    from continuous_training.deploy import DeployRolledBack, promote_champion, smoke_test
    from continuous_training.registry import get_champion, load_reference_sample

    name, version = registered["name"], str(registered["version"])
    gated_against = _recorded_verdict(registered["run_id"]).get("champion_version")
    champion = get_champion(name)
    current = str(champion["version"]) if champion else None
    if current not in (version, None if gated_against is None else str(gated_against)):
        # Clearing an old run's deploy must not replace a champion the gate never compared against.
        raise RuntimeError(
            f"{name} v{version} was gated against champion v{gated_against}, but the champion is now "
            f"v{current}; not deploying. Trigger train again to evaluate against the current champion."
        )
    sample = load_reference_sample(name, version).head(200)
    smoke = smoke_test(name, version, sample)
    log.info("Smoke test of %s v%s passed: %s", name, version, smoke)
    try:
        promoted = promote_champion(name, version, endpoint_url=load_settings().endpoint_url)
    except DeployRolledBack as exc:
        send_alert(
            f"deploy-rolled-back/{name}/{version}/{lineage['dag_run_id']}",
            f"Deploy rolled back: {name} v{version} was not served",
            f"<h2>Deploy of {html.escape(name)} v{html.escape(version)} rolled back</h2>"
            f"<p>{html.escape(str(exc))}</p>"
            + render_table([("Train run", _airflow_run_link(lineage["dag_id"], lineage["dag_run_id"]))]),
        )
        raise
    return {**promoted, "smoke_test": smoke}


def notify_gate_blocked(run_id: str, lineage: dict[str, str]) -> bool:
    """Mail on-call why the challenger was refused (once per MLflow run)."""
    verdict = _recorded_verdict(run_id)
    settings = load_settings()
    experiment_id = _client().get_run(run_id).info.experiment_id
    run_page = f"{settings.mlflow_tracking_uri}/#/experiments/{experiment_id}/runs/{run_id}"
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
                ("MLflow run (evaluation report under Artifacts)", run_page),
                ("Train run", _airflow_run_link(lineage["dag_id"], lineage["dag_run_id"])),
            ]
        )
        + "<p>To promote it anyway (never below the floor), trigger <code>train</code> with <i>force</i>.</p>"
    )
    return send_alert(
        f"gate-blocked/{run_id}", f"Gate blocked challenger (run {run_id[:8]})", body, details=verdict
    )


# -------------------------------------------------------------------------------------------- monitor


def collect_served(params: dict[str, Any], dag_run: Any) -> dict[str, Any]:
    """Snapshot the champion's served rows of the window into the lake."""
    from continuous_training.monitor import window_bounds
    from continuous_training.registry import get_champion, load_reference_sample
    from continuous_training.serving.predlog import read_predictions
    from continuous_training.storage import write_parquet_bytes_stable

    policy = load_policy()
    run_after = getattr(dag_run, "run_after", None) or datetime.now(UTC)
    start, end = window_bounds(
        run_after,
        window_start=params.get("window_start"),
        window_end=params.get("window_end"),
        window_hours=float(params.get("window_hours") or policy.drift.window_hours),
    )
    champion = get_champion()
    if champion is None:
        raise AirflowSkipException("No champion is serving yet: nothing to monitor.")
    served = read_predictions(_lake(), start, end, model_version=str(champion["version"]))
    run_id = str(getattr(dag_run, "run_id", "") or "manual")
    folder = _lake().root / "monitoring" / safe_name(run_id)
    path = folder / "current.parquet"
    write_parquet_bytes_stable(served, path)
    # The champion's reference sample beside it, so that compute_drift reads two local files and
    # needs no MLflow client.
    reference_path = folder / "reference.parquet"
    reference = load_reference_sample(load_policy().model.name, str(champion["version"]))
    write_parquet_bytes_stable(reference, reference_path)
    log.info("Window %s .. %s: %d rows served by v%s", start, end, len(served), champion["version"])
    return {
        "rows": len(served),
        "path": str(path),
        "reference_path": str(reference_path),
        "model_name": load_policy().model.name,
        "model_version": str(champion["version"]),
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
        "min_rows": policy.drift.min_rows,
    }


def enough_rows(collected: dict[str, Any]) -> bool:
    if collected["rows"] < collected["min_rows"]:
        log.info(
            "Only %d served rows in the window (drift.min_rows is %d): not judged",
            collected["rows"],
            collected["min_rows"],
        )
        return False
    return True


def compute_drift(collected: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Drift report of the window against the champion's reference sample (both snapshotted by collect)."""
    from continuous_training.monitor import compute_drift as drift_report

    result = drift_report(
        Path(collected["reference_path"]),
        Path(collected["path"]),
        report_dir=_lake().drift_report_dir(run_id or "manual"),
        title=f"{collected['model_name']} v{collected['model_version']}: "
        f"{collected['window_start']} .. {collected['window_end']}",
    )
    result.update({k: collected[k] for k in ("model_name", "model_version", "window_start", "window_end")})
    return result


def alert_drift(drift: dict[str, Any], run_id: str) -> bool:
    """Mail on-call the drifted columns, their scores and the report (once per monitor run)."""
    rows = [(c, f"{drift['scores'][c]:.3f}") for c in drift["drifted_columns"]]
    body = (
        f"<h2>Drift found in {len(drift['drifted_columns'])} column(s)</h2>"
        f"<p>What the endpoint served with {html.escape(drift['model_name'])} v{html.escape(drift['model_version'])} "
        f"between {html.escape(drift['window_start'])} and {html.escape(drift['window_end'])} "
        f"({drift['rows_current']} rows) differs from the model's reference sample "
        f"({drift['num_method']} / {drift['cat_method']}, threshold {drift['threshold']}).</p>"
        + render_table([("Column", "Score"), *rows])
        + f'<p>Report: <a href="file://{html.escape(drift["report_html"])}">{html.escape(drift["report_html"])}</a></p>'
        + render_table([("Monitor run", _airflow_run_link("monitor", run_id))])
        + "<p>The <code>train</code> DAG is triggered with this report unless a drift-triggered retraining "
        "ran within the cooldown.</p>"
    )
    return send_alert(
        f"drift/{run_id}",
        f"Drift in {', '.join(drift['drifted_columns'])} ({drift['model_name']} v{drift['model_version']})",
        body,
        details={k: drift[k] for k in ("drifted_columns", "scores", "report_html", "report_json")},
    )


def retrain_due(
    drift: dict[str, Any], run_id: str, run_after: datetime | None = None
) -> dict[str, Any] | None:
    """Conf for the ``train`` DAG if retraining is due (policy + cooldown), else None."""
    from continuous_training.monitor import last_retrain_trigger, record_retrain_trigger, retrain_decision

    lake, policy = _lake(), load_policy()
    conf = {
        "reason": f"drift in {', '.join(drift['drifted_columns'])}",
        "drift_report": drift["report_html"],
        "drifted_columns": list(drift["drifted_columns"]),
    }
    ledger = lake.root / "monitoring" / "retrain_triggers.json"
    if ledger.exists() and any(e.get("monitor_run_id") == run_id for e in read_json(ledger)):
        log.info("This run already decided to retrain (ledger %s): same trigger again", ledger)
        return conf
    # The run's own time, not the wall clock: re-running an old monitor run judges the cooldown as it was.
    now = run_after or datetime.now(UTC)
    decision = retrain_decision(drift, policy.drift, last_trigger_at=last_retrain_trigger(lake), now=now)
    log.info("Retrain? %s: %s", decision["retrain"], decision["why"])
    if not decision["retrain"]:
        return None
    record_retrain_trigger(lake, run_id, now, drift)
    return conf
