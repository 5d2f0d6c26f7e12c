"""The champion alias's history: one record per move, kept in the lake.

MLflow keeps only where an alias points now. Every move the pipeline makes (a deploy promoting a
version, a rollback restoring the one before) is recorded as one JSON file under
``registry/<model>/champion_moves/`` (:meth:`~continuous_training.lake.Lake.champion_moves`): when,
from which version to which, what moved it (DAG, run, task) and why. The file name is the move's key
(the DAG run, the kind of move and the version moved to), and an existing record is never replaced,
so a retried or cleared task records its move once, with the time it first happened.

A move made outside the pipeline (someone setting the alias in MLflow's UI) leaves no record here;
:func:`champion_since` says so instead of guessing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from continuous_training.lake import Lake, read_json, safe_name, write_json_atomic

PROMOTED = "promoted"
ROLLED_BACK = "rolled_back"
KINDS = (PROMOTED, ROLLED_BACK)


def record_move(
    lake: Lake,
    name: str,
    *,
    kind: str,
    from_version: str | None,
    to_version: str | None,
    by: Mapping[str, str],
    why: str,
    at: datetime | None = None,
) -> dict[str, Any]:
    """Record one move of the ``champion`` alias (at most once per DAG run, kind and target version).

    Args:
        lake: the lake holding the history.
        name: registered model name.
        kind: :data:`PROMOTED` or :data:`ROLLED_BACK`.
        from_version: where the alias pointed before (None: nowhere).
        to_version: where it points now (None: removed).
        by: what moved it: ``dag_id``, ``dag_run_id`` and ``task_id`` where known.
        why: a sentence (the run's reason, or why the deploy was rolled back).
        at: when (default: now, UTC).

    Returns:
        The record as stored (the earlier one if this move was already recorded).

    Raises:
        ValueError: ``kind`` is not one of :data:`KINDS`.
    """
    if kind not in KINDS:
        raise ValueError(f"champion move kind: expected one of {list(KINDS)}, found {kind!r}")
    run = str(by.get("dag_run_id") or "outside-a-dag-run")
    path = lake.champion_moves(name) / f"{safe_name(run)}__{kind}__v{to_version or 'none'}.json"
    if path.exists():
        return read_json(path)
    record = {
        "model": name,
        "kind": kind,
        "from_version": None if from_version is None else str(from_version),
        "to_version": None if to_version is None else str(to_version),
        "at": (at or datetime.now(UTC)).isoformat(),
        "dag_id": by.get("dag_id"),
        "dag_run_id": by.get("dag_run_id"),
        "task_id": by.get("task_id"),
        "why": why,
    }
    write_json_atomic(path, record)
    return record


def champion_moves(lake: Lake, name: str) -> list[dict[str, Any]]:
    """Every recorded move of ``name``'s champion alias, oldest first."""
    folder = lake.champion_moves(name)
    if not folder.is_dir():
        return []
    moves = [read_json(path) for path in folder.glob("*.json") if not path.name.startswith(".")]
    return sorted(moves, key=lambda move: move["at"])


def champion_since(moves: list[dict[str, Any]], version: str | None) -> dict[str, Any] | None:
    """The move that made ``version`` the champion: the newest move, if it points at ``version``.

    None when the newest recorded move points elsewhere (the alias was moved outside the pipeline)
    or nothing was recorded.
    """
    if not moves or version is None:
        return None
    last = moves[-1]
    return last if last["to_version"] == str(version) else None
