"""Whether drift should retrain the model: a pure decision, its record, and the cooldown ledger.

:func:`retrain_decision` is a predicate over a drift result, the policy and the champion's earlier
windows; :func:`decide_retrain` applies it for a monitor run and writes the decision record
(``lake.monitor_decision(run)``: triggered, waiting, cooldown, undecided, no new data, ...), which
later runs read for the N-of-M windows rule and the UI and mails show. A triggering decision is also
entered in the ledger (:func:`record_retrain_trigger`), so that later runs'
:func:`last_retrain_trigger` enforces ``drift.cooldown_hours``; once the triggered ``train`` run
ends, its outcome joins the record (:func:`record_outcome`). The ledger is ``lake.retrain_ledger()``,
one entry per monitor run: a re-run decides the same and triggers the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from continuous_training.config import DriftPolicy
from continuous_training.lake import Lake, read_json, to_utc, write_json_atomic

log = logging.getLogger(__name__)


def _fmt_scores(drift: dict[str, Any], columns: list[str]) -> str:
    predicted = drift.get("prediction_drift") or {}
    scores = {
        **drift.get("scores", {}),
        **({predicted["column"]: predicted.get("score")} if predicted else {}),
    }
    return ", ".join(f"{c}={scores[c]:.3f}" if scores.get(c) is not None else c for c in columns)


#: What a monitor run decided, one word each (the decision record's ``decision``):
#:
#: - ``undecided``: too few served rows in the window to judge it (``drift.min_rows``);
#: - ``no_drift``: no feature column reached the threshold;
#: - ``below_min_columns``: some did, fewer than ``drift.min_drifted_columns`` (the window did not drift);
#: - ``waiting``: the window drifted, but fewer than ``drift.windows_drifted`` of the last
#:   ``drift.windows_considered`` judged windows of the champion did;
#: - ``cooldown``: retraining is due, but a drift-triggered retraining ran within ``drift.cooldown_hours``;
#: - ``no_new_data``: retraining is due, but the training set would be the champion's own (no validated
#:   day arrived since it was trained), so a retraining would learn nothing;
#: - ``triggered``: the ``train`` DAG is triggered.
DECISIONS = ("undecided", "no_drift", "below_min_columns", "waiting", "cooldown", "no_new_data", "triggered")


def counted_drift(drift: dict[str, Any], policy: DriftPolicy) -> list[str]:
    """What drifted and counts towards retraining: the drifted feature columns, and ``score`` (the
    prediction) when it drifted and ``policy.prediction_drift_counts``."""
    counted = list(drift.get("drifted_columns") or [])
    if policy.prediction_drift_counts and (drift.get("prediction_drift") or {}).get("drifted"):
        counted.append(str(drift["prediction_drift"].get("column") or "score"))
    return counted


def retrain_decision(
    drift: dict[str, Any],
    policy: DriftPolicy,
    *,
    last_trigger_at: datetime | None,
    now: datetime,
    earlier_windows: list[dict[str, Any]] | None = None,
    new_data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Decide whether a drift result should trigger retraining (pure: no I/O, no clock).

    The checks, in order: a window with fewer than ``policy.min_rows`` served rows is not judged; it
    drifted when at least ``policy.min_drifted_columns`` feature columns drifted; retraining is due when
    at least ``policy.windows_drifted`` of the last ``policy.windows_considered`` judged windows drifted
    (this one and ``earlier_windows``); it is held by the cooldown (the previous drift-triggered
    retraining less than ``policy.cooldown_hours`` ago), then by ``new_data`` saying nothing new arrived.

    Args:
        drift: the dict returned by :func:`compute_drift` (or ``{"rows_current": n}`` for a window too
            small to be scored).
        policy: the drift policy.
        last_trigger_at: time of the last drift-triggered retraining, or None.
        now: the decision time (the run's ``run_after``); naive datetimes are taken as UTC.
        earlier_windows: the champion's earlier judged windows, newest first, each
            ``{"monitor_run_id", "drifted": bool}`` (only the first ``windows_considered - 1`` count).
        new_data: ``{"new": bool, "why": str}``: whether a retraining would see data the champion was
            not trained on; None when unknown (taken as new).

    Returns:
        ``{"retrain": bool, "decision": one of DECISIONS, "why": str, "drifted": bool | None,
        "windows": {"drifted", "considered", "required", "runs"}}``; ``why`` names the drifted columns
        and their scores, or says why not.
    """
    rows = drift.get("rows_current")
    windows = {"drifted": 0, "considered": 0, "required": policy.windows_drifted, "runs": []}

    def verdict(retrain: bool, decision: str, why: str, drifted: bool | None) -> dict[str, Any]:
        return {"retrain": retrain, "decision": decision, "why": why, "drifted": drifted, "windows": windows}

    if rows is not None and rows < policy.min_rows:
        why = f"only {rows} served rows in the window; drift.min_rows is {policy.min_rows}: not judged"
        return verdict(False, "undecided", why, None)
    drifted = counted_drift(drift, policy)
    threshold = drift.get("threshold", policy.threshold)
    window_drifted = len(drifted) >= policy.min_drifted_columns
    recent = [bool(w.get("drifted")) for w in (earlier_windows or [])][: policy.windows_considered - 1]
    runs = [w.get("monitor_run_id") for w in (earlier_windows or [])][: policy.windows_considered - 1]
    windows.update(
        drifted=int(window_drifted) + sum(recent),
        considered=1 + len(recent),
        runs=[r for r, d in zip(runs, recent, strict=True) if d],
    )
    if not drifted:
        scores = {c: s for c, s in drift.get("scores", {}).items() if s is not None}
        top = max(scores, key=scores.__getitem__) if scores else None
        highest = f"; highest {top}={scores[top]:.3f}" if top else ""
        predicted = drift.get("prediction_drift") or {}
        if predicted.get("drifted"):
            highest += (
                f"; the predictions drifted ({predicted['column']}={predicted['score']:.3f}), "
                "which drift.prediction_drift_counts leaves out"
            )
        return verdict(
            False, "no_drift", f"no drift: no feature column reached threshold {threshold}{highest}", False
        )
    described = f"{len(drifted)} column(s) drifted (>= {threshold}): {_fmt_scores(drift, drifted)}"
    if not window_drifted:
        why = f"{described}; below drift.min_drifted_columns={policy.min_drifted_columns}"
        return verdict(False, "below_min_columns", why, False)
    if windows["drifted"] < policy.windows_drifted:
        why = (
            f"{described}; {windows['drifted']} of the last {windows['considered']} judged window(s) "
            f"drifted, drift.windows_drifted is {policy.windows_drifted} of {policy.windows_considered}"
        )
        return verdict(False, "waiting", why, True)
    if policy.windows_considered > 1:
        described += (
            f"; {windows['drifted']} of the last {windows['considered']} judged windows drifted "
            f"(drift.windows_drifted {policy.windows_drifted})"
        )
    if last_trigger_at is not None:
        until = to_utc(last_trigger_at) + timedelta(hours=policy.cooldown_hours)
        if to_utc(now) < until:
            why = (
                f"{described}; but in cooldown until {until.isoformat()} "
                f"(last drift-triggered retraining {to_utc(last_trigger_at).isoformat()}, "
                f"cooldown {policy.cooldown_hours} h)"
            )
            return verdict(False, "cooldown", why, True)
    if new_data is not None and not new_data.get("new", True):
        return verdict(False, "no_new_data", f"{described}; but {new_data.get('why')}", True)
    return verdict(True, "triggered", described, True)


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
        lake: the data lake; the ledger is ``lake.retrain_ledger()``.

    Returns:
        The latest ``at`` (UTC), or None when nothing was ever triggered.

    Raises:
        ValueError: the ledger is not a list of entries, or an ``at`` is not an ISO time (file named).
    """
    path = lake.retrain_ledger()
    times = []
    for entry in _read_ledger(path):
        try:
            times.append(to_utc(datetime.fromisoformat(entry["at"])))
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
    path = lake.retrain_ledger()
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
                "at": to_utc(at).isoformat(),
                "drifted_columns": drifted,
                "scores": {c: scores.get(c) for c in drifted},
                "threshold": drift.get("threshold"),
                "report_html": drift.get("report_html"),
                "report_json": drift.get("report_json"),
            }
        )
        write_json_atomic(path, entries)
    log.info("recorded retrain trigger of monitor run %s at %s in %s", monitor_run_id, at, path)


#: The run id the monitor gives the ``train`` run it triggers: ``drift__<monitor run id>``.
MONITOR_TRAIN_RUN_PREFIX = "drift__"


def read_decision(lake: Lake, monitor_run_id: str) -> dict[str, Any] | None:
    """The decision record of a monitor run, or None if it decided nothing yet.

    Raises:
        ValueError: the record is not valid JSON or not a decision (file named).
    """
    return _read_record(lake.monitor_decision(monitor_run_id))


def _read_record(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        record = read_json(path)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); expected a monitor decision record") from exc
    if not isinstance(record, dict) or record.get("decision") not in DECISIONS:
        raise ValueError(f"{path}: expected a mapping whose `decision` is one of {list(DECISIONS)}")
    return record


def decision_records(lake: Lake) -> list[dict[str, Any]]:
    """Every monitor run's decision record, newest first (by the run's time)."""
    base = lake.monitor_decisions()
    if not base.is_dir():
        return []
    records = [r for path in base.glob("*.json") if (r := _read_record(path)) is not None]
    return sorted(records, key=lambda r: (r.get("at") or "", r.get("monitor_run_id") or ""), reverse=True)


def _earlier_windows(
    lake: Lake, monitor_run_id: str, model_version: Any, now: datetime
) -> list[dict[str, Any]]:
    """The champion's judged windows decided before ``now`` by other monitor runs, newest first."""
    at = to_utc(now).isoformat()
    return [
        r
        for r in decision_records(lake)
        if r.get("monitor_run_id") != monitor_run_id
        and r.get("drifted") is not None
        and str(r.get("model_version")) == str(model_version)
        and (r.get("at") or "") < at
    ]


def decide_retrain(
    lake: Lake,
    drift: dict[str, Any],
    policy: DriftPolicy,
    monitor_run_id: str,
    *,
    now: datetime | None = None,
    new_data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Decide a monitor run's retraining (:func:`retrain_decision`) and put it on the record.

    The record (``lake.monitor_decision(run)``) holds the decision, why, the window, the drifted
    columns, the N-of-M tally and, when it triggers, the conf of the ``train`` run; a triggering
    decision is also entered in the cooldown ledger. A run that already triggered (a re-run) gets the
    same record again whatever the cooldown says now; any other decision is taken afresh and replaces
    the record (the same inputs give the same decision).

    Args:
        lake: the data lake (decision records and the retrain ledger).
        drift: the dict returned by :func:`continuous_training.monitoring.drift.compute_drift` with the
            window's ``model_name``, ``model_version``, ``window_start``, ``window_end``; for a window
            too small to be scored, those and ``rows_current``.
        policy: the drift policy.
        monitor_run_id: the monitor DAG run deciding.
        now: the decision time, the run's ``run_after`` (default: now): re-running an old monitor run
            judges the cooldown and the earlier windows as they were.
        new_data: whether a retraining would see new data (see :func:`retrain_decision`).

    Returns:
        The decision record.
    """
    previous = read_decision(lake, monitor_run_id)
    if previous is not None and previous["decision"] == "triggered":
        log.info(
            "This run already decided to retrain (%s): same trigger again",
            lake.monitor_decision(monitor_run_id),
        )
        return previous
    now = to_utc(now or datetime.now(UTC))
    decision = retrain_decision(
        drift,
        policy,
        last_trigger_at=last_retrain_trigger(lake),
        now=now,
        earlier_windows=_earlier_windows(lake, monitor_run_id, drift.get("model_version"), now),
        new_data=new_data,
    )
    log.info("Retrain? %s (%s): %s", decision["retrain"], decision["decision"], decision["why"])
    drifted = counted_drift(drift, policy)
    record = {
        "monitor_run_id": monitor_run_id,
        "at": now.isoformat(),
        **decision,
        **{k: drift.get(k) for k in ("model_name", "model_version", "window_start", "window_end")},
        "rows": drift.get("rows_current"),
        "min_rows": policy.min_rows,
        "prediction_drift": drift.get("prediction_drift"),
        "drifted_columns": drifted,
        "threshold": drift.get("threshold", policy.threshold),
        "report_html": drift.get("report_html"),
        "new_data": new_data,
        "train_run_id": None,
        "conf": None,
    }
    if decision["retrain"]:
        record["train_run_id"] = MONITOR_TRAIN_RUN_PREFIX + monitor_run_id
        record["conf"] = {
            "reason": f"drift in {', '.join(drifted)}",
            "drift_report": drift.get("report_html"),
            "drifted_columns": drifted,
            "monitor_run_id": monitor_run_id,
        }
        record_retrain_trigger(lake, monitor_run_id, now, drift)
    write_json_atomic(lake.monitor_decision(monitor_run_id), record)
    return record


def record_outcome(lake: Lake, monitor_run_id: str, outcome: dict[str, Any]) -> dict[str, Any] | None:
    """Add the outcome of the retraining a monitor run triggered to its decision record.

    Args:
        lake: the data lake.
        monitor_run_id: the monitor run whose decision triggered the retraining.
        outcome: what the ``train`` run did (see :func:`continuous_training.adapter.steps.retrain_outcome`).

    Returns:
        The updated record, or None when the monitor run has no decision record (nothing is written).
    """
    path = lake.monitor_decision(monitor_run_id)
    with _locked(path):
        record = read_decision(lake, monitor_run_id)
        if record is None:
            log.warning(
                "monitor run %s has no decision record at %s: outcome not recorded", monitor_run_id, path
            )
            return None
        if record.get("outcome") != outcome:
            record["outcome"] = outcome
            write_json_atomic(path, record)
    return record


def admit_drift_run(
    lake: Lake, train_run_id: str, conf: dict[str, Any], policy: DriftPolicy, now: datetime | None = None
) -> dict[str, Any]:
    """Whether a drift-style ``train`` run may train: the cooldown holds whoever triggered it.

    The monitor records its decision in the ledger before it triggers, so its own run
    (``drift__<monitor run id>``) is admitted. A run with a drift report in its conf that someone
    triggered directly over the API (or the UI) is held to ``policy.cooldown_hours`` as the monitor
    would be; when admitted it is recorded in the ledger too, so the monitor's next decision counts it.
    A re-run of an admitted run is admitted again.

    Args:
        lake: the data lake (its retrain ledger).
        train_run_id: the ``train`` DAG run.
        conf: the run's conf (``reason``, ``drift_report``, ``drifted_columns``).
        policy: the drift policy.
        now: the decision time, the run's ``run_after`` (default: now).

    Returns:
        ``{"train": bool, "why": str}``.
    """
    path = lake.retrain_ledger()
    with _locked(path):
        entries = _read_ledger(path)
        monitor_run = train_run_id.removeprefix(MONITOR_TRAIN_RUN_PREFIX)
        if train_run_id.startswith(MONITOR_TRAIN_RUN_PREFIX) and any(
            e.get("monitor_run_id") == monitor_run for e in entries
        ):
            return {
                "train": True,
                "why": f"triggered by monitor run {monitor_run}, which judged the cooldown",
            }
        if any(e.get("train_run_id") == train_run_id for e in entries):
            return {"train": True, "why": "this run was admitted before (a re-run)"}
        now = to_utc(now or datetime.now(UTC))
        times = [to_utc(datetime.fromisoformat(e["at"])) for e in entries if e.get("at")]
        last = max(times) if times else None
        if last is not None and now < last + timedelta(hours=policy.cooldown_hours):
            until = last + timedelta(hours=policy.cooldown_hours)
            return {
                "train": False,
                "why": (
                    f"a drift-triggered retraining ran at {last.isoformat()}: in cooldown until "
                    f"{until.isoformat()} (drift.cooldown_hours {policy.cooldown_hours} h)"
                ),
            }
        entries.append(
            {
                "monitor_run_id": None,
                "train_run_id": train_run_id,
                "at": now.isoformat(),
                "drifted_columns": list(conf.get("drifted_columns") or []),
                "report_html": conf.get("drift_report"),
            }
        )
        write_json_atomic(path, entries)
    return {"train": True, "why": "no drift-triggered retraining within the cooldown; recorded in the ledger"}
