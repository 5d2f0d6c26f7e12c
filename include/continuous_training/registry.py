"""The MLflow model registry: the champion, registration of challengers, loading versions.

Conventions shared with the endpoint and the monitor: the registered model is ``policy.model.name``
(``CT_MODEL_NAME`` overrides it); alias ``challenger`` marks the newest registered version and
``champion`` the version the endpoint serves. Every call talks to ``settings.mlflow_tracking_uri``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from continuous_training.config import load_policy
from continuous_training.settings import load_settings
from continuous_training.train import REFERENCE_ARTIFACT, TAG_TRAINING_DAYS, TAG_TRAINING_SET, run_days

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from sklearn.pipeline import Pipeline

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
_READY_TIMEOUT_S = 300.0


def model_name(name: str | None = None) -> str:
    """``name`` if given, else the policy's model name (``CT_MODEL_NAME`` overrides the YAML)."""
    return name or load_policy().model.name


def client() -> MlflowClient:
    """An MlflowClient on the configured tracking server (also sets the fluent API's tracking URI)."""
    import mlflow

    uri = load_settings().mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(uri)


def alias_version(mlflow_client: MlflowClient, name: str, alias: str) -> str | None:
    """The version an alias points at, or None if the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        registered = mlflow_client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = (registered.aliases or {}).get(alias)
    return str(version) if version is not None else None


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


def register_challenger(
    run_id: str, *, verdict: dict[str, Any], lineage: dict[str, str], name: str | None = None
) -> dict[str, Any]:
    """Register the run's model as a version of ``name`` and point the ``challenger`` alias at it.

    Idempotent: if a version of ``name`` already comes from ``run_id``, it is reused (tags and alias
    are set again, to the same values).

    Args:
        run_id: the challenger's MLflow run.
        verdict: the gate verdict (:func:`continuous_training.evaluate.gate_verdict`), stored as a tag.
        lineage: ``{"dag_id", "dag_run_id", "git_commit"}`` of the registering DAG run.
        name: registered model name (default: :func:`model_name`).

    Returns:
        ``{"name", "version", "run_id", "created"}``; ``created`` is False when the version existed.
    """
    import mlflow

    from continuous_training.train import logged_model_uri

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
        version = str(mv.version)
        created = True
        log.info("Registered run %s as %s v%s", run_id, name, version)
    _wait_ready(mlflow_client, name, version)

    # Lineage is that of the run which produced the model: a later call (another DAG run registering
    # the same MLflow run) must not rewrite where the version came from.
    run_tags = mlflow_client.get_run(run_id).data.tags
    tags = {
        TAG_TRAINING_SET: run_tags.get(TAG_TRAINING_SET, ""),
        "ct.dag_id": str(run_tags.get("ct.dag_id") or lineage.get("dag_id") or "unknown"),
        "ct.dag_run_id": str(run_tags.get("ct.dag_run_id") or lineage.get("dag_run_id") or "unknown"),
        "ct.git_commit": str(run_tags.get("ct.git_commit") or lineage.get("git_commit") or "unknown"),
        "ct.reason": run_tags.get("ct.reason", ""),
        "ct.gate_verdict": json.dumps(verdict, sort_keys=True, default=str),
        "ct.gate_metric_value": str(verdict.get("challenger_value")),
    }
    current = mlflow_client.get_model_version(name, version).tags or {}
    for key, value in tags.items():
        if current.get(key) != value:
            mlflow_client.set_model_version_tag(name, version, key, value)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, version)
    return {"name": name, "version": version, "run_id": run_id, "created": created}


def load_model_version(name: str, version: str | int) -> Pipeline:
    """The scikit-learn pipeline of a model version (``models:/<name>/<version>``).

    Its ``predict_proba(X)[:, 1]`` is the probability of default for a frame of the contract's features.
    """
    import mlflow.sklearn

    client()
    return mlflow.sklearn.load_model(f"models:/{name}/{version}")


def load_reference_sample(name: str, version: str | int) -> pd.DataFrame:
    """The drift reference sample logged with a model version's run (features + target).

    Raises:
        ValueError: the version has no run.
    """
    import mlflow.artifacts

    mlflow_client = client()
    mv = mlflow_client.get_model_version(name, str(version))
    if not mv.run_id:
        raise ValueError(f"model {name} v{version} has no run, so no reference sample")
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=mv.run_id,
            artifact_path=REFERENCE_ARTIFACT,
            dst_path=tmp,
            tracking_uri=load_settings().mlflow_tracking_uri,
        )
        return pd.read_parquet(Path(path))


def git_commit() -> str:
    """The code version: ``CT_GIT_COMMIT`` if set, else ``git rev-parse HEAD`` of the repo, else "unknown"."""
    if os.environ.get("CT_GIT_COMMIT"):
        return os.environ["CT_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=load_settings().repo_root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("No git commit available (%s): recording 'unknown'", exc)
        return "unknown"
    return out.stdout.strip() or "unknown"
