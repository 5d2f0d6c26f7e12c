"""Returning the champion to an earlier version: by a person (the ``rollback`` DAG) or by the watcher.

Both go through the same three steps, each safe to repeat:

1. :func:`choose_target`: the version asked for, or by default the champion before the current one
   (from the deployment ledger). A version that failed a live check (its shadow verdict, a person's
   rejection, or the watcher rolling it back) is refused unless forced.
2. :func:`check_target`: its signed provenance and files (a version the pipeline did not sign never
   serves, forced or not), then a smoke test on its own reference sample.
3. :func:`~continuous_training.model.deploy.move_champion` of kind ``rollback`` or ``auto_rollback``:
   the alias moves, every endpoint worker must serve the version, the ledger gets its record; if the
   endpoint does not serve it, the alias goes back to the version it left.
"""

from __future__ import annotations

import logging
from typing import Any

from continuous_training.lake import Lake
from continuous_training.lineage import CHAMPION, TAG_APPROVAL, TAG_SHADOW_VERDICT, json_tag
from continuous_training.model import ledger
from continuous_training.model.deploy import DeployError, check_provenance, smoke_test
from continuous_training.modelstore import alias_version, client, load_reference_sample

log = logging.getLogger(__name__)

#: Rows of the target's reference sample its smoke test scores.
SMOKE_ROWS = 200


class RollbackRefused(DeployError):
    """The rollback was refused before the alias moved (the message says why and what would allow it)."""


def failed_checks(lake: Lake, name: str, version: str) -> list[str]:
    """Why ``version`` is not fit to serve by the live checks recorded about it (empty: it passed them).

    Reads the version's approval and shadow verdict tags and the ledger (blocked or rolled back
    automatically).
    """
    version = str(version)
    tags = client().get_model_version(name, version).tags or {}
    found = []
    approval = json_tag(tags, TAG_APPROVAL)
    if approval and approval.get("decision") == "rejected":
        found.append(f"its approval was rejected ({approval.get('by')}, {approval.get('at')})")
    shadow = json_tag(tags, TAG_SHADOW_VERDICT)
    if shadow and shadow.get("passed") is False:
        found.append(f"its shadow verdict failed: {'; '.join(shadow.get('reasons') or [])}")
    named = bool(found)  # a blocked record repeats the shadow verdict or the rejection named above
    for entry in ledger.failed_live_checks(ledger.read_ledger(lake, name), version):
        if entry["kind"] == ledger.AUTO_ROLLBACK:
            found.append(f"the watcher rolled it back at {entry['at']}: {entry['reason']}")
        elif not named:
            found.append(f"its promotion was blocked at {entry['at']}: {entry['reason']}")
    return found


def choose_target(
    lake: Lake, name: str, requested: str | int | None, *, force: bool = False
) -> dict[str, Any]:
    """The version to return to, checked against the ledger and the version's recorded verdicts.

    Args:
        lake: the lake holding the ledger.
        name: registered model name.
        requested: the version asked for; None: the champion before the current one.
        force: return to a version that failed a live check anyway.

    Returns:
        ``{"name", "version", "from_version", "noop" (already the champion), "failed_checks",
        "forced"}``.

    Raises:
        RollbackRefused: no version given and the ledger names no previous champion; the version does
            not exist; or it failed a live check and ``force`` is off.
    """
    from mlflow.exceptions import MlflowException

    mlflow_client = client()
    current = alias_version(mlflow_client, name, CHAMPION)
    if requested in (None, ""):
        target = ledger.previous_champion(ledger.read_ledger(lake, name), current)
        if target is None:
            raise RollbackRefused(
                f"no version to return to: the deployment ledger of {name} records no champion before "
                f"{'v' + current if current else 'none'}; give the version in the form"
            )
    else:
        target = str(requested)
    try:
        mlflow_client.get_model_version(name, target)
    except MlflowException as exc:
        raise RollbackRefused(f"{name} has no version {target}: {exc.message}") from exc
    if target == current:
        log.info("%s v%s is already the champion: nothing to roll back", name, target)
        return {
            "name": name,
            "version": target,
            "from_version": current,
            "noop": True,
            "failed_checks": [],
            "forced": False,
        }
    failed = failed_checks(lake, name, target)
    if failed and not force:
        raise RollbackRefused(
            f"{name} v{target} did not pass every gate: {'; '.join(failed)}. Trigger the rollback again with "
            "Force on to return to it anyway"
        )
    return {
        "name": name,
        "version": target,
        "from_version": current,
        "noop": False,
        "failed_checks": failed,
        "forced": bool(failed),
    }


def check_target(name: str, version: str | int) -> dict[str, Any]:
    """Verify the version's signed provenance and files and smoke-test it on its reference sample.

    Returns:
        ``{"provenance": the signed payload, "smoke_test": {"rows", "mean_score"}}``.

    Raises:
        continuous_training.model.deploy.DeployRefused: not signed by the pipeline, or its files differ.
        DeployError: the smoke test failed.
    """
    provenance = check_provenance(name, version)
    sample = load_reference_sample(name, version).head(SMOKE_ROWS)
    return {"provenance": provenance, "smoke_test": smoke_test(name, version, sample)}
