"""Training: the training-set snapshot, the decision to train, and the challenger's MLflow run.

A training set is a snapshot of validated daily partitions: the list of ``(day, partition sha256)`` and
the hash of that list, written to ``lake.training_set(sha256)``. The same partitions give the same
hash, so "nothing new to learn" is a comparison of two hashes.

The model is a scikit-learn :class:`~sklearn.pipeline.Pipeline` around a
:class:`~sklearn.ensemble.HistGradientBoostingClassifier` that takes the contract's feature columns as
a pandas frame: numerics as numbers (float, int or nullable ``Int64``), categories as plain strings.
The estimator encodes the categorical columns itself (an internal ``OrdinalEncoder`` with
``handle_unknown="use_encoded_value", unknown_value=nan``), so a level it never saw, or a null, is
treated as missing instead of failing, and no pandas ``category`` dtype is needed at input. A separate
encoder in front of it would only add a second ColumnTransformer to every request (the largest cost of
a one-row prediction, see MLFLOW-SERVING-NOTES.md).

mlflow and scikit-learn are imported inside the functions that use them: importing mlflow costs
seconds, and the DAG's cheap steps (select, build, decide) import this module too.
"""

from __future__ import annotations

import logging
import tempfile
from datetime import date
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from continuous_training.config import DatasetContract, Policy, TrainingPolicy, load_contract, load_policy
from continuous_training.settings import load_settings
from continuous_training.storage import (
    DATA_FILE,
    MANIFEST_FILE,
    Lake,
    read_json,
    sha256_json,
    write_json_atomic,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from sklearn.pipeline import Pipeline

log = logging.getLogger(__name__)

#: Name of the logged model inside the run (``runs:/<run_id>/model``).
MODEL_NAME_IN_RUN = "model"
#: Run artifact holding the drift reference sample (features + target of training rows).
REFERENCE_ARTIFACT = "reference/reference.parquet"
#: Types skops must trust to load the pipeline (HistGradientBoosting's internal preprocessor and trees).
SKOPS_TRUSTED_TYPES = [
    "functools.partial",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.utils.validation.check_array",
]
#: What the model needs at inference. Pinned from this environment so log_model does not spend ~30 s
#: inferring requirements in a subprocess (which also picks up pytest and friends).
MODEL_REQUIREMENTS = ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy")
#: Metrics of a probability model: name -> True if higher is better.
METRICS: dict[str, bool] = {"roc_auc": True, "average_precision": True, "log_loss": False, "brier": False}

# Tag keys shared with evaluate.py and registry.py.
TAG_TRAINING_SET = "ct.training_set_sha256"
TAG_TRAINING_DAYS = "ct.training_days"
TAG_HOLDOUT_DAYS = "ct.holdout_days"
TAG_DAG_RUN_ID = "ct.dag_run_id"
TAG_REASON = "ct.reason"


# ------------------------------------------------------------------------------------ training set


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
    if not days:
        raise ValueError("build_training_set: no days given; a training set needs at least one partition")
    partitions = []
    for day in sorted(set(days)):
        manifest_path = lake.validated(day) / MANIFEST_FILE
        if not manifest_path.exists():
            raise ValueError(
                f"day {day}: no validated partition at {manifest_path.parent} (no {MANIFEST_FILE})"
            )
        manifest = read_json(manifest_path)
        if not manifest.get("sha256") or manifest.get("rows") is None:
            raise ValueError(f"{manifest_path}: expected the fields 'sha256' and 'rows'")
        partitions.append(
            {
                "day": day,
                "sha256": str(manifest["sha256"]),
                "rows": int(manifest["rows"]),
                "path": str(lake.validated(day) / DATA_FILE),
            }
        )
    sha = sha256_json([[p["day"], p["sha256"]] for p in partitions])
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
        champion: what :func:`continuous_training.registry.get_champion` returned (None: no champion).
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


# ------------------------------------------------------------------------------------- model inputs


def feature_frame(df: pd.DataFrame, contract: DatasetContract) -> pd.DataFrame:
    """The model's input: the contract's features in contract order, numerics float64, categories object.

    Nulls become NaN (numerics) and None (categories). The pipeline would accept ``Int64`` columns as
    well; training on float64 keeps the logged signature to what JSON clients send.

    Args:
        df: a frame holding at least the contract's feature columns.
        contract: the dataset contract.

    Returns:
        A new frame with the feature columns only, same index as ``df``.

    Raises:
        ValueError: feature columns are missing (names them).
    """
    missing = [c for c in contract.feature_names if c not in df.columns]
    if missing:
        raise ValueError(f"input frame lacks the contract's feature column(s) {missing}")
    out = pd.DataFrame(index=df.index)
    for col in contract.features:
        values = df[col.name]
        if col.is_numeric:
            out[col.name] = pd.to_numeric(values, errors="raise").astype("float64")
        else:
            # An all-null column would arrive as float NaN, which the estimator's encoder cannot compare
            # with the string levels it learnt: keep categories as Python objects.
            text = values.astype(object)
            out[col.name] = text.where(text.notna(), None)
    return out


def target_array(df: pd.DataFrame, contract: DatasetContract) -> np.ndarray:
    """The 0/1 target of a labelled frame as an int array.

    Raises:
        ValueError: the target column is missing or holds nulls or values other than 0/1.
    """
    name = contract.target
    if name not in df.columns:
        raise ValueError(f"input frame lacks the target column {name!r}")
    values = df[name]
    if values.isna().any():
        raise ValueError(f"target column {name!r} has {int(values.isna().sum())} null value(s)")
    y = values.astype("int64").to_numpy()
    bad = sorted(set(np.unique(y).tolist()) - {0, 1})
    if bad:
        raise ValueError(f"target column {name!r}: expected only 0 and 1, found {bad}")
    return y


def classification_metrics(y_true: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """roc_auc, average_precision, log_loss and brier of probabilities against 0/1 labels.

    Raises:
        ValueError: the labels hold a single class (ranking metrics are undefined).
    """
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    y_true = np.asarray(y_true)
    classes = np.unique(y_true)
    if len(classes) < 2:
        raise ValueError(
            f"labels hold only class {classes.tolist()} ({len(y_true)} rows): roc_auc is undefined"
        )
    score = np.clip(np.asarray(score, dtype="float64"), 0.0, 1.0)
    return {
        "roc_auc": float(roc_auc_score(y_true, score)),
        "average_precision": float(average_precision_score(y_true, score)),
        "log_loss": float(log_loss(y_true, score, labels=[0, 1])),
        "brier": float(brier_score_loss(y_true, score)),
    }


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
    from continuous_training.validate import read_validated

    if training_set is not None:
        recorded = {p["day"]: p["sha256"] for p in training_set["partitions"]}
        for day in days:
            manifest_path = lake.validated(day) / MANIFEST_FILE
            if not manifest_path.exists():
                raise ValueError(f"day {day}: validated partition {manifest_path.parent} is gone")
            current = read_json(manifest_path).get("sha256")
            if recorded.get(day) != current:
                raise ValueError(
                    f"day {day}: partition sha256 is {current} but training set "
                    f"{training_set['sha256'][:12]} recorded {recorded.get(day)}"
                )
    return read_validated(lake, list(days), contract)


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


def run_days(run: Run, tag: str) -> list[str]:
    """A comma-separated day list stored in a run tag (empty if the tag is absent)."""
    raw = run.data.tags.get(tag, "")
    return [d for d in raw.split(",") if d]


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
    holds the parameters, the lineage tags, both datasets as inputs, training metrics, the model and
    the drift reference sample. Idempotent: a FINISHED run of the same DAG run on the same training set
    is returned as is; an unfinished one (a killed attempt) is marked FAILED and a new run is made.

    Args:
        training_set: what :func:`build_training_set` returned.
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

    tracking_uri = load_settings().mlflow_tracking_uri
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
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
            "ct.git_commit": str(lineage.get("git_commit") or "unknown"),
            "ct.dag_id": str(lineage.get("dag_id") or "unknown"),
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
            skops_trusted_types=SKOPS_TRUSTED_TYPES,
            pip_requirements=model_requirements(),
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(REFERENCE_ARTIFACT).name
            reference_sample(train_df, contract, policy.training.reference_sample_rows).to_parquet(
                path, index=False
            )
            mlflow.log_artifact(str(path), artifact_path=str(Path(REFERENCE_ARTIFACT).parent))
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
