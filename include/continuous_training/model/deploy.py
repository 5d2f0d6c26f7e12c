"""Deployment: smoke test, alias flip, wait until the endpoint serves the new champion, or roll back.

The endpoint serves whatever the registry's ``champion`` alias points at: each of its worker processes
polls the alias every few seconds and swaps models on its own. Deploying is therefore "move the
alias, then watch ``GET /health`` until every answer names the new version for a while". If that does
not happen in time, the alias goes back to the previous champion (or is removed if there was none),
so the registry never claims a champion the endpoint does not serve.

Only a version the pipeline trained may become the champion: its signed provenance is checked before
anything else (:func:`check_provenance`), and the smoke test loads it the verified way (its files
against the signed manifest, skops only), so a refused version fails the deploy as
:class:`DeployRefused` before the alias moves.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from continuous_training.config import load_contract
from continuous_training.features import feature_frame
from continuous_training.lake import Lake
from continuous_training.lineage import (
    CHALLENGER,
    CHAMPION,
    TAG_APPROVAL,
    TAG_CHAMPION_MOVE,
    TAG_GATE_VERDICT,
    TAG_REASON,
    TAG_SHADOW_VERDICT,
    json_tag,
)
from continuous_training.model import ledger
from continuous_training.modelstore import alias_version, client, load_model_version, trusted_version
from continuous_training.provenance import ModelRefusedError
from continuous_training.settings import load_settings

log = logging.getLogger(__name__)

#: Every /health answer must name the new version for this long: the endpoint runs several workers,
#: each polling the alias on its own, and one answer shows only one of them.
STABLE_S = 3.0
_POLL_S = 0.25


class DeployError(RuntimeError):
    """A deployment step failed (smoke test, endpoint check)."""


class DeployRefused(DeployError):
    """The version's provenance, files or format were refused: it may not serve (nothing was moved)."""


class DeployRolledBack(DeployError):
    """The new champion was not served in time; the message says what the alias was restored to."""


def check_provenance(name: str, version: str | int) -> dict[str, Any]:
    """The version's signed provenance, verified (tags only, no download).

    Returns:
        The signed payload (run, manifest digest, gate verdict, signing time).

    Raises:
        DeployRefused: no valid signature of the pipeline's key, or a failed gate.
    """
    try:
        expected = trusted_version(client(), name, version)
    except ModelRefusedError as exc:
        raise DeployRefused(str(exc)) from exc
    return dict(expected.provenance or {})


def smoke_test(name: str, version: str | int, sample: pd.DataFrame) -> dict[str, Any]:
    """Load a model version and check it scores a sample sanely before it may serve.

    Args:
        name: registered model name.
        version: the version to test.
        sample: rows holding the contract's feature columns (e.g. the reference sample).

    Returns:
        ``{"rows", "mean_score"}``.

    Raises:
        DeployRefused: the version's provenance, files or format were refused (before any of it loaded).
        DeployError: naming the failing check (load, predict, shape, finiteness, range).
    """
    if sample.empty:
        raise DeployError(f"smoke test of {name} v{version}: the sample has no rows")
    try:
        model = load_model_version(name, version)
    except ModelRefusedError as exc:
        raise DeployRefused(f"smoke test of {name} v{version}: {exc}") from exc
    except Exception as exc:
        raise DeployError(f"smoke test of {name} v{version}: the model does not load: {exc}") from exc
    try:
        proba = np.asarray(model.predict_proba(feature_frame(sample, load_contract())))
    except Exception as exc:
        raise DeployError(f"smoke test of {name} v{version}: predict_proba failed: {exc}") from exc
    if proba.ndim != 2 or proba.shape[0] != len(sample) or proba.shape[1] < 2:
        raise DeployError(
            f"smoke test of {name} v{version}: predict_proba returned shape {proba.shape}, expected "
            f"({len(sample)}, 2)"
        )
    score = proba[:, 1].astype("float64")
    if not np.isfinite(score).all():
        raise DeployError(
            f"smoke test of {name} v{version}: {int((~np.isfinite(score)).sum())} of {len(score)} "
            "scores are not finite"
        )
    if (score < 0).any() or (score > 1).any():
        raise DeployError(
            f"smoke test of {name} v{version}: scores outside [0, 1] (min {score.min()}, max {score.max()})"
        )
    return {"rows": len(score), "mean_score": float(score.mean())}


def wait_served(name: str, version: str, url: str, timeout_s: float) -> float:
    """Seconds until ``url`` served ``version`` in every answer for :data:`STABLE_S`, from at least
    ``settings.endpoint_workers`` distinct worker processes.

    Raises:
        DeployError: not reached within ``timeout_s``; says what the endpoint last answered.
    """
    import httpx

    start = time.monotonic()
    deadline = start + timeout_s
    stable_since: float | None = None
    last = "no answer"
    workers = load_settings().endpoint_workers
    pids: set[Any] = set()
    # No keep-alive: uvicorn binds a connection to one worker, and every worker must be checked.
    with httpx.Client(timeout=5.0, limits=httpx.Limits(max_keepalive_connections=0)) as http:
        while True:
            now = time.monotonic()
            served = False
            try:
                response = http.get(f"{url.rstrip('/')}/health", timeout=max(0.5, min(5.0, deadline - now)))
                body = response.json()
                served = (
                    response.status_code == 200
                    and str(body.get("model_version")) == version
                    and body.get("model_name") == name
                )
                last = f"HTTP {response.status_code} {body}"
            except (httpx.HTTPError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            now = time.monotonic()
            if served:
                if stable_since is None:
                    stable_since, pids = now, set()
                pids.add(body.get("pid"))
                if now - stable_since >= STABLE_S and len(pids) >= workers:
                    return stable_since - start
            else:
                stable_since = None
            if now >= deadline:
                raise DeployError(f"last answer: {last}")
            time.sleep(_POLL_S)


def gate_record(tags: Mapping[str, str]) -> dict[str, Any]:
    """What a version's tags say of its checks, for the ledger: the gate verdict and metrics, the
    approval decision and the shadow verdict (each None when not recorded)."""
    return {
        "verdict": json_tag(tags, TAG_GATE_VERDICT),
        "approval": json_tag(tags, TAG_APPROVAL),
        "shadow": json_tag(tags, TAG_SHADOW_VERDICT),
    }


def move_champion(
    name: str,
    version: str | int,
    *,
    kind: str,
    actor: Mapping[str, Any],
    reason: str,
    endpoint_url: str | None = None,
    timeout_s: float = 120.0,
    detail: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Point ``champion`` at ``version``, wait until the endpoint serves it, restore the previous one if
    it does not, and append the move to the ledger (:mod:`~continuous_training.model.ledger`).

    Deploys, rollbacks and automatic rollbacks all move the alias here. Only a version with valid
    signed provenance moves (:func:`check_provenance`), whatever the kind.

    Idempotent: while it waits, the move is kept on the version's tags (``ct.champion_move``: kind,
    from where, when, by whom, confirmed or not). A call that finds the alias already at ``version``
    resumes that move: it waits again if the move was never confirmed (an earlier attempt was killed
    while waiting; the recorded previous champion stays the restore target), or only checks the
    endpoint if it was. Either way the ledger keeps one record per move.

    Args:
        name: registered model name.
        version: the version to make the champion.
        kind: the ledger kind: ``deploy``, ``rollback`` or ``auto_rollback``.
        actor: who or what moves it (``dag_id``, ``dag_run_id``, ``task_id``, ``user``).
        reason: why, in a sentence (recorded in the ledger).
        endpoint_url: the prediction endpoint (default: ``settings.endpoint_url``).
        timeout_s: how long to wait for the endpoint to serve the version.
        detail: figures for the ledger record (e.g. the watcher's breach).

    Returns:
        ``{"name", "version", "previous_version", "changed", "served_after_s", "ledger"}`` (the
        ledger record's key).

    Raises:
        DeployRefused: the version carries no valid signed provenance; the alias was not moved.
        DeployRolledBack: the endpoint did not serve the version in time; the alias was restored.
        DeployError: the version was already the confirmed champion and the endpoint does not serve it
            (nothing to roll back to), or the restore itself failed.
    """
    version = str(version)
    url = endpoint_url or load_settings().endpoint_url
    mlflow_client = client()
    current = alias_version(mlflow_client, name, CHAMPION)
    tags = mlflow_client.get_model_version(name, version).tags or {}
    move = json_tag(tags, TAG_CHAMPION_MOVE)

    if current == version and move is not None and move.get("confirmed"):
        try:
            served_after = wait_served(name, version, url, timeout_s)
        except DeployError as exc:
            raise DeployError(
                f"{name} v{version} is the champion but {url} does not serve it after {timeout_s:.0f}s ({exc})"
            ) from exc
        entry = _record(
            name, version, move, ledger.CONFIRMED, tags, {"served_after_s": round(served_after, 2)}
        )
        return _moved(name, version, move, False, served_after, entry)
    if current == version and move is None:
        # Moved outside the pipeline (nothing recorded): nothing to resume or restore, only checked.
        served_after = wait_served(name, version, url, timeout_s)
        return {
            "name": name,
            "version": version,
            "previous_version": None,
            "changed": False,
            "served_after_s": round(served_after, 2),
            "ledger": None,
        }
    if current == version:
        log.warning("%s v%s is the champion but was never confirmed served: resuming the wait", name, version)
        changed = False
    else:
        check_provenance(name, version)
        move = {
            "kind": kind,
            "from_version": current,
            "at": datetime.now(UTC).isoformat(),
            "actor": {k: actor.get(k) for k in ledger.ACTOR_FIELDS},
            "reason": reason,
            "detail": dict(detail or {}),
            "confirmed": False,
        }
        mlflow_client.set_model_version_tag(
            name, version, TAG_CHAMPION_MOVE, json.dumps(move, sort_keys=True)
        )
        mlflow_client.set_registered_model_alias(name, CHAMPION, version)
        log.info("Alias %s of %s moved from v%s to v%s (%s)", CHAMPION, name, current, version, kind)
        changed = True

    previous = move["from_version"]
    try:
        served_after = wait_served(name, version, url, timeout_s)
    except DeployError as exc:
        restored = _restore(mlflow_client, name, previous)
        _record(name, version, move, ledger.RESTORED, tags, {"error": str(exc), "restored": restored})
        raise DeployRolledBack(
            f"{name} v{version} not served by {url} after {timeout_s:.0f}s; {restored} ({exc})"
        ) from exc
    entry = _record(name, version, move, ledger.CONFIRMED, tags, {"served_after_s": round(served_after, 2)})
    mlflow_client.set_model_version_tag(
        name, version, TAG_CHAMPION_MOVE, json.dumps({**move, "confirmed": True}, sort_keys=True)
    )
    log.info("%s v%s served by %s after %.1fs", name, version, url, served_after)
    return _moved(name, version, move, changed, served_after, entry)


def promote_champion(
    name: str,
    version: str | int,
    *,
    endpoint_url: str | None = None,
    timeout_s: float = 120.0,
    moved_by: Mapping[str, Any] | None = None,
    why: str = "",
) -> dict[str, Any]:
    """Deploy: :func:`move_champion` of kind ``deploy``, for the reason the version's run recorded.

    Args:
        name: registered model name.
        version: the version to promote.
        endpoint_url: the prediction endpoint (default: ``settings.endpoint_url``).
        timeout_s: how long to wait for the endpoint to serve the version.
        moved_by: what moves the alias (``dag_id``, ``dag_run_id``, ``task_id``, ``user``).
        why: why, in a sentence (default: the reason the version's run recorded).

    Returns and raises as :func:`move_champion`.
    """
    if not why:
        why = (client().get_model_version(name, str(version)).tags or {}).get(TAG_REASON, "")
    return move_champion(
        name,
        version,
        kind=ledger.DEPLOY,
        actor=moved_by or {},
        reason=why,
        endpoint_url=endpoint_url,
        timeout_s=timeout_s,
    )


def record_blocked(
    name: str,
    version: str | int,
    *,
    actor: Mapping[str, Any],
    reason: str,
    at: str,
    detail: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Record that ``version`` was stopped before ``champion`` moved, and take its ``challenger`` alias.

    A failed shadow verdict and a person's rejection end a version's way to the champion here: the
    ledger gets a ``blocked`` record (from the champion that stayed, to the version refused), and the
    ``challenger`` alias is removed if it still names the version, so the endpoint stops scoring it.

    Idempotent: ``at`` is the decision's own time (kept on the version's tags), so a repeated call
    finds the same record and writes no second one.

    Args:
        name: registered model name.
        version: the version refused.
        actor: who or what refused it (``dag_id``, ``dag_run_id``, ``task_id``, ``user``).
        reason: why, in a sentence.
        at: when it was decided, ISO 8601 UTC.
        detail: the decision's figures (the shadow verdict, the approval).

    Returns:
        The ledger record as stored.
    """
    version = str(version)
    mlflow_client = client()
    tags = mlflow_client.get_model_version(name, version).tags or {}
    entry = ledger.record(
        Lake.from_settings(),
        name,
        kind=ledger.BLOCKED,
        from_version=alias_version(mlflow_client, name, CHAMPION),
        to_version=version,
        outcome=ledger.BLOCKED,
        actor=actor,
        reason=reason,
        at=at,
        gate=gate_record(tags),
        detail=detail,
    )
    if alias_version(mlflow_client, name, CHALLENGER) == version:
        mlflow_client.delete_registered_model_alias(name, CHALLENGER)
        log.info("Alias %s of %s removed from v%s: it was blocked", CHALLENGER, name, version)
    return entry


def _record(
    name: str,
    version: str,
    move: Mapping[str, Any],
    outcome: str,
    tags: Mapping[str, str],
    detail: Mapping[str, Any],
) -> dict[str, Any]:
    return ledger.record(
        Lake.from_settings(),
        name,
        kind=move["kind"],
        from_version=move["from_version"],
        to_version=version,
        outcome=outcome,
        actor=move.get("actor") or {},
        reason=move.get("reason") or "",
        at=move["at"],
        gate=gate_record(tags),
        detail={**(move.get("detail") or {}), **detail},
    )


def _moved(
    name: str,
    version: str,
    move: Mapping[str, Any],
    changed: bool,
    served_after: float,
    entry: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "previous_version": move["from_version"],
        "changed": changed,
        "served_after_s": round(served_after, 2),
        "ledger": entry["key"],
    }


def check_gated_against(name: str, version: str, gated_against: str | None, current: str | None) -> None:
    """Refuse to deploy a version over a champion its gate never compared it with.

    Clearing an old run's deploy must not replace a champion that came after that run's gate.

    Args:
        name: registered model name.
        version: the version to deploy.
        gated_against: the champion version the gate compared it with (None: there was none).
        current: the champion version now (None: there is none).

    Raises:
        DeployError: the champion changed since the gate.
    """
    if current in (version, None if gated_against is None else str(gated_against)):
        return
    raise DeployError(
        f"{name} v{version} was gated against champion v{gated_against}, but the champion is now "
        f"v{current}; not deploying. Trigger train again to evaluate against the current champion."
    )


def _restore(mlflow_client: Any, name: str, previous: str | None) -> str:
    """Point ``champion`` back at ``previous`` (or remove it); return a sentence saying which."""
    try:
        if previous is None:
            mlflow_client.delete_registered_model_alias(name, CHAMPION)
            sentence = "champion alias removed (there was no previous champion)"
        else:
            mlflow_client.set_registered_model_alias(name, CHAMPION, previous)
            sentence = f"champion restored to v{previous}"
    except Exception as exc:
        raise DeployError(
            f"rollback of {name} failed: could not restore champion to "
            f"{'nothing' if previous is None else 'v' + previous}: {exc}"
        ) from exc
    log.warning("Rollback of %s: %s", name, sentence)
    return sentence
