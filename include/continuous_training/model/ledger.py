"""The deployment ledger: one record per move of the ``champion`` alias, appended, never rewritten.

MLflow's registry is the source of truth for where ``champion`` points now; the ledger is the history
of how it got there. Every move the pipeline makes appends one record, written once the move's outcome
is known:

* ``deploy``: the train DAG promoted a version that passed its gate (and its approval and shadow
  verdict, when the policy asks for them);
* ``rollback``: a person returned the champion to an earlier version (the ``rollback`` DAG);
* ``auto_rollback``: the watcher found the new champion breaching its limits on live traffic and
  returned to the previous one (the same code path as ``rollback``);
* ``blocked``: a registered version was stopped before the alias moved (its shadow verdict failed, or
  a person rejected it); ``from_version`` is the champion that stayed.

A record says when, from which version to which, why, who or what (DAG, run, task, and the user who
triggered or approved it), the gate's verdict and metrics (plus the approval and shadow verdicts), and
the outcome: ``confirmed`` (every endpoint worker served the new version), ``restored`` (it was not
served in time and the alias went back to ``from_version``) or ``blocked``.

Records live in the lake under ``registry/<model>/ledger/`` (:meth:`~continuous_training.lake.Lake.ledger`),
one JSON file each, created with an exclusive link so that no record is ever replaced, even by two
writers at once. A record's key names the move (DAG run, kind, target version and the move's own
time, which the move keeps on the target version's tags while it waits), so a retried or cleared task
that finds the move already made writes no second record, while a retry that really moves the alias
again writes its own.

A move made outside the pipeline (someone setting the alias in MLflow's UI) leaves no record:
:func:`champion_since` says so instead of guessing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from continuous_training.lake import Lake, read_json, safe_name, write_json_once

DEPLOY = "deploy"
ROLLBACK = "rollback"
AUTO_ROLLBACK = "auto_rollback"
BLOCKED = "blocked"
KINDS = (DEPLOY, ROLLBACK, AUTO_ROLLBACK, BLOCKED)

CONFIRMED = "confirmed"
RESTORED = "restored"
OUTCOMES = (CONFIRMED, RESTORED, BLOCKED)

#: The actor fields a record keeps (each may be None).
ACTOR_FIELDS = ("dag_id", "dag_run_id", "task_id", "user")


def move_key(kind: str, to_version: str | None, at: str, actor: Mapping[str, Any]) -> str:
    """The key (file name without ``.json``) of one move: its run, kind, target version and time."""
    run = str(actor.get("dag_run_id") or "outside-a-dag-run")
    stamp = at.replace(":", "").replace("-", "")
    return safe_name(f"{stamp}__{kind}__v{to_version or 'none'}__{run}")


def record(
    lake: Lake,
    name: str,
    *,
    kind: str,
    from_version: str | None,
    to_version: str | None,
    outcome: str,
    actor: Mapping[str, Any],
    reason: str,
    at: str | None = None,
    gate: Mapping[str, Any] | None = None,
    detail: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Append one record to ``name``'s ledger (once per move: see the module docstring).

    Args:
        lake: the lake holding the ledger.
        name: registered model name.
        kind: one of :data:`KINDS`.
        from_version: where the alias pointed before the move (None: nowhere).
        to_version: where the move sent it (None: the alias was removed).
        outcome: one of :data:`OUTCOMES`.
        actor: who or what moved it: ``dag_id``, ``dag_run_id``, ``task_id``, ``user``.
        reason: a sentence: the run's reason, the person's, or the breach found.
        at: when the alias moved, ISO 8601 UTC (default now); part of the record's key.
        gate: the gate verdict and metrics, the approval and the shadow verdict, as known.
        detail: the outcome's figures (seconds until served, the error, the watcher's figures).

    Returns:
        The record as stored: the earlier one if this move was already recorded.

    Raises:
        ValueError: ``kind`` or ``outcome`` is not a known one.
    """
    if kind not in KINDS:
        raise ValueError(f"ledger kind: expected one of {list(KINDS)}, found {kind!r}")
    if outcome not in OUTCOMES:
        raise ValueError(f"ledger outcome: expected one of {list(OUTCOMES)}, found {outcome!r}")
    at = at or datetime.now(UTC).isoformat()
    key = move_key(kind, to_version, at, actor)
    entry = {
        "key": key,
        "model": name,
        "kind": kind,
        "from_version": None if from_version is None else str(from_version),
        "to_version": None if to_version is None else str(to_version),
        "at": at,
        "recorded_at": datetime.now(UTC).isoformat(),
        "outcome": outcome,
        "reason": reason,
        "actor": {field: _text(actor.get(field)) for field in ACTOR_FIELDS},
        "gate": dict(gate or {}),
        "detail": dict(detail or {}),
    }
    path = lake.ledger(name) / f"{key}.json"
    if not write_json_once(path, entry):
        return read_json(path)
    return entry


def read_ledger(lake: Lake, name: str) -> list[dict[str, Any]]:
    """Every record of ``name``'s ledger, oldest move first."""
    folder = lake.ledger(name)
    if not folder.is_dir():
        return []
    entries = [read_json(path) for path in folder.glob("*.json") if not path.name.startswith(".")]
    return sorted(entries, key=lambda entry: (entry["at"], entry["recorded_at"]))


def moves(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records that left the alias somewhere new (confirmed moves), oldest first."""
    return [entry for entry in entries if entry["outcome"] == CONFIRMED]


def champion_since(entries: list[dict[str, Any]], version: str | None) -> dict[str, Any] | None:
    """The record that made ``version`` the champion: the newest confirmed move, if it points there.

    None when the newest confirmed move points elsewhere (the alias was moved outside the pipeline)
    or nothing was recorded.
    """
    confirmed = moves(entries)
    if not confirmed or version is None:
        return None
    last = confirmed[-1]
    return last if last["to_version"] == str(version) else None


def previous_champion(entries: list[dict[str, Any]], current: str | None) -> str | None:
    """The version the champion was before ``current`` became it (the rollback DAG's default).

    Returns:
        ``from_version`` of the move that made ``current`` the champion; None if that move is not in
        the ledger or there was no champion before it.
    """
    since = champion_since(entries, current)
    return since["from_version"] if since else None


def failed_live_checks(entries: list[dict[str, Any]], version: str) -> list[dict[str, Any]]:
    """The records that judged ``version`` unfit on live traffic: blocked by its shadow verdict or a
    person, or rolled back automatically by the watcher."""
    version = str(version)
    return [
        entry
        for entry in entries
        if (entry["kind"] == BLOCKED and entry["to_version"] == version)
        or (entry["kind"] == AUTO_ROLLBACK and entry["from_version"] == version)
    ]


def _text(value: Any) -> str | None:
    return None if value in (None, "") else str(value)
