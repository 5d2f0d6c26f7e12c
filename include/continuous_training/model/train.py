"""Training: the challenger's scikit-learn pipeline and its MLflow run.

The model is a scikit-learn :class:`~sklearn.pipeline.Pipeline` around a
:class:`~sklearn.ensemble.HistGradientBoostingClassifier` that takes the contract's feature columns as
a pandas frame (:func:`continuous_training.features.feature_frame`): numerics as numbers, categories as
plain strings. The estimator encodes the categorical columns itself (an internal ``OrdinalEncoder`` with
``handle_unknown="use_encoded_value", unknown_value=nan``), so a level it never saw, or a null, is
treated as missing instead of failing, and no pandas ``category`` dtype is needed at input. A separate
encoder in front of it would only add a second ColumnTransformer to every request, the largest cost of
a one-row prediction (``make bench`` measures the endpoint).

mlflow and scikit-learn are imported inside the functions that use them: importing mlflow costs
seconds.
"""

from __future__ import annotations

import logging
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from continuous_training import modelstore, provenance
from continuous_training.config import DatasetContract, Policy, load_contract, load_policy
from continuous_training.features import feature_frame, target_array
from continuous_training.lake import Lake
from continuous_training.lineage import (
    MODEL_MANIFEST_ARTIFACT,
    MODEL_NAME_IN_RUN,
    REFERENCE_ARTIFACT,
    REFERENCE_SCORES_ARTIFACT,
    TAG_DAG_ID,
    TAG_DAG_RUN_ID,
    TAG_GIT_COMMIT,
    TAG_HOLDOUT_DAYS,
    TAG_REASON,
    TAG_TRAINING_DAYS,
    TAG_TRAINING_SET,
    UNKNOWN,
    run_days,
)
from continuous_training.metrics import classification_metrics
from continuous_training.model.training_set import read_days, split_days
from continuous_training.modelstore import SKOPS_TRUSTED_TYPES  # the loaders' list, log_model must pass it

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from sklearn.pipeline import Pipeline

log = logging.getLogger(__name__)

#: What the model needs at inference. Pinned from this environment so log_model does not spend ~30 s
#: inferring requirements in a subprocess (which also picks up pytest and friends).
MODEL_REQUIREMENTS = ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy")
# ------------------------------------------------------------------------------------------ the model


def build_pipeline(contract: DatasetContract, params: dict[str, Any]) -> Pipeline:
    """The untrained model: HistGradientBoosting with the contract's categorical columns.

    Args:
        contract: the dataset contract (which features are categorical).
        params: ``HistGradientBoostingClassifier`` parameters (``policy.model.params``).

    Returns:
        An unfitted :class:`~sklearn.pipeline.Pipeline` with one step named ``model``.

    Raises:
        ValueError: ``params`` names something the estimator does not take.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline

    accepted = HistGradientBoostingClassifier().get_params()
    unknown = sorted(set(params) - set(accepted) - {"categorical_features"})
    if unknown:
        raise ValueError(
            f"policy.yaml model.params: unknown HistGradientBoostingClassifier parameter(s) {unknown}"
        )
    params = {k: v for k, v in params.items() if k != "categorical_features"}
    estimator = HistGradientBoostingClassifier(
        categorical_features=contract.categorical_features or None, **params
    )
    return Pipeline([("model", estimator)])


# --------------------------------------------------------------------------------------------- MLflow


def model_requirements() -> list[str]:
    """Pinned pip requirements of the logged model, from the installed versions."""
    pins = []
    for package in MODEL_REQUIREMENTS:
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created if absent (safe against a concurrent creation)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def logged_model_uri(client: MlflowClient, run_id: str) -> str:
    """URI of the model logged as ``model`` by a run (``models:/<model_id>``, else ``runs:/<run_id>/model``)."""
    run = client.get_run(run_id)
    outputs = getattr(run, "outputs", None)
    for output in getattr(outputs, "model_outputs", None) or []:
        if client.get_logged_model(output.model_id).name == MODEL_NAME_IN_RUN:
            return f"models:/{output.model_id}"
    return f"runs:/{run_id}/{MODEL_NAME_IN_RUN}"


def _previous_run(client: MlflowClient, exp_id: str, dag_run_id: str, sha: str) -> Run | None:
    """The FINISHED run of this DAG run on this training set, if any; earlier unfinished ones are failed."""
    from mlflow.entities import RunStatus

    query = f"tags.`{TAG_DAG_RUN_ID}` = '{dag_run_id}' and tags.`{TAG_TRAINING_SET}` = '{sha}'"
    runs = client.search_runs([exp_id], filter_string=query, order_by=["attributes.start_time DESC"])
    finished = [r for r in runs if r.info.status == "FINISHED"]
    for run in runs:
        if run.info.status in ("RUNNING", "SCHEDULED"):
            # A killed attempt leaves its run RUNNING; the same task only runs once at a time, so mark
            # it FAILED to keep it from being mistaken for a model later.
            log.warning(
                "MLflow run %s of an earlier attempt is %s: marking it FAILED",
                run.info.run_id,
                run.info.status,
            )
            client.set_terminated(run.info.run_id, status=RunStatus.to_string(RunStatus.FAILED))
    return finished[0] if finished else None


def _reused_result(client: MlflowClient, run: Run) -> dict[str, Any]:
    params = run.data.params
    return {
        "run_id": run.info.run_id,
        "model_uri": logged_model_uri(client, run.info.run_id),
        "experiment_id": run.info.experiment_id,
        "metrics": {k: v for k, v in run.data.metrics.items() if k.startswith("train_")},
        "holdout_days": run_days(run, TAG_HOLDOUT_DAYS),
        "train_rows": int(params.get("train_rows", 0)),
        "holdout_rows": int(params.get("holdout_rows", 0)),
        "reused": True,
    }


def reference_sample(train_df: pd.DataFrame, contract: DatasetContract, rows: int) -> pd.DataFrame:
    """A seeded sample of training rows (features + target, contract dtypes), in their original order."""
    columns = [*contract.feature_names, contract.target]
    sample = train_df[columns].reset_index(drop=True)
    if len(sample) > rows:
        sample = sample.sample(n=rows, random_state=0).sort_index()
    return sample.reset_index(drop=True)


def holdout_scores(
    pipeline: Pipeline, holdout_df: pd.DataFrame, contract: DatasetContract, rows: int
) -> pd.DataFrame:
    """The fitted pipeline's scores of held-out rows (a seeded sample of at most ``rows``): out of sample,
    so distributed as the scores of new traffic from the same population, unlike scores of training
    rows. The reference of prediction drift."""
    from continuous_training.predlog import SCORE_COLUMN

    frame = holdout_df.reset_index(drop=True)
    if len(frame) > rows:
        frame = frame.sample(n=rows, random_state=0).sort_index()
    scores = pipeline.predict_proba(feature_frame(frame, contract))[:, 1]
    return pd.DataFrame({SCORE_COLUMN: scores.astype("float64")})


def train_challenger(
    training_set: dict[str, Any],
    *,
    reason: str,
    lineage: dict[str, str],
    contract: DatasetContract | None = None,
    policy: Policy | None = None,
    lake: Lake | None = None,
) -> dict[str, Any]:
    """Train a challenger on a training set and log everything about it to one MLflow run.

    The newest ``training.holdout_days`` days are held out (time-based split) for evaluation. The run
    holds the parameters, the lineage tags, both datasets as inputs, training metrics, the model, the
    manifest of the model's files (downloaded once right after logging: the SHA-256 of each, as artifact
    :data:`~continuous_training.lineage.MODEL_MANIFEST_ARTIFACT` and tags
    :data:`~continuous_training.lineage.TAG_MODEL_MANIFEST` / ``..._SHA256``, what registration checks
    and signs) and the drift reference sample. Idempotent: a FINISHED run of the same DAG run on the
    same training set is returned as is; an unfinished one (a killed attempt) is marked FAILED and a new
    run is made.

    Args:
        training_set: what :func:`continuous_training.model.training_set.build_training_set` returned.
        reason: why this model is trained (tag ``ct.reason``).
        lineage: ``{"dag_id", "dag_run_id", "git_commit"}`` (more keys become ``ct.<key>`` tags too).
        contract: the dataset contract (default: :func:`load_contract`).
        policy: the policies (default: :func:`load_policy`); the experiment is named after the model.
        lake: the data lake (default: from settings).

    Returns:
        ``{"run_id", "model_uri", "experiment_id", "metrics", "holdout_days", "train_rows",
        "holdout_rows", "reused"}``.

    Raises:
        ValueError: too few days for the holdout, missing lineage, or data that does not fit the contract.
    """
    import mlflow
    from mlflow.models import infer_signature

    contract = contract or load_contract()
    policy = policy or load_policy()
    lake = lake or Lake.from_settings()
    if not lineage.get("dag_run_id") or "'" in lineage["dag_run_id"]:
        raise ValueError(
            f"lineage: expected a non-empty 'dag_run_id' without quotes (it keys the reuse of runs), "
            f"got {lineage.get('dag_run_id')!r}"
        )
    sha = training_set["sha256"]
    train_days, holdout_days = split_days(training_set["days"], policy.training.holdout_days)

    client = modelstore.client()
    exp_id = experiment_id(client, policy.model.name)
    previous = _previous_run(client, exp_id, lineage["dag_run_id"], sha)
    if previous is not None:
        log.info(
            "Run %s already trained training set %s for DAG run %s: reusing it",
            previous.info.run_id,
            sha[:12],
            lineage["dag_run_id"],
        )
        return _reused_result(client, previous)

    train_df = read_days(lake, train_days, contract, training_set)
    holdout_df = read_days(lake, holdout_days, contract, training_set)
    if train_df.empty or holdout_df.empty:
        raise ValueError(
            f"training set {sha[:12]}: {len(train_df)} training row(s) on {train_days} and "
            f"{len(holdout_df)} holdout row(s) on {holdout_days}; both must be non-empty"
        )
    X, y = feature_frame(train_df, contract), target_array(train_df, contract)
    pipeline = build_pipeline(contract, policy.model.params)
    pipeline.fit(X, y)
    metrics = {f"train_{k}": v for k, v in classification_metrics(y, pipeline.predict_proba(X)[:, 1]).items()}

    tags = {f"ct.{k}": str(v) for k, v in lineage.items()}
    tags.update(
        {
            TAG_TRAINING_SET: sha,
            TAG_REASON: reason,
            TAG_TRAINING_DAYS: ",".join(training_set["days"]),
            TAG_HOLDOUT_DAYS: ",".join(holdout_days),
            TAG_GIT_COMMIT: str(lineage.get("git_commit") or UNKNOWN),
            TAG_DAG_ID: str(lineage.get("dag_id") or UNKNOWN),
        }
    )
    params = {
        **policy.model.params,
        "train_days": ",".join(train_days),
        "holdout_days": ",".join(holdout_days),
        "train_rows": len(train_df),
        "holdout_rows": len(holdout_df),
        "training_set_rows": int(training_set["rows"]),
    }
    source = Path(training_set["path"]).as_uri()
    target = contract.target
    with mlflow.start_run(
        experiment_id=exp_id, run_name=f"{reason}-{training_set['days'][-1]}-{sha[:8]}", tags=tags
    ) as run:
        mlflow.log_params(params)
        for context, part in (("training", train_df), ("holdout", holdout_df)):
            data = feature_frame(part, contract).assign(**{target: target_array(part, contract)})
            _log_dataset(data, source, context, target)
        mlflow.log_metrics(metrics)
        example = X.head(5)
        info = mlflow.sklearn.log_model(
            pipeline,
            name=MODEL_NAME_IN_RUN,
            signature=infer_signature(example, pipeline.predict_proba(example)),
            input_example=example,
            pyfunc_predict_fn="predict_proba",
            skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
            pip_requirements=model_requirements(),
        )
        # What was trained, hashed as the store holds it: registration checks a version against this,
        # the signature covers it, and every load compares the files it downloads with it.
        manifest = modelstore.logged_model_manifest(
            client,
            client.get_logged_model(info.model_id).artifact_location,
            f"the model of run {run.info.run_id}",
        )
        mlflow.log_text(provenance.canonical_json(manifest), MODEL_MANIFEST_ARTIFACT)
        mlflow.set_tags(provenance.manifest_tags(manifest))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(REFERENCE_ARTIFACT).name
            reference_sample(train_df, contract, policy.training.reference_sample_rows).to_parquet(
                path, index=False
            )
            mlflow.log_artifact(str(path), artifact_path=str(Path(REFERENCE_ARTIFACT).parent))
            path = Path(tmp) / Path(REFERENCE_SCORES_ARTIFACT).name
            holdout_scores(pipeline, holdout_df, contract, policy.training.reference_sample_rows).to_parquet(
                path, index=False
            )
            mlflow.log_artifact(str(path), artifact_path=str(Path(REFERENCE_SCORES_ARTIFACT).parent))
    log.info(
        "Trained run %s on %d rows (%s..%s), holdout %s: %s",
        run.info.run_id,
        len(train_df),
        train_days[0],
        train_days[-1],
        holdout_days,
        metrics,
    )
    return {
        "run_id": run.info.run_id,
        "model_uri": info.model_uri,
        "experiment_id": exp_id,
        "metrics": metrics,
        "holdout_days": holdout_days,
        "train_rows": len(train_df),
        "holdout_rows": len(holdout_df),
        "reused": False,
    }


def _log_dataset(data: pd.DataFrame, source: str, context: str, target: str) -> None:
    """Log ``data`` as a dataset input of the active run, named and tagged with ``context``."""
    import warnings

    import mlflow

    with warnings.catch_warnings():
        # A file URI matches both of MLflow's local-file source classes ("" and "file" schemes), which
        # are the same class; the warning says so and changes nothing.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        # The only integer column is the 0/1 target, checked free of nulls: the hint does not apply.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        dataset = mlflow.data.from_pandas(data, source=source, name=context, targets=target)
        mlflow.log_input(dataset, context=context)
