"""Reading the MLflow model registry: which version an alias names, a version's model and what it
carries (its drift reference sample).

The ground the endpoint, the monitor and the model stages share. It never writes (registration, alias
moves and tags belong to :mod:`continuous_training.model`), and it imports mlflow only inside its
functions: importing mlflow costs seconds.

Every call talks to ``settings.mlflow_tracking_uri``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from continuous_training.lineage import REFERENCE_ARTIFACT
from continuous_training.settings import load_settings

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient


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


def load_model(uri: str) -> Any:
    """The scikit-learn model at an MLflow model URI (``models:/...``, ``runs:/...`` or a local path).

    Its ``predict_proba(X)[:, 1]`` is the positive-class probability for a frame of the contract's
    features.
    """
    import mlflow.sklearn

    return mlflow.sklearn.load_model(uri)


def load_model_version(name: str, version: str | int) -> Any:
    """The scikit-learn pipeline of a model version (``models:/<name>/<version>``)."""
    client()
    return load_model(f"models:/{name}/{version}")


def load_reference_sample(name: str, version: str | int) -> pd.DataFrame:
    """The drift reference sample logged with a model version's run (features + target).

    Raises:
        ValueError: the version has no run.
    """
    import mlflow.artifacts
    import pandas as pd

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
