"""What the pages show, gathered from where it lives: the lake, the MLflow registry, the endpoint and
Airflow's own database (the page runs inside the API server).

Each function returns plain dicts and lists for the templates, and is usable without a web server (the
tests call them directly). Heavy imports stay inside the functions; nothing here writes.

Sources:

* the champion: MLflow's ``champion`` alias, the version's run (training days, holdout metric of the
  gate's metric) and the alias's recorded moves (:mod:`~continuous_training.model.history`);
* the endpoint: its open ``GET /health``, and the prediction log's files of the last hour (row and
  request counts, from the log's own ``served_at`` column);
* drift: each monitor run's ``summary.json`` beside its Evidently report in the lake;
* gate verdicts: the ``ct.gate_verdict`` tag of the newest training runs;
* quarantines: the lake's ``quarantine/`` folders; open while no validated partition of that day exists;
* next runs: Airflow's ``dag`` table (``next_dagrun_create_after``).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from continuous_training.config import load_policy
from continuous_training.lake import Lake, manifest_file, read_json
from continuous_training.lineage import (
    TAG_DAG_RUN_ID,
    TAG_GATE_VERDICT,
    TAG_HOLDOUT_DAYS,
    TAG_REASON,
    TAG_TRAINING_DAYS,
)
from continuous_training.settings import Settings

log = logging.getLogger(__name__)

#: The DAGs whose next runs the overview lists (``train`` runs on new validated data, not on a clock).
SCHEDULED_DAGS = ("ingest", "monitor")
#: Newest training runs searched for the last gate verdict.
_GATE_RUNS_SEARCHED = 20
_HEALTH_TIMEOUT_S = 2.0


# ------------------------------------------------------------------------------------------- drift


def drift_page(lake: Lake) -> dict[str, Any]:
    """What the Drift page shows: every run's verdict with its decision, and every decision (windows too
    small to judge included), each read once."""
    decided = decisions(lake)
    return {"runs": drift_runs(lake, decided), "decisions": decided}


def drift_runs(lake: Lake, decided: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every monitor run's drift verdict, newest first, with its decision record (or None).

    Returns:
        ``{"run_key", "at" (the summary's time), "title", "drifted_columns" (highest score first),
        "share_drifted", "threshold", "scores" (column -> score), "null_columns", "unseen_categories",
        "rows_current", "rows_reference", "has_report"}``.
    """

    base = lake.drift_reports()
    if not base.is_dir():
        return []
    by_key = {d["run_key"]: d for d in (decisions(lake) if decided is None else decided)}
    runs = [run for folder in base.iterdir() if (run := _drift_summary(folder)) is not None]
    for run in runs:
        run["decision"] = by_key.get(run["run_key"])
    return sorted(runs, key=lambda run: run["at"], reverse=True)


def decisions(lake: Lake) -> list[dict[str, Any]]:
    """Every monitor run's retrain decision record, newest first, with ``run_key`` (its report folder's
    name) and ``has_report``; an unreadable record is logged and left out."""
    from continuous_training.monitoring.retrain import decision_records

    try:
        records = decision_records(lake)
    except (OSError, ValueError) as exc:
        log.warning("Monitor decisions unreadable: %s", exc)
        return []
    for record in records:
        key = lake.drift_report_dir(record["monitor_run_id"]).name
        record["run_key"] = key
        record["has_report"] = (lake.drift_report_dir(key) / "summary.json").is_file()
    return records


def _drift_summary(folder: Path) -> dict[str, Any] | None:
    """One monitor run's verdict from its folder's ``summary.json`` (None without a readable one)."""
    from continuous_training.monitoring.report import REPORT_HTML

    summary = folder / "summary.json"
    if not summary.is_file():
        return None
    try:
        data = read_json(summary)
    except (OSError, ValueError) as exc:
        log.warning("Drift summary %s unreadable: %s", summary, exc)
        return None
    return {
        "run_key": folder.name,
        "at": datetime.fromtimestamp(summary.stat().st_mtime, UTC),
        "title": data.get("title", folder.name),
        "drifted_columns": list(data.get("drifted_columns") or []),
        "share_drifted": data.get("share_drifted"),
        "threshold": data.get("threshold"),
        "scores": dict(data.get("scores") or {}),
        "null_columns": dict(data.get("null_columns") or {}),
        "unseen_categories": dict(data.get("unseen_categories") or {}),
        "rows_current": data.get("rows_current"),
        "rows_reference": data.get("rows_reference"),
        "has_report": (folder / REPORT_HTML).is_file(),
    }


def latest_drift_run(lake: Lake) -> dict[str, Any] | None:
    """The newest monitor run's verdict (by its summary's time), reading that one summary only."""
    base = lake.drift_reports()
    if not base.is_dir():
        return None
    stamped = []
    for folder in base.iterdir():
        try:
            stamped.append(((folder / "summary.json").stat().st_mtime, folder.name))
        except OSError:
            continue
    if not stamped:
        return None
    return drift_run(lake, max(stamped)[1])


def drift_run(lake: Lake, run_key: str) -> dict[str, Any] | None:
    """One monitor run's verdict with its columns sorted by score (highest first), or None."""
    run = (
        _drift_summary(lake.drift_reports() / run_key)
        if lake.drift_report_dir(run_key).name == run_key
        else None
    )
    if run is None:
        return None
    run["decision"] = next((d for d in decisions(lake) if d["run_key"] == run_key), None)
    threshold = run["threshold"]
    empty = set(run["null_columns"].get("current") or []) | set(run["null_columns"].get("reference") or [])
    run["columns"] = [
        {
            "column": c,
            "score": s,
            "drifted": c in run["drifted_columns"],
            "threshold": threshold,
            "unseen": run["unseen_categories"].get(c, []),
            "empty": c in empty,
        }
        # Highest score first; a column that could not be scored last.
        for c, s in sorted(run["scores"].items(), key=lambda item: (item[1] is None, -(item[1] or 0.0)))
    ]
    return run


def drift_report_file(lake: Lake, run_key: str) -> Path | None:
    """The Evidently HTML report of a monitor run, if it exists (``run_key`` is a lake folder name)."""
    from continuous_training.monitoring.report import REPORT_HTML

    folder = lake.drift_report_dir(run_key)
    if folder.name != run_key:  # not a name the lake made: refuse rather than sanitise
        return None
    path = folder / REPORT_HTML
    return path if path.is_file() else None


# -------------------------------------------------------------------------------------- quarantine


def quarantines(lake: Lake) -> list[dict[str, Any]]:
    """Every quarantined batch, newest day first.

    Returns:
        ``{"day", "sha", "sha256", "at", "rows", "bad_rows", "failed" (expectation dicts: column,
        expectation, unexpected_count, unexpected_percent, examples), "open" (no validated partition of
        that day exists), "has_bad_rows", "reason"}``.
    """
    from continuous_training.lake import (
        QUARANTINE_BAD_ROWS_FILE,
        QUARANTINE_REASON_FILE,
        QUARANTINE_VALIDATION_FILE,
    )

    validated = set(lake.validated_days())
    found = []
    for folder in lake.quarantined():
        day = folder.parent.name.removeprefix("dt=")
        manifest = manifest_file(folder)
        if not manifest.is_file():
            continue  # being written, or not a batch
        validation = _read_or_empty(folder / QUARANTINE_VALIDATION_FILE)
        reason = folder / QUARANTINE_REASON_FILE
        found.append(
            {
                "day": day,
                "sha": folder.name,
                "folder": folder,
                "sha256": validation.get("sha256"),
                "at": datetime.fromtimestamp(manifest.stat().st_mtime, UTC),
                "rows": validation.get("rows"),
                "bad_rows": validation.get("bad_rows"),
                "failed": [
                    {
                        "column": f.get("column"),
                        "expectation": f.get("expectation"),
                        "unexpected_count": f.get("unexpected_count"),
                        "unexpected_percent": f.get("unexpected_percent"),
                        "examples": list(f.get("partial_unexpected_list") or [])[:5],
                    }
                    for f in validation.get("failed") or []
                ],
                "parse_errors": validation.get("parse_errors") or {},
                "open": day not in validated,
                "has_bad_rows": (folder / QUARANTINE_BAD_ROWS_FILE).is_file(),
                "reason": reason.read_text(errors="replace") if reason.is_file() else "",
            }
        )
    return sorted(found, key=lambda q: (q["day"], q["at"]), reverse=True)


def bad_rows_file(lake: Lake, day: str, sha: str) -> Path | None:
    """The quarantined batch's failing rows (parquet), if that batch exists."""
    from continuous_training.lake import QUARANTINE_BAD_ROWS_FILE

    for batch in quarantines(lake):
        if (batch["day"], batch["sha"]) == (day, sha) and batch["has_bad_rows"]:
            return batch["folder"] / QUARANTINE_BAD_ROWS_FILE
    return None


def replay_check(lake: Lake, day: str) -> dict[str, Any] | None:
    """Whether the landing folder of a quarantined day now holds other files than the quarantined batch.

    Returns:
        None if ``day`` has no quarantined batch, else ``{"day", "changed", "run_id", "files"}``:
        ``changed`` when the landing files (names and SHA-256) differ from the newest quarantined
        batch's sources; ``run_id`` the ``ingest`` run for these landing files (``replay__<day>__<12
        hex digits of their hashes>``: a second click on the same files is the same run).
    """
    from continuous_training.data.ingest import NoLandingFilesError, landing_files
    from continuous_training.lake import QUARANTINE_RAW_MANIFEST_FILE, sha256_file, sha256_json

    batches = [b for b in quarantines(lake) if b["day"] == day]
    if not batches:
        return None
    newest = max(batches, key=lambda b: b["at"])
    manifest = _read_or_empty(newest["folder"] / QUARANTINE_RAW_MANIFEST_FILE)
    quarantined = {f["name"]: f["sha256"] for f in manifest.get("source_files") or []}
    try:
        files = {path.name: sha256_file(path) for path in landing_files(lake, day)}
    except NoLandingFilesError:
        files = {}
    return {
        "day": day,
        "changed": bool(files) and files != quarantined,
        "files": sorted(files),
        "run_id": f"replay__{day}__{sha256_json(files)[:12]}",
    }


def _read_or_empty(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------------------------------- endpoint


def endpoint_state(settings: Settings, lake: Lake, now: datetime | None = None) -> dict[str, Any]:
    """The endpoint's health and what it served in the last hour.

    Returns:
        ``{"url", "healthy", "status", "version", "error", "rows_last_hour", "requests_last_hour"}``.
    """
    import httpx

    state: dict[str, Any] = {"url": settings.endpoint_url, "healthy": False, "status": None, "version": None}
    try:
        resp = httpx.get(f"{settings.endpoint_url}/health", timeout=_HEALTH_TIMEOUT_S)
        body = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
        state.update(
            healthy=resp.status_code == 200 and body.get("status") == "ok",
            status=body.get("status") or f"HTTP {resp.status_code}",
            version=body.get("model_version"),
            error=None,
        )
    except (httpx.HTTPError, ValueError) as exc:
        state.update(status="unreachable", error=type(exc).__name__)
    state.update(served_last_hour(lake, now))
    return state


def served_last_hour(lake: Lake, now: datetime | None = None) -> dict[str, int]:
    """Rows and requests the endpoint logged in the hour before ``now`` (files of that hour only)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    now = now or datetime.now(UTC)
    since = now - timedelta(hours=1)
    rows = 0
    requests: set[str] = set()
    for day in {since.date(), now.date()}:
        folder = lake.predictions(day)
        if not folder.is_dir():
            continue
        for path in folder.glob("part-*.parquet"):
            if datetime.fromtimestamp(path.stat().st_mtime, UTC) < since:
                continue  # flushed before the hour began: every row in it is older
            table = pq.read_table(path, columns=["request_id", "served_at"])
            recent = table.filter(pc.greater_equal(table["served_at"], since))
            rows += recent.num_rows
            requests.update(recent["request_id"].to_pylist())
    return {"rows_last_hour": rows, "requests_last_hour": len(requests)}


# ------------------------------------------------------------------------------------------ models


def champion(settings: Settings, lake: Lake) -> dict[str, Any] | None:
    """The champion now: version, since when and why, what it was trained on, its holdout metric.

    Returns:
        None without a champion, else ``{"name", "version", "run_id", "experiment_id", "trained_days",
        "holdout_days", "metric", "holdout_value", "since" (the move that made it champion, or None
        when it was moved outside the pipeline), "reason", "dag_run_id"}``.
    """
    from continuous_training.model.ledger import champion_since, read_ledger
    from continuous_training.modelstore import alias_version, client

    policy = load_policy(settings.config_dir)
    name = policy.model.name
    mlflow_client = client()
    version = alias_version(mlflow_client, name, "champion")
    if version is None:
        return None
    mv = mlflow_client.get_model_version(name, version)
    run = mlflow_client.get_run(mv.run_id) if mv.run_id else None
    tags = run.data.tags if run else {}
    metric = policy.gate.metric
    return {
        "name": name,
        "version": str(version),
        "run_id": mv.run_id,
        "experiment_id": run.info.experiment_id if run else None,
        "trained_days": _days(tags.get(TAG_TRAINING_DAYS)),
        "holdout_days": _days(tags.get(TAG_HOLDOUT_DAYS)),
        "metric": metric,
        "holdout_value": run.data.metrics.get(f"holdout_{metric}") if run else None,
        "since": champion_since(read_ledger(lake, name), str(version)),
        "reason": tags.get(TAG_REASON),
        "dag_run_id": tags.get(TAG_DAG_RUN_ID),
    }


def last_gate_verdict(settings: Settings) -> dict[str, Any] | None:
    """The newest gate verdict recorded on a training run, with the run it judged."""
    from continuous_training.modelstore import client

    name = load_policy(settings.config_dir).model.name
    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        return None
    runs = mlflow_client.search_runs(
        [experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=_GATE_RUNS_SEARCHED
    )
    for run in runs:
        raw = run.data.tags.get(TAG_GATE_VERDICT)
        if raw:
            verdict = json.loads(raw)
            return {
                **verdict,
                "run_id": run.info.run_id,
                "experiment_id": run.info.experiment_id,
                "dag_run_id": run.data.tags.get(TAG_DAG_RUN_ID),
                "at": datetime.fromtimestamp(run.info.start_time / 1000, UTC),
            }
    return None


def models(settings: Settings, lake: Lake) -> dict[str, Any]:
    """Every registered version with its gate verdict and lineage, and the deployment ledger.

    One registry search reads every version with its tags (the registration copies the run's lineage
    and the gate's verdict onto the version).

    Returns:
        ``{"name", "metric", "champion", "experiment_id", "versions" (newest first: ``version``,
        ``created_at``, ``run_id``, ``training_set``, ``dag_id``, ``dag_run_id``, ``git_commit``,
        ``reason``, ``verdict``, ``metric_value``, ``champion``, ``challenger``, and its live checks
        as recorded on its tags: ``approval``, ``shadow``, ``watch``, each None when not made),
        "ledger" (newest first),
        "since" (the ledger record that made the champion, or None)}``.
    """
    from continuous_training.lineage import (
        TAG_APPROVAL,
        TAG_DAG_ID,
        TAG_GIT_COMMIT,
        TAG_SHADOW_VERDICT,
        TAG_TRAINING_SET,
        TAG_WATCH_VERDICT,
        json_tag,
    )
    from continuous_training.model.ledger import champion_since, read_ledger
    from continuous_training.modelstore import alias_version, client

    policy = load_policy(settings.config_dir)
    name = policy.model.name
    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(name)
    champion_now = alias_version(mlflow_client, name, "champion")
    challenger_now = alias_version(mlflow_client, name, "challenger")
    versions = []
    for mv in mlflow_client.search_model_versions(f"name='{name}'", max_results=10_000):
        tags = mv.tags or {}
        verdict = json.loads(tags[TAG_GATE_VERDICT]) if tags.get(TAG_GATE_VERDICT) else None
        versions.append(
            {
                "version": str(mv.version),
                "created_at": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC),
                "run_id": mv.run_id,
                "training_set": (tags.get(TAG_TRAINING_SET) or "")[:12],
                "dag_id": tags.get(TAG_DAG_ID) or "train",
                "dag_run_id": tags.get(TAG_DAG_RUN_ID),
                "git_commit": (tags.get(TAG_GIT_COMMIT) or "")[:12],
                "reason": tags.get(TAG_REASON),
                "verdict": verdict,
                "metric_value": (verdict or {}).get("challenger_value"),
                "champion": str(mv.version) == str(champion_now),
                "challenger": str(mv.version) == str(challenger_now) and challenger_now != champion_now,
                "approval": json_tag(tags, TAG_APPROVAL),
                "shadow": json_tag(tags, TAG_SHADOW_VERDICT),
                "watch": json_tag(tags, TAG_WATCH_VERDICT),
            }
        )
    versions.sort(key=lambda v: int(v["version"]), reverse=True)
    entries = read_ledger(lake, name)
    return {
        "name": name,
        "metric": policy.gate.metric,
        "champion": None if champion_now is None else str(champion_now),
        "experiment_id": experiment.experiment_id if experiment else None,
        "versions": versions,
        "ledger": list(reversed(entries)),
        "since": champion_since(entries, champion_now),
    }


#: What an MLflow run id looks like; anything else is not looked up.
_RUN_ID = re.compile(r"[0-9a-f]{32}")


def evaluation(settings: Settings, run_id: str) -> dict[str, Any] | None:
    """A challenger's evaluation: the gate's verdict, its holdout metrics beside the champion's of the
    time, what it was trained on and the version it became, if any.

    Returns:
        None if ``run_id`` is not a training run of the model, else ``{"run_id", "experiment_id",
        "verdict" (or None before the gate ran), "metrics" (rows: metric, challenger, champion),
        "evaluated_against", "trained_days", "holdout_days", "reason", "dag_run_id", "versions",
        "at"}``.
    """
    from mlflow.exceptions import MlflowException

    from continuous_training.lineage import TAG_EVALUATED_AGAINST
    from continuous_training.modelstore import client

    if not _RUN_ID.fullmatch(run_id):
        return None
    name = load_policy(settings.config_dir).model.name
    mlflow_client = client()
    try:
        run = mlflow_client.get_run(run_id)
    except MlflowException:
        return None
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None or run.info.experiment_id != experiment.experiment_id:
        return None
    tags, metrics = run.data.tags, run.data.metrics
    names = sorted(k.removeprefix("holdout_") for k in metrics if k.startswith("holdout_"))
    versions = mlflow_client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    return {
        "run_id": run_id,
        "experiment_id": run.info.experiment_id,
        "verdict": json.loads(tags[TAG_GATE_VERDICT]) if tags.get(TAG_GATE_VERDICT) else None,
        "metrics": [
            {
                "metric": m,
                "challenger": metrics.get(f"holdout_{m}"),
                "champion": metrics.get(f"champion_holdout_{m}"),
            }
            for m in names
        ],
        "evaluated_against": tags.get(TAG_EVALUATED_AGAINST),
        "trained_days": _days(tags.get(TAG_TRAINING_DAYS)),
        "holdout_days": _days(tags.get(TAG_HOLDOUT_DAYS)),
        "reason": tags.get(TAG_REASON),
        "dag_run_id": tags.get(TAG_DAG_RUN_ID),
        "versions": sorted(str(v.version) for v in versions),
        "at": datetime.fromtimestamp(run.info.start_time / 1000, UTC),
    }


def evaluation_report(run_id: str) -> bytes | None:
    """The evaluation report (HTML) a challenger's run logged, or None if it has none."""
    import tempfile

    from mlflow.exceptions import MlflowException

    from continuous_training.lineage import EVALUATION_REPORT_ARTIFACT
    from continuous_training.modelstore import client

    if not _RUN_ID.fullmatch(run_id):
        return None
    with tempfile.TemporaryDirectory(prefix="ct-ui-") as tmp:
        try:
            path = client().download_artifacts(run_id, EVALUATION_REPORT_ARTIFACT, tmp)
        except (MlflowException, OSError):
            return None
        return Path(path).read_bytes()


def _days(value: str | None) -> list[str]:
    return sorted(d for d in (value or "").split(",") if d)


# ------------------------------------------------------------------------------------------ airflow


def next_runs(dag_ids: tuple[str, ...] = SCHEDULED_DAGS) -> list[dict[str, Any]]:
    """When each scheduled DAG runs next, from Airflow's ``dag`` table (the API server's database)."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(
                DagModel.dag_id,
                DagModel.is_paused,
                DagModel.next_dagrun_create_after,
                DagModel.timetable_description,
            ).where(DagModel.dag_id.in_(dag_ids))
        ).all()
    found = {row.dag_id: row for row in rows}
    return [
        {
            "dag_id": dag_id,
            "paused": bool(found[dag_id].is_paused) if dag_id in found else None,
            "next": found[dag_id].next_dagrun_create_after if dag_id in found else None,
            "schedule": found[dag_id].timetable_description if dag_id in found else None,
        }
        for dag_id in dag_ids
    ]


# ----------------------------------------------------------------------------------------- overview


def overview(settings: Settings) -> dict[str, Any]:
    """Everything the Overview page shows; a source that cannot be read is reported, not fatal."""
    lake = Lake(settings.lake)
    page: dict[str, Any] = {"errors": {}}

    def gather(key: str, fn: Any) -> None:
        try:
            page[key] = fn()
        except Exception as exc:  # one broken source must not hide the others
            log.warning("Overview: %s unavailable: %s", key, exc, exc_info=True)
            page[key] = None
            page["errors"][key] = f"{type(exc).__name__}: cannot be read now (see the API server's log)"

    gather("champion", lambda: champion(settings, lake))
    gather("endpoint", lambda: endpoint_state(settings, lake))
    gather("drift", lambda: latest_drift_run(lake))
    gather("gate", lambda: last_gate_verdict(settings))
    gather("next_runs", next_runs)
    gather("quarantines", lambda: [q for q in quarantines(lake) if q["open"]])
    return page
