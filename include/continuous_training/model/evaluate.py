"""Evaluation and the gate: challenger and champion scored on the same holdout, then a pure verdict.

:func:`evaluate_challenger` reads the challenger run's holdout days from the lake, scores the challenger
and the current champion on exactly those rows, logs both sets of metrics to the challenger's run and
attaches the HTML report of :mod:`continuous_training.model.report`. :func:`gate_verdict` then applies TFX-style rules: an absolute floor, and
no regression against the champion beyond a tolerance.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from continuous_training import modelstore
from continuous_training.config import DatasetContract, GatePolicy, Policy, load_contract, load_policy
from continuous_training.features import feature_frame, target_array
from continuous_training.lake import Lake, read_json
from continuous_training.lineage import (
    EVALUATION_REPORT_ARTIFACT,
    TAG_EVALUATED_AGAINST,
    TAG_HOLDOUT_DAYS,
    TAG_TRAINING_SET,
    run_days,
)
from continuous_training.metrics import METRICS, classification_metrics
from continuous_training.model.registry import get_champion
from continuous_training.model.report import render_report
from continuous_training.model.training_set import read_days

log = logging.getLogger(__name__)


def evaluate_challenger(
    run_id: str,
    *,
    contract: DatasetContract | None = None,
    policy: Policy | None = None,
    lake: Lake | None = None,
) -> dict[str, Any]:
    """Score the challenger of ``run_id`` and the current champion on the run's holdout.

    Metrics (roc_auc, average_precision, log_loss, brier) are logged to the challenger run as
    ``holdout_<m>`` and ``champion_holdout_<m>`` (a re-run logs a value again only if it changed), and
    the HTML report as artifact :data:`~continuous_training.lineage.EVALUATION_REPORT_ARTIFACT`.

    Args:
        run_id: the challenger's MLflow run (from :func:`continuous_training.model.train.train_challenger`).
        contract: the dataset contract (default: :func:`load_contract`).
        policy: the policies (default: :func:`load_policy`); the registered model is ``policy.model.name``.
        lake: the data lake (default: from settings).

    Returns:
        ``{"run_id", "challenger": {metric: value}, "champion": {...} or None, "champion_version",
        "champion_error", "report_artifact_uri", "holdout_days", "holdout_rows"}``.
        ``champion`` is None when there is no champion (``champion_version`` None) or when its model
        could not be loaded or scored, or was refused (no valid signed provenance, files not the signed
        ones: ``champion_error`` says why).

    Raises:
        ValueError: the run records no holdout days, or the holdout holds a single class.
        continuous_training.provenance.ModelRefusedError: the challenger's files are not those its run
            recorded, or not a skops model.
    """
    from mlflow.entities import Metric

    contract = contract or load_contract()
    policy = policy or load_policy()
    lake = lake or Lake.from_settings()
    client = modelstore.client()

    run = client.get_run(run_id)
    holdout_days = run_days(run, TAG_HOLDOUT_DAYS)
    if not holdout_days:
        raise ValueError(
            f"MLflow run {run_id} has no {TAG_HOLDOUT_DAYS} tag: was it made by train_challenger?"
        )
    snapshot_path = lake.training_set(run.data.tags.get(TAG_TRAINING_SET, "missing"))
    snapshot = read_json(snapshot_path) if snapshot_path.exists() else None
    holdout = read_days(lake, holdout_days, contract, snapshot)
    X, y = feature_frame(holdout, contract), target_array(holdout, contract)

    # Not registered yet, so not signed: checked against the manifest its training recorded (and skops).
    challenger_model = modelstore.load_run_model(run_id, mlflow_client=client)
    challenger_scores = challenger_model.predict_proba(X)[:, 1]
    challenger = classification_metrics(y, challenger_scores)

    name = policy.model.name
    champion_info = get_champion(name)
    champion: dict[str, float] | None = None
    champion_scores = None
    champion_error = None
    champion_version = str(champion_info["version"]) if champion_info else None
    if champion_info is not None:
        try:
            # Signed provenance and files, as the endpoint checks them: a refused champion is reported.
            champion_model = modelstore.load_model_version(name, champion_version, mlflow_client=client)
            champion_scores = champion_model.predict_proba(X)[:, 1]
            champion = classification_metrics(y, champion_scores)
        except Exception as exc:  # noqa: BLE001 - any failure to use the champion is reported, not fatal
            champion_error = f"{type(exc).__name__}: {exc}"
            champion_scores = None
            log.warning("Champion %s v%s could not be evaluated: %s", name, champion_version, champion_error)

    wanted = {f"holdout_{k}": v for k, v in challenger.items()}
    wanted.update({f"champion_holdout_{k}": v for k, v in (champion or {}).items()})
    already = run.data.metrics
    new = [Metric(k, float(v), _now_ms(), 0) for k, v in wanted.items() if already.get(k) != float(v)]
    if new:
        client.log_batch(run_id, metrics=new)
    if champion_version:
        client.set_tag(run_id, TAG_EVALUATED_AGAINST, champion_version)

    page = render_report(
        run_id=run_id,
        model_name=name,
        holdout_days=holdout_days,
        y=y,
        challenger=(challenger, challenger_scores),
        champion=(champion, champion_scores) if champion is not None else None,
        champion_version=champion_version,
        champion_error=champion_error,
    )
    client.log_text(run_id, page, EVALUATION_REPORT_ARTIFACT)
    log.info(
        "Holdout %s (%d rows): challenger %s, champion v%s %s",
        holdout_days,
        len(y),
        challenger,
        champion_version,
        champion if champion is not None else champion_error,
    )
    return {
        "run_id": run_id,
        "challenger": challenger,
        "champion": champion,
        "champion_version": champion_version,
        "champion_error": champion_error,
        "report_artifact_uri": f"{run.info.artifact_uri}/{EVALUATION_REPORT_ARTIFACT}",
        "holdout_days": holdout_days,
        "holdout_rows": len(y),
    }


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def gate_verdict(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    gate: GatePolicy,
    force: bool = False,
    champion_error: str | None = None,
) -> dict[str, Any]:
    """Decide whether the challenger may replace the champion (pure: no I/O).

    Two rules on ``gate.metric``: the challenger reaches the absolute floor ``gate.min_value`` (at least
    it for roc_auc and average_precision, at most it for log_loss and brier), and it is not worse than
    the champion by more than ``gate.max_regression``. Without a champion (first model) only the floor
    applies. A champion that exists but could not be scored (``champion_error``) blocks the challenger,
    since no-regression cannot be checked, unless ``force``. ``force`` skips the no-regression rule,
    never the floor.

    Args:
        challenger: the challenger's holdout metrics.
        champion: the champion's metrics on the same holdout, or None.
        gate: the gate policy.
        force: skip the no-regression rule.
        champion_error: why the serving champion could not be scored on the holdout, if it could not.

    Returns:
        ``{"passed", "reasons": [sentences], "metric", "challenger_value", "champion_value", "floor",
        "max_regression", "forced"}``; ``reasons`` explains every rule, failed or passed.

    Raises:
        ValueError: ``gate.metric`` is not a known metric or the challenger lacks it.
    """
    metric = gate.metric
    if metric not in METRICS:
        raise ValueError(f"policy.yaml gate.metric: {metric!r} is not one of {list(METRICS)}")
    if metric not in challenger:
        raise ValueError(f"challenger metrics lack {metric!r} (have {sorted(challenger)})")
    higher_is_better = METRICS[metric]
    value = float(challenger[metric])
    floor = float(gate.min_value)
    champion_value = None if champion is None or champion.get(metric) is None else float(champion[metric])
    reasons: list[str] = []
    passed = True

    if math.isnan(value):
        passed = False
        reasons.append(f"{metric} of the challenger is not a number")
    elif higher_is_better and value < floor:
        passed = False
        reasons.append(f"{metric} {value:.3f} is below the floor {floor:.3f}")
    elif not higher_is_better and value > floor:
        passed = False
        reasons.append(f"{metric} {value:.3f} is above the ceiling {floor:.3f} (lower is better)")
    else:
        word = "reaches the floor" if higher_is_better else "is within the ceiling"
        reasons.append(f"{metric} {value:.3f} {word} {floor:.3f}")

    if champion_error and not force:
        passed = False
        reasons.append(
            f"the champion could not be scored on the holdout ({champion_error}), so no-regression cannot "
            "be checked; trigger train with force to promote on the floor alone"
        )
    elif champion_error:
        reasons.append(f"forced: the champion could not be scored ({champion_error}); only the floor applies")
    elif champion_value is None:
        reasons.append("no champion to compare with: only the floor applies")
    elif force:
        reasons.append(f"forced: the no-regression rule was skipped (champion {metric} {champion_value:.3f})")
    else:
        worse_by = (champion_value - value) if higher_is_better else (value - champion_value)
        tolerance = float(gate.max_regression)
        # A tiny epsilon so that "exactly at the tolerance" is not lost to float rounding.
        if math.isnan(worse_by) or worse_by > tolerance + 1e-12:
            passed = False
            reasons.append(
                f"{metric} {value:.3f} is {worse_by:.3f} worse than the champion's {champion_value:.3f} "
                f"(tolerance {tolerance:.3f})"
            )
        elif worse_by > 0:
            reasons.append(
                f"{metric} {value:.3f} is {worse_by:.3f} worse than the champion's {champion_value:.3f}, "
                f"within the tolerance {tolerance:.3f}"
            )
        else:
            reasons.append(f"{metric} {value:.3f} is at least as good as the champion's {champion_value:.3f}")

    return {
        "passed": passed,
        "reasons": reasons,
        "metric": metric,
        "challenger_value": value,
        "champion_value": champion_value,
        "floor": floor,
        "max_regression": float(gate.max_regression),
        "forced": bool(force),
    }
