"""Whether drift should retrain the model: a pure decision, and the ledger that enforces the cooldown.

:func:`retrain_decision` is a predicate over a drift result and the policy; :func:`retrain_conf` applies
it for a monitor run and, when it says retrain, records the trigger (:func:`record_retrain_trigger`) so
that later runs' :func:`last_retrain_trigger` enforces ``drift.cooldown_hours``. The ledger is
``lake.retrain_ledger()``, one entry per monitor run: a re-run decides the same and triggers the same.
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
        until = to_utc(last_trigger_at) + timedelta(hours=policy.cooldown_hours)
        if to_utc(now) < until:
            return {
                "retrain": False,
                "why": (
                    f"{described}; but in cooldown until {until.isoformat()} "
                    f"(last drift-triggered retraining {to_utc(last_trigger_at).isoformat()}, "
                    f"cooldown {policy.cooldown_hours} h)"
                ),
            }
    return {"retrain": True, "why": described}


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


def retrain_conf(
    lake: Lake, drift: dict[str, Any], policy: DriftPolicy, monitor_run_id: str, now: datetime | None = None
) -> dict[str, Any] | None:
    """The conf of the train run a monitor run triggers, if retraining is due (policy + cooldown).

    A monitor run that already decided to retrain (a re-run) gets the same conf again, whatever the
    cooldown says now.

    Args:
        lake: the data lake (its retrain ledger).
        drift: the dict returned by :func:`continuous_training.monitoring.drift.compute_drift`.
        policy: the drift policy.
        monitor_run_id: the monitor DAG run deciding.
        now: the decision time, the run's ``run_after`` (default: now): re-running an old monitor run
            judges the cooldown as it was.

    Returns:
        ``{"reason", "drift_report", "drifted_columns"}``, or None when no retraining is due.
    """
    conf = {
        "reason": f"drift in {', '.join(drift['drifted_columns'])}",
        "drift_report": drift["report_html"],
        "drifted_columns": list(drift["drifted_columns"]),
    }
    ledger = lake.retrain_ledger()
    if any(e.get("monitor_run_id") == monitor_run_id for e in _read_ledger(ledger)):
        log.info("This run already decided to retrain (ledger %s): same trigger again", ledger)
        return conf
    now = now or datetime.now(UTC)
    decision = retrain_decision(drift, policy, last_trigger_at=last_retrain_trigger(lake), now=now)
    log.info("Retrain? %s: %s", decision["retrain"], decision["why"])
    if not decision["retrain"]:
        return None
    record_retrain_trigger(lake, monitor_run_id, now, drift)
    return conf


#: The run id the monitor gives the ``train`` run it triggers: ``drift__<monitor run id>``.
MONITOR_TRAIN_RUN_PREFIX = "drift__"


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
