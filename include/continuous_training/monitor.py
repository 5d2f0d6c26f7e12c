"""Drift monitoring: what the endpoint served in a window against the champion's reference sample.

The monitor DAG calls, in order: :func:`window_bounds` (which served rows to judge),
:func:`compute_drift` (an Evidently report, saved as HTML and JSON, and the per-column scores read back
from it), :func:`retrain_decision` (a pure predicate over those scores and the policy), and, when it says
retrain, :func:`record_retrain_trigger` so that the next run's :func:`last_retrain_trigger` enforces the
cooldown.

The drift statistics are pinned from the policy (normed Wasserstein for numeric columns, Jensen-Shannon
distance for categoricals, one threshold). Evidently's own defaults depend on the reference size and switch
to KS / chi-square at 1,000 rows or fewer, and its chi-square flags every categorical of a no-drift window
(it ignores the reference's sampling noise), so the defaults are never used.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from continuous_training.config import DatasetContract, DriftPolicy, load_contract, load_policy
from continuous_training.storage import Lake, read_json, write_json_atomic

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

#: The endpoint's prediction column; its drift is reported but does not count as a drifted feature.
PREDICTION_COLUMN = "score"
REPORT_HTML = "drift_report.html"
REPORT_JSON = "drift_report.json"
SUMMARY_JSON = "summary.json"
TRIGGER_LEDGER = "retrain_triggers.json"

#: Evidently methods whose score is a distance (drift when score >= threshold). The p-value tests
#: (ks, chisquare, ...) flag the other way round, and chi-square over-fires; they are refused.
DISTANCE_METHODS = frozenset({"wasserstein", "jensenshannon", "hellinger", "kl_div", "psi", "ed"})
_NUMERIC_CAPABLE = DISTANCE_METHODS
_CATEGORICAL_CAPABLE = frozenset({"jensenshannon", "hellinger", "kl_div", "psi"})
_VALUE_DRIFT_TYPE = "evidently:metric_v2:ValueDrift"
_NOISY_LOGGERS = ("evidently", "iterative_telemetry")


def _check_methods(policy: DriftPolicy) -> None:
    for field_name, method, capable in (
        ("num_method", policy.num_method, _NUMERIC_CAPABLE),
        ("cat_method", policy.cat_method, _CATEGORICAL_CAPABLE),
    ):
        if method not in DISTANCE_METHODS:
            raise ValueError(
                f"policy drift.{field_name}={method!r}: expected a distance method, one of "
                f"{sorted(DISTANCE_METHODS)} (p-value tests flag drift the other way round, and Evidently's "
                "chi-square over-fires on samples of a few thousand rows)"
            )
        if method not in capable:
            raise ValueError(f"policy drift.{field_name}={method!r}: expected one of {sorted(capable)}")
    if not policy.threshold > 0:
        raise ValueError(f"policy drift.threshold={policy.threshold!r}: expected a positive distance")


def _check_columns(frame: pd.DataFrame, wanted: list[str], what: str) -> None:
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what} frame lacks the contract's feature column(s) {missing}; it has {list(frame.columns)}"
        )
    if len(frame) == 0:
        raise ValueError(f"{what} frame has no rows; drift needs rows on both sides")


def _prepared(frame: pd.DataFrame, numeric: list[str], categorical: list[str], what: str) -> pd.DataFrame:
    """Only the judged columns, with one dtype per role, so both sides bin the same values."""
    import pandas as pd

    out = {}
    for col in numeric:
        try:
            out[col] = pd.to_numeric(frame[col], errors="raise").astype("float64")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what} frame, column {col!r}: expected numbers ({exc})") from exc
    for col in categorical:
        # A category dtype or ints on one side and str on the other would count as different levels.
        series = frame[col].astype(object)
        mask = series.notna()
        series[mask] = series[mask].astype(str)
        out[col] = series
    return pd.DataFrame(out, index=range(len(frame)))


@contextlib.contextmanager
def _quiet_evidently() -> Iterator[None]:
    saved = {}
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = logger.level
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def scores_from_report(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-column drift scores from an Evidently 0.7 snapshot dict (the content of ``drift_report.json``).

    Evidently 0.7 puts each column's score in a ``ValueDrift`` metric:
    ``{"config": {"type": "evidently:metric_v2:ValueDrift", "column", "method", "threshold"}, "value": float}``.
    There is no drift flag in the JSON.

    Args:
        report: the parsed ``drift_report.json`` (``snapshot.dict()``).

    Returns:
        ``{column: {"score": float, "method": str, "threshold": float}}``.

    Raises:
        ValueError: the dict does not look like an Evidently 0.7 snapshot.
    """
    metrics = report.get("metrics")
    if not isinstance(metrics, list):
        raise ValueError("drift report: expected a `metrics` list (Evidently 0.7 snapshot dict)")
    found: dict[str, dict[str, Any]] = {}
    for metric in metrics:
        config = metric.get("config") or {}
        if config.get("type") != _VALUE_DRIFT_TYPE:
            continue
        found[config["column"]] = {
            "score": float(metric["value"]),
            "method": config.get("method"),
            "threshold": config.get("threshold"),
        }
    return found


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    contract: DatasetContract | None = None,
    policy: DriftPolicy | None = None,
    report_dir: Path,
    title: str = "",
) -> dict[str, Any]:
    """Compare the served window with the reference sample and save an Evidently drift report.

    Only the contract's feature columns are judged (ids, timestamps, the target and the serving metadata
    are left out), plus the prediction column ``score`` when both frames carry it; the prediction's drift
    is reported under ``prediction_drift`` but is not a drifted feature.

    Args:
        reference: the champion's reference sample (features, target, maybe ``score``).
        current: the served window (features, request/serving columns, ``score``).
        contract: the dataset contract; default :func:`load_contract`.
        policy: the drift policy; default ``load_policy().drift``.
        report_dir: folder receiving ``drift_report.html``, ``drift_report.json`` and ``summary.json``
            (created; files of a previous run with the same folder are replaced).
        title: a label for the report and the summary (e.g. the monitor run id and window).

    Returns:
        A JSON-serialisable summary: ``drifted_columns`` (sorted), ``scores`` (feature -> score),
        ``threshold``, ``num_method``, ``cat_method``, ``share_drifted``, ``rows_reference``,
        ``rows_current``, ``prediction_drift`` (or None), ``title``, ``report_html``, ``report_json``,
        ``summary_json`` (absolute paths).

    Raises:
        ValueError: a feature column is missing from a frame (named), a frame is empty, a numeric column
            holds non-numbers, or the policy names a method that is not a distance.
        RuntimeError: the saved report lacks a column's score or used another method than pinned.
    """
    contract = contract or load_contract()
    policy = policy or load_policy().drift
    _check_methods(policy)
    features = contract.feature_names
    _check_columns(reference, features, "reference")
    _check_columns(current, features, "current")
    numeric = contract.numeric_features
    categorical = contract.categorical_features
    with_prediction = PREDICTION_COLUMN in reference.columns and PREDICTION_COLUMN in current.columns
    judged_numeric = numeric + ([PREDICTION_COLUMN] if with_prediction else [])
    ref = _prepared(reference, judged_numeric, categorical, "reference")
    cur = _prepared(current, judged_numeric, categorical, "current")

    report_dir = Path(report_dir).absolute()
    report_dir.mkdir(parents=True, exist_ok=True)
    html_path, json_path = report_dir / REPORT_HTML, report_dir / REPORT_JSON
    with _quiet_evidently():
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

        # Every role list is given, so Evidently infers nothing (no int column turned categorical).
        definition = DataDefinition(
            numerical_columns=judged_numeric,
            categorical_columns=categorical,
            text_columns=[],
            datetime_columns=[],
            unknown_columns=[],
            list_columns=[],
        )
        preset = DataDriftPreset(
            columns=judged_numeric + categorical,
            num_method=policy.num_method,
            cat_method=policy.cat_method,
            threshold=policy.threshold,
        )
        snapshot = Report([preset]).run(
            Dataset.from_pandas(cur, data_definition=definition),
            Dataset.from_pandas(ref, data_definition=definition),
            name=title or None,
        )
        # save_html/save_json take str paths only: a Path or a file object is silently ignored.
        tag = uuid.uuid4().hex
        for target, save in ((html_path, snapshot.save_html), (json_path, snapshot.save_json)):
            tmp = target.with_name(f".{target.name}.{tag}.tmp")
            save(str(tmp))
            if not tmp.exists() or tmp.stat().st_size == 0:
                raise RuntimeError(f"Evidently wrote nothing to {tmp}")
            os.replace(tmp, target)

    found = scores_from_report(json.loads(json_path.read_text()))
    missing = [c for c in judged_numeric + categorical if c not in found]
    if missing:
        raise RuntimeError(f"{json_path}: no ValueDrift score for column(s) {missing}")
    for col in judged_numeric + categorical:
        expected = policy.num_method if col in judged_numeric else policy.cat_method
        if found[col]["method"] != expected:
            raise RuntimeError(
                f"{json_path}: column {col!r} was judged with {found[col]['method']!r}, expected {expected!r}"
            )

    def _score(col: str) -> float | None:
        value = found[col]["score"]
        if not math.isfinite(value):
            log.warning("drift score of column %s is %s; not counted as drift", col, value)
            return None
        return value

    scores = {col: _score(col) for col in features}
    drifted = sorted(c for c, s in scores.items() if s is not None and s >= policy.threshold)
    prediction_drift = None
    if with_prediction:
        value = _score(PREDICTION_COLUMN)
        prediction_drift = {
            "column": PREDICTION_COLUMN,
            "score": value,
            "drifted": value is not None and value >= policy.threshold,
        }
    summary_path = report_dir / SUMMARY_JSON
    result: dict[str, Any] = {
        "title": title,
        "drifted_columns": drifted,
        "scores": scores,
        "threshold": policy.threshold,
        "num_method": policy.num_method,
        "cat_method": policy.cat_method,
        "share_drifted": len(drifted) / len(features),
        "rows_reference": len(reference),
        "rows_current": len(current),
        "prediction_drift": prediction_drift,
        "report_html": str(html_path),
        "report_json": str(json_path),
        "summary_json": str(summary_path),
    }
    write_json_atomic(summary_path, result)
    log.info(
        "drift %s: %d of %d feature columns drifted %s (threshold %s, %d reference vs %d current rows)",
        title or report_dir,
        len(drifted),
        len(features),
        drifted,
        policy.threshold,
        len(reference),
        len(current),
    )
    return result


def _to_utc(value: datetime) -> datetime:
    """A plain ``datetime`` in UTC; naive values are taken as UTC (pendulum values become stdlib)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return datetime(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        tzinfo=UTC,
    )


def _fmt_scores(drift: dict[str, Any], columns: list[str]) -> str:
    scores = drift.get("scores", {})
    return ", ".join(f"{c}={scores[c]:.3f}" if scores.get(c) is not None else c for c in columns)


def retrain_decision(
    drift: dict[str, Any], policy: DriftPolicy, *, last_trigger_at: datetime | None, now: datetime
) -> dict[str, Any]:
    """Decide whether a drift result should trigger retraining (pure: no I/O, no clock).

    Retrain when at least ``policy.min_drifted_columns`` feature columns drifted and the previous
    drift-triggered retraining is at least ``policy.cooldown_hours`` old (or there was none). A window with
    fewer than ``policy.min_rows`` served rows is not judged.

    Args:
        drift: the dict returned by :func:`compute_drift`.
        policy: the drift policy.
        last_trigger_at: time of the last drift-triggered retraining, or None.
        now: the decision time (the run's ``run_after``); naive datetimes are taken as UTC.

    Returns:
        ``{"retrain": bool, "why": str}``; ``why`` names the drifted columns and their scores, or says
        why not (too few rows, no drift, below ``min_drifted_columns``, cooldown until a time).
    """
    drifted = list(drift.get("drifted_columns", []))
    threshold = drift.get("threshold", policy.threshold)
    rows = drift.get("rows_current")
    if rows is not None and rows < policy.min_rows:
        return {
            "retrain": False,
            "why": f"only {rows} served rows in the window; drift.min_rows is {policy.min_rows}",
        }
    if not drifted:
        scores = {c: s for c, s in drift.get("scores", {}).items() if s is not None}
        top = max(scores, key=scores.__getitem__) if scores else None
        highest = f"; highest {top}={scores[top]:.3f}" if top else ""
        return {
            "retrain": False,
            "why": f"no drift: no feature column reached threshold {threshold}{highest}",
        }
    described = f"{len(drifted)} column(s) drifted (>= {threshold}): {_fmt_scores(drift, drifted)}"
    if len(drifted) < policy.min_drifted_columns:
        return {
            "retrain": False,
            "why": f"{described}; below drift.min_drifted_columns={policy.min_drifted_columns}",
        }
    if last_trigger_at is not None:
        until = _to_utc(last_trigger_at) + timedelta(hours=policy.cooldown_hours)
        if _to_utc(now) < until:
            return {
                "retrain": False,
                "why": (
                    f"{described}; but in cooldown until {until.isoformat()} "
                    f"(last drift-triggered retraining {_to_utc(last_trigger_at).isoformat()}, "
                    f"cooldown {policy.cooldown_hours} h)"
                ),
            }
    return {"retrain": True, "why": described}


def _ledger_path(lake: Lake) -> Path:
    return lake.root / "monitoring" / TRIGGER_LEDGER


def _read_ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    try:
        entries = read_json(path)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); expected a list of retrain triggers") from exc
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "at" in e for e in entries):
        raise ValueError(f"{path}: expected a list of entries with `monitor_run_id` and `at`")
    return entries


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of the ledger between concurrent monitor runs (local lake only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def last_retrain_trigger(lake: Lake) -> datetime | None:
    """Time of the latest drift-triggered retraining recorded in the lake's ledger.

    Args:
        lake: the data lake; the ledger is ``<lake>/monitoring/retrain_triggers.json``.

    Returns:
        The latest ``at`` (UTC), or None when nothing was ever triggered.

    Raises:
        ValueError: the ledger is not a list of entries, or an ``at`` is not an ISO time (file named).
    """
    path = _ledger_path(lake)
    times = []
    for entry in _read_ledger(path):
        try:
            times.append(_to_utc(datetime.fromisoformat(entry["at"])))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: entry {entry.get('monitor_run_id')!r} has a bad `at`: {exc}") from exc
    return max(times) if times else None


def record_retrain_trigger(lake: Lake, monitor_run_id: str, at: datetime, drift: dict[str, Any]) -> None:
    """Append a drift-triggered retraining to the ledger, once per monitor run.

    A re-run of the same monitor run (a task retry) neither adds a second entry nor moves the time.

    Args:
        lake: the data lake.
        monitor_run_id: the monitor DAG run id that decided to retrain.
        at: when (the run's ``run_after``); naive is taken as UTC.
        drift: the dict returned by :func:`compute_drift` (columns, scores and report paths are kept).
    """
    path = _ledger_path(lake)
    with _locked(path):
        entries = _read_ledger(path)
        if any(e.get("monitor_run_id") == monitor_run_id for e in entries):
            log.info("retrain trigger of monitor run %s already recorded in %s", monitor_run_id, path)
            return
        drifted = list(drift.get("drifted_columns", []))
        scores = drift.get("scores", {})
        entries.append(
            {
                "monitor_run_id": monitor_run_id,
                "at": _to_utc(at).isoformat(),
                "drifted_columns": drifted,
                "scores": {c: scores.get(c) for c in drifted},
                "threshold": drift.get("threshold"),
                "report_html": drift.get("report_html"),
                "report_json": drift.get("report_json"),
            }
        )
        write_json_atomic(path, entries)
    log.info("recorded retrain trigger of monitor run %s at %s in %s", monitor_run_id, at, path)


def _parse_param(name: str, value: str) -> datetime:
    try:
        return _to_utc(datetime.fromisoformat(value.strip()))
    except ValueError as exc:
        raise ValueError(
            f"param {name}={value!r}: expected an ISO 8601 time such as 2026-01-01T00:00:00+00:00"
        ) from exc


def window_bounds(
    run_after: datetime, *, window_start: str | None, window_end: str | None, window_hours: float
) -> tuple[datetime, datetime]:
    """The served-time window ``[start, end)`` a monitor run judges.

    Explicit bounds (the run's Params) win. A missing end is ``run_after`` and a missing start is
    ``end - window_hours``, so without either the window is ``[run_after - window_hours, run_after)``.
    Empty strings count as missing (an untouched form field).

    Args:
        run_after: the DAG run's ``run_after``; naive is taken as UTC.
        window_start: ISO time from the ``window_start`` Param, or None/"".
        window_end: ISO time from the ``window_end`` Param, or None/"".
        window_hours: the window length when a bound is not given.

    Returns:
        ``(start, end)`` as tz-aware UTC datetimes.

    Raises:
        ValueError: a bound is not ISO 8601 (the param is named), ``window_hours`` is not positive, or
            start is not before end.
    """
    if not window_hours > 0:
        raise ValueError(f"window_hours={window_hours!r}: expected a positive number of hours")
    length = timedelta(hours=window_hours)
    start = _parse_param("window_start", window_start) if window_start else None
    end = _parse_param("window_end", window_end) if window_end else None
    if end is None:
        end = _to_utc(run_after)
    if start is None:
        start = end - length
    if start >= end:
        raise ValueError(
            f"params window_start={start.isoformat()} and window_end={end.isoformat()}: start must be before end"
        )
    return start, end
