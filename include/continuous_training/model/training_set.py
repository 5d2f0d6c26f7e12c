"""The training set: a snapshot of validated daily partitions, and the decision to train on it.

A training set is the list of ``(day, partition sha256)`` and the hash of that list, written to
``lake.training_set(sha256)``. The same partitions give the same hash, so "nothing new to learn" is a
comparison of two hashes. A train DAG run pins the snapshot it chose (:func:`snapshot_for_run`), so that
clearing the run after new partitions arrived trains on the same set again.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import TYPE_CHECKING, Any

from continuous_training.config import DatasetContract, TrainingPolicy
from continuous_training.data.partitions import read_validated
from continuous_training.lake import (
    Lake,
    data_file,
    manifest_file,
    read_json,
    sha256_json,
    write_json_atomic,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def select_training_days(lake: Lake, window_days: int, as_of: str | None = None) -> list[str]:
    """The newest ``window_days`` validated days, oldest first.

    Args:
        lake: the data lake.
        window_days: how many days to take (counted back from the newest one).
        as_of: if given (``YYYY-MM-DD``), only days up to and including it are considered.

    Returns:
        Days as ``YYYY-MM-DD`` strings, oldest first; empty if no partition is published.

    Raises:
        ValueError: ``window_days`` < 1 or ``as_of`` is not a date.
    """
    if window_days < 1:
        raise ValueError(f"window_days: expected a number of days >= 1, got {window_days}")
    days = lake.validated_days()
    if as_of is not None:
        try:
            limit = date.fromisoformat(str(as_of)).isoformat()
        except ValueError as exc:
            raise ValueError(f"as_of: expected YYYY-MM-DD, got {as_of!r}") from exc
        days = [d for d in days if d <= limit]
    return days[-window_days:]


def _partitions(lake: Lake, days: list[str]) -> list[dict[str, Any]]:
    """The published partition of each day, from its manifest (oldest first)."""
    if not days:
        raise ValueError("training set: no days given; a training set needs at least one partition")
    partitions = []
    for day in sorted(set(days)):
        manifest_path = manifest_file(lake.validated(day))
        if not manifest_path.exists():
            raise ValueError(
                f"day {day}: no validated partition at {manifest_path.parent} (no {manifest_path.name})"
            )
        manifest = read_json(manifest_path)
        if not manifest.get("sha256") or manifest.get("rows") is None:
            raise ValueError(f"{manifest_path}: expected the fields 'sha256' and 'rows'")
        partitions.append(
            {
                "day": day,
                "sha256": str(manifest["sha256"]),
                "rows": int(manifest["rows"]),
                "path": str(data_file(lake.validated(day))),
            }
        )
    return partitions


def training_set_sha256(lake: Lake, days: list[str]) -> str:
    """The hash :func:`build_training_set` would give these days, without writing the snapshot.

    Raises:
        ValueError: as :func:`build_training_set`.
    """
    return _sha256(_partitions(lake, days))


def _sha256(partitions: list[dict[str, Any]]) -> str:
    return sha256_json([[p["day"], p["sha256"]] for p in partitions])


def build_training_set(lake: Lake, days: list[str]) -> dict[str, Any]:
    """Snapshot validated partitions as a training set and write it to ``lake.training_set(sha256)``.

    The hash covers only ``(day, partition sha256)`` pairs, so it names the data, not the moment or the
    machine: the same partitions always give the same snapshot and the same file.

    Args:
        lake: the data lake.
        days: validated days to include (any order; stored oldest first).

    Returns:
        ``{"sha256", "days", "partitions": [{"day", "sha256", "rows", "path"}], "rows", "path"}``.

    Raises:
        ValueError: ``days`` is empty, or a day has no published partition.
    """
    partitions = _partitions(lake, days)
    sha = _sha256(partitions)
    snapshot = {
        "sha256": sha,
        "days": [p["day"] for p in partitions],
        "partitions": partitions,
        "rows": sum(p["rows"] for p in partitions),
        "path": str(lake.training_set(sha)),
    }
    path = lake.training_set(sha)
    if not path.exists() or read_json(path) != snapshot:
        write_json_atomic(path, snapshot)
    log.info(
        "Training set %s: %d day(s) %s..%s, %d rows",
        sha[:12],
        len(partitions),
        snapshot["days"][0],
        snapshot["days"][-1],
        snapshot["rows"],
    )
    return snapshot


#: The reason of runs scheduled by a new validated partition (the Asset), as opposed to a person's or
#: the monitor's request.
NEW_DATA_REASON = "new-data"


def training_decision(
    training_set: dict[str, Any],
    champion: dict[str, Any] | None,
    policy: TrainingPolicy,
    reason: str,
    force: bool,
) -> dict[str, Any]:
    """Decide whether a run trains a challenger (pure: no I/O).

    Args:
        training_set: what :func:`build_training_set` returned.
        champion: what :func:`continuous_training.model.registry.get_champion` returned (None: no champion).
        policy: the training policy (``min_partitions``, ``refresh_after_new_partitions``).
        reason: why the run happens: ``manual``, ``drift...``, ``new-data``, ...
        force: train whatever the rules say.

    Returns:
        ``{"train": bool, "why": str}``, ``why`` being a sentence for the task log.
    """
    days = sorted(training_set["days"])
    n = len(days)
    if force:
        return {"train": True, "why": f"forced (reason {reason!r}) on {n} partition(s)"}
    if champion is not None and champion.get("training_set_sha256") == training_set["sha256"]:
        return {
            "train": False,
            "why": f"the champion v{champion.get('version')} was trained on this very training set "
            f"({training_set['sha256'][:12]}): nothing new to learn",
        }
    if n < policy.min_partitions:
        return {
            "train": False,
            "why": f"only {n} validated partition(s); training.min_partitions is {policy.min_partitions}",
        }
    if champion is None:
        return {"train": True, "why": f"no champion yet: training the first model on {n} partition(s)"}
    if reason != NEW_DATA_REASON:
        # Only runs scheduled by a new partition wait for enough new data; a person or the monitor
        # asking for a model always gets one.
        return {"train": True, "why": f"reason {reason!r} always trains"}
    newest = champion.get("newest_day")
    if not newest:
        return {
            "train": True,
            "why": f"the champion v{champion.get('version')} does not record its training days",
        }
    new_days = [d for d in days if d > newest]
    needed = policy.refresh_after_new_partitions
    if len(new_days) >= needed:
        return {
            "train": True,
            "why": f"{len(new_days)} partition(s) newer than the champion's newest day {newest} "
            f"(training.refresh_after_new_partitions is {needed})",
        }
    return {
        "train": False,
        "why": f"only {len(new_days)} partition(s) newer than the champion's newest day {newest}; "
        f"training.refresh_after_new_partitions is {needed}",
    }


def read_days(
    lake: Lake, days: list[str], contract: DatasetContract, training_set: dict[str, Any] | None = None
) -> pd.DataFrame:
    """Read validated partitions, checking them against the snapshot they were listed in.

    Args:
        lake: the data lake.
        days: the days to read.
        contract: the dataset contract.
        training_set: if given, each day's current manifest must carry the sha256 the snapshot recorded
            (published partitions are immutable; a difference means someone rewrote the lake).

    Returns:
        The typed rows of those days, in day order.

    Raises:
        ValueError: a partition is missing or differs from the snapshot.
    """
    return read_validated(lake, list(days), contract, snapshot=training_set)


def split_days(days: list[str], holdout_days: int) -> tuple[list[str], list[str]]:
    """Split days into (train, holdout): the newest ``holdout_days`` are held out.

    Raises:
        ValueError: ``holdout_days`` < 1 or fewer than ``holdout_days + 1`` days.
    """
    days = sorted(days)
    if holdout_days < 1:
        raise ValueError(
            f"training.holdout_days: expected >= 1 (the gate needs a holdout), got {holdout_days}"
        )
    if len(days) < holdout_days + 1:
        raise ValueError(
            f"the training set has {len(days)} day(s); training.holdout_days={holdout_days} needs at least "
            f"{holdout_days + 1} (the newest {holdout_days} held out, the rest to train on)"
        )
    return days[:-holdout_days], days[-holdout_days:]


def snapshot_for_run(lake: Lake, dag_run_id: str, window_days: int) -> dict[str, Any] | None:
    """The training set of a train DAG run: the one it pinned, else a new snapshot, then pinned.

    The snapshot is pinned to the DAG run (``lake.pinned_training_set``): clearing the run after new
    partitions arrived trains on the same set again (and so reuses its MLflow run and model version)
    instead of a new one.

    Args:
        lake: the data lake.
        dag_run_id: the train DAG run.
        window_days: how many of the newest validated days a new snapshot takes.

    Returns:
        The snapshot (see :func:`build_training_set`), or None when no partition is published yet.
    """
    pinned = lake.pinned_training_set(dag_run_id)
    if pinned.exists():
        snapshot = read_json(pinned)
        log.info("Run %s already chose training set %s; reusing it", dag_run_id, snapshot["sha256"][:12])
        return snapshot
    days = select_training_days(lake, window_days)
    if not days:
        return None
    snapshot = build_training_set(lake, days)
    write_json_atomic(pinned, snapshot)
    return snapshot
