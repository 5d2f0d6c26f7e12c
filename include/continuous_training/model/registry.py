"""The MLflow model registry, written: registering challengers, their gate verdicts, the champion.

Conventions shared with the endpoint and the monitor (names in :mod:`continuous_training.lineage`,
reads in :mod:`continuous_training.modelstore`): the registered model is ``policy.model.name``
(``CT_MODEL_NAME`` overrides it); alias ``challenger`` marks the newest registered version and
``champion`` the version the endpoint serves. Every call talks to ``settings.mlflow_tracking_uri``.

Registration is where a model becomes trusted: the version's files are checked against the manifest its
training run recorded, and the version gets that manifest and its provenance (run, gate verdict, digest)
signed with the pipeline's key (:mod:`continuous_training.provenance`), which the endpoint and the
deploy task verify before the version may serve.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from continuous_training import provenance
from continuous_training.config import load_policy
from continuous_training.credentials import model_signing_key
from continuous_training.lineage import (
    CHALLENGER,
    CHAMPION,
    TAG_DAG_ID,
    TAG_DAG_RUN_ID,
    TAG_GATE_METRIC_VALUE,
    TAG_GATE_VERDICT,
    TAG_GIT_COMMIT,
    TAG_PROVENANCE,
    TAG_PROVENANCE_SIGNATURE,
    TAG_REASON,
    TAG_TRAINING_DAYS,
    TAG_TRAINING_SET,
    UNKNOWN,
    run_days,
)
from continuous_training.model.train import logged_model_uri
from continuous_training.modelstore import (
    ExpectedModel,
    alias_version,
    check_expected,
    client,
    logged_model_manifest,
)
from continuous_training.settings import load_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

_READY_TIMEOUT_S = 300.0


def model_name(name: str | None = None) -> str:
    """``name`` if given, else the policy's model name (``CT_MODEL_NAME`` overrides the YAML)."""
    return name or load_policy().model.name


def get_champion(name: str | None = None) -> dict[str, Any] | None:
    """The version the ``champion`` alias points at, with what it was trained on.

    Args:
        name: registered model name (default: :func:`model_name`).

    Returns:
        ``{"version", "run_id", "training_set_sha256", "days", "newest_day"}`` or None if there is no
        champion. ``days`` are the training set's days (holdout included) from the run's tags.
    """
    from mlflow.exceptions import MlflowException

    name = model_name(name)
    mlflow_client = client()
    version = alias_version(mlflow_client, name, CHAMPION)
    if version is None:
        return None
    mv = mlflow_client.get_model_version(name, version)
    sha = (mv.tags or {}).get(TAG_TRAINING_SET)
    days: list[str] = []
    if mv.run_id:
        try:
            run = mlflow_client.get_run(mv.run_id)
            days = run_days(run, TAG_TRAINING_DAYS)
            sha = sha or run.data.tags.get(TAG_TRAINING_SET)
        except MlflowException as exc:
            log.warning("Champion %s v%s: its run %s cannot be read (%s)", name, version, mv.run_id, exc)
    return {
        "version": version,
        "run_id": mv.run_id,
        "training_set_sha256": sha,
        "days": days,
        "newest_day": max(days) if days else None,
    }


def _wait_ready(mlflow_client: MlflowClient, name: str, version: str) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while True:
        mv = mlflow_client.get_model_version(name, version)
        if mv.status == "READY":
            return
        if mv.status == "FAILED_REGISTRATION":
            raise RuntimeError(f"model {name} v{version} failed to register: {mv.status_message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"model {name} v{version} still {mv.status} after {_READY_TIMEOUT_S:.0f}s")
        time.sleep(1.0)


def _one_version_per_run(mlflow_client: Any, name: str, run_id: str, version: str) -> str:
    """Keep the lowest version made from ``run_id``; delete the others, made by a retried request.

    MLflow's client retries a POST whose answer timed out, and the server may have created the version
    the first time: under load two versions of one run appeared. A duplicate that carries an alias is
    kept (someone chose it); the others were created by this call seconds ago and carry nothing yet.
    """
    versions = mlflow_client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if len(versions) <= 1:
        return version
    keep = str(min(int(mv.version) for mv in versions))
    for mv in versions:
        if str(mv.version) != keep and not getattr(mv, "aliases", None):
            log.warning(
                "Run %s got a second version %s v%s (a retried request): deleting it",
                run_id,
                name,
                mv.version,
            )
            mlflow_client.delete_model_version(name, str(mv.version))
    return keep


def register_challenger(
    run_id: str, *, verdict: dict[str, Any], lineage: dict[str, str], name: str | None = None
) -> dict[str, Any]:
    """Register the run's model as a version of ``name`` and point the ``challenger`` alias at it.

    Before any tag is set, the version's files are downloaded and checked against the manifest the
    run's training recorded (same files, same SHA-256s, a skops model): the version then carries that
    manifest and its signed provenance (:func:`continuous_training.provenance.version_tags`).

    Idempotent: if a version of ``name`` already comes from ``run_id``, it is reused (tags and alias
    are set again, to the same values; a valid signature of the same claims is kept as it is).

    Args:
        run_id: the challenger's MLflow run.
        verdict: the gate verdict (:func:`continuous_training.model.evaluate.gate_verdict`), stored as a tag.
        lineage: ``{"dag_id", "dag_run_id", "git_commit"}`` of the registering DAG run.
        name: registered model name (default: :func:`model_name`).

    Returns:
        ``{"name", "version", "run_id", "created"}``; ``created`` is False when the version existed.

    Raises:
        continuous_training.provenance.ModelRefusedError: the run records no manifest, or the version's
            files are not the ones it records; the version is left untagged and unsigned.
    """
    import mlflow

    name = model_name(name)
    mlflow_client = client()
    existing = mlflow_client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if existing:
        version = str(min(int(mv.version) for mv in existing))
        created = False
        log.info("Run %s is already registered as %s v%s: reusing it", run_id, name, version)
    else:
        mv = mlflow.register_model(
            logged_model_uri(mlflow_client, run_id), name, await_registration_for=int(_READY_TIMEOUT_S)
        )
        version = _one_version_per_run(mlflow_client, name, run_id, str(mv.version))
        created = True
        log.info("Registered run %s as %s v%s", run_id, name, version)
    _wait_ready(mlflow_client, name, version)

    # Lineage is that of the run which produced the model: a later call (another DAG run registering
    # the same MLflow run) must not rewrite where the version came from.
    run_tags = mlflow_client.get_run(run_id).data.tags
    what = f"model {name} version {version}"
    manifest = provenance.manifest_from_tags(run_tags, f"{what} (run {run_id})")
    check_expected(
        mlflow_client,
        ExpectedModel(what, mlflow_client.get_model_version_download_uri(name, version), manifest),
    )
    tags = {
        TAG_TRAINING_SET: run_tags.get(TAG_TRAINING_SET, ""),
        TAG_DAG_ID: str(run_tags.get(TAG_DAG_ID) or lineage.get("dag_id") or UNKNOWN),
        TAG_DAG_RUN_ID: str(run_tags.get(TAG_DAG_RUN_ID) or lineage.get("dag_run_id") or UNKNOWN),
        TAG_GIT_COMMIT: str(run_tags.get(TAG_GIT_COMMIT) or lineage.get("git_commit") or UNKNOWN),
        TAG_REASON: run_tags.get(TAG_REASON, ""),
        TAG_GATE_VERDICT: json.dumps(verdict, sort_keys=True, default=str),
        TAG_GATE_METRIC_VALUE: str(verdict.get("challenger_value")),
    }
    current = mlflow_client.get_model_version(name, version).tags or {}
    tags.update(
        _trust_tags(current, name=name, version=version, run_id=run_id, manifest=manifest, verdict=verdict)
    )
    for key, value in tags.items():
        if current.get(key) != value:
            mlflow_client.set_model_version_tag(name, version, key, value)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, version)
    return {"name": name, "version": version, "run_id": run_id, "created": created}


def _trust_tags(
    current: dict[str, str],
    *,
    name: str,
    version: str,
    run_id: str,
    manifest: dict[str, str],
    verdict: dict[str, Any],
) -> dict[str, str]:
    """The manifest and signed-provenance tags of a version; the current ones if they already sign the
    same claims (a re-run changes no tag)."""
    key = model_signing_key(load_settings())
    claims = provenance.provenance_claims(
        name=name,
        version=version,
        run_id=run_id,
        manifest_sha256=provenance.manifest_sha256(manifest),
        verdict=verdict,
        public_key=key.public_key(),
    )
    signed = {k: current[k] for k in (TAG_PROVENANCE, TAG_PROVENANCE_SIGNATURE) if k in current}
    if not provenance.carries_provenance(signed, key.public_key(), claims):
        signed = provenance.sign_provenance(claims, key)
        log.info(
            "Signed the provenance of %s v%s (run %s, verdict passed=%s)",
            name,
            version,
            run_id,
            claims["verdict"]["passed"],
        )
    return {**provenance.manifest_tags(manifest), **signed}


def sign_version(name: str, version: str | int, *, verdict: dict[str, Any]) -> dict[str, str]:
    """Sign a version registered outside :func:`register_challenger`, hashing its files as stored now.

    For a version whose run recorded no manifest (registered by hand or by a test, or before manifests
    existed): the caller vouches for the files the store holds now, which must still pass the format
    rules (a skops scikit-learn model). The train DAG never calls this; it signs what it trained.

    Args:
        name, version: the registered version.
        verdict: the gate verdict to sign (``passed``, ``metric``, ``challenger_value``, ``forced``).

    Returns:
        The trust tags set on the version.

    Raises:
        continuous_training.provenance.ModelRefusedError: the files are not a model this project loads.
    """
    version = str(version)
    mlflow_client = client()
    mv = mlflow_client.get_model_version(name, version)
    manifest = logged_model_manifest(
        mlflow_client,
        mlflow_client.get_model_version_download_uri(name, version),
        f"model {name} version {version}",
    )
    tags = _trust_tags(
        mv.tags or {}, name=name, version=version, run_id=mv.run_id, manifest=manifest, verdict=verdict
    )
    for key, value in tags.items():
        if (mv.tags or {}).get(key) != value:
            mlflow_client.set_model_version_tag(name, version, key, value)
    return tags


def record_gate_verdict(run_id: str, verdict: dict[str, Any]) -> None:
    """Record the gate's verdict on the challenger's MLflow run (tag ``ct.gate_verdict``)."""
    client().set_tag(run_id, TAG_GATE_VERDICT, json.dumps(verdict, default=str))


def recorded_verdict(run_id: str) -> dict[str, Any]:
    """The gate verdict :func:`record_gate_verdict` stored on a run.

    Raises:
        RuntimeError: the run has no verdict (the gate did not run on it).
    """
    raw = client().get_run(run_id).data.tags.get(TAG_GATE_VERDICT)
    if not raw:
        raise RuntimeError(f"MLflow run {run_id} has no {TAG_GATE_VERDICT} tag: run the `gate` task first")
    return json.loads(raw)


def register_passed(run_id: str, lineage: dict[str, str]) -> dict[str, Any]:
    """Register a run whose recorded verdict passed the gate (at most one version per run).

    Raises:
        RuntimeError: the run has no verdict, or it did not pass.
    """
    verdict = recorded_verdict(run_id)
    if not verdict.get("passed"):
        raise RuntimeError(f"MLflow run {run_id} did not pass the gate; refusing to register it")
    return register_challenger(run_id, verdict=verdict, lineage=lineage)
