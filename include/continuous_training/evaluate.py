"""Evaluation and the gate: challenger and champion scored on the same holdout, then a pure verdict.

:func:`evaluate_challenger` reads the challenger run's holdout days from the lake, scores the challenger
and the current champion on exactly those rows, logs both sets of metrics to the challenger's run and
attaches a small self-contained HTML report (metrics table, ROC curves as inline SVG: no plotting
library, no external file). :func:`gate_verdict` then applies TFX-style rules: an absolute floor, and
no regression against the champion beyond a tolerance.
"""

from __future__ import annotations

import html
import logging
import math
from typing import Any

import numpy as np

from continuous_training.config import DatasetContract, GatePolicy, Policy, load_contract, load_policy
from continuous_training.settings import load_settings
from continuous_training.storage import Lake, read_json
from continuous_training.train import (
    METRICS,
    TAG_HOLDOUT_DAYS,
    TAG_TRAINING_SET,
    classification_metrics,
    feature_frame,
    logged_model_uri,
    read_days,
    run_days,
    target_array,
)

log = logging.getLogger(__name__)

#: Run artifact of the evaluation report.
REPORT_ARTIFACT = "evaluation/report.html"
_ROC_POINTS = 200


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
    the HTML report as artifact ``evaluation/report.html``.

    Args:
        run_id: the challenger's MLflow run (from :func:`continuous_training.train.train_challenger`).
        contract: the dataset contract (default: :func:`load_contract`).
        policy: the policies (default: :func:`load_policy`); the registered model is ``policy.model.name``.
        lake: the data lake (default: from settings).

    Returns:
        ``{"run_id", "challenger": {metric: value}, "champion": {...} or None, "champion_version",
        "champion_error", "report_artifact_uri", "holdout_days", "holdout_rows"}``.
        ``champion`` is None when there is no champion (``champion_version`` None) or when its model
        could not be loaded or scored (``champion_error`` says why).

    Raises:
        ValueError: the run records no holdout days, or the holdout holds a single class.
    """
    import mlflow
    from mlflow.entities import Metric

    from continuous_training.registry import get_champion, load_model_version

    contract = contract or load_contract()
    policy = policy or load_policy()
    lake = lake or Lake.from_settings()
    tracking_uri = load_settings().mlflow_tracking_uri
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)

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

    challenger_model = mlflow.sklearn.load_model(logged_model_uri(client, run_id))
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
            champion_model = load_model_version(name, champion_version)
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
        client.set_tag(run_id, "ct.evaluated_against_champion", champion_version)

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
    client.log_text(run_id, page, REPORT_ARTIFACT)
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
        "report_artifact_uri": f"{run.info.artifact_uri}/{REPORT_ARTIFACT}",
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


# ----------------------------------------------------------------------------------------- report


def _roc_points(y: np.ndarray, scores: np.ndarray) -> list[tuple[float, float]]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, scores)
    if len(fpr) > _ROC_POINTS:
        # Keep the curve's shape with a bounded number of points (the page stays small).
        idx = np.unique(np.linspace(0, len(fpr) - 1, _ROC_POINTS).round().astype(int))
        fpr, tpr = fpr[idx], tpr[idx]
    return list(zip(fpr.tolist(), tpr.tolist(), strict=True))


def _roc_svg(curves: list[tuple[str, str, list[tuple[float, float]]]]) -> str:
    size, pad = 320, 40
    plot = size - 2 * pad

    def xy(fx: float, fy: float) -> str:
        return f"{pad + fx * plot:.1f},{pad + (1 - fy) * plot:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" role="img" '
        'aria-label="ROC curves">',
        f'<rect x="{pad}" y="{pad}" width="{plot}" height="{plot}" fill="none" stroke="#999"/>',
        f'<line x1="{pad}" y1="{pad + plot}" x2="{pad + plot}" y2="{pad}" stroke="#ccc" stroke-dasharray="4"/>',
        f'<text x="{size / 2}" y="{size - 8}" text-anchor="middle" font-size="12">false positive rate</text>',
        f'<text x="12" y="{size / 2}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 12 {size / 2})">true positive rate</text>',
    ]
    for i, (label, colour, points) in enumerate(curves):
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
            f'points="{" ".join(xy(x, y) for x, y in points)}"/>'
        )
        parts.append(
            f'<text x="{pad + plot - 4}" y="{pad + plot - 8 - 16 * i}" text-anchor="end" font-size="12" '
            f'fill="{colour}">{html.escape(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def render_report(
    *,
    run_id: str,
    model_name: str,
    holdout_days: list[str],
    y: np.ndarray,
    challenger: tuple[dict[str, float], np.ndarray],
    champion: tuple[dict[str, float], np.ndarray] | None,
    champion_version: str | None,
    champion_error: str | None,
) -> str:
    """The evaluation report: one self-contained HTML page (metrics table and ROC curves as SVG).

    Args:
        run_id: the challenger's run.
        model_name: the registered model name.
        holdout_days: the days scored.
        y: the holdout labels.
        challenger: ``(metrics, scores)`` of the challenger.
        champion: ``(metrics, scores)`` of the champion, or None.
        champion_version: the champion's version, if there is one.
        champion_error: why the champion could not be scored, if so.

    Returns:
        The HTML text.
    """
    esc = html.escape
    curves = [("challenger", "#d62728", _roc_points(y, challenger[1]))]
    if champion is not None:
        curves.append((f"champion v{champion_version}", "#1f77b4", _roc_points(y, champion[1])))
    header = "<tr><th>metric</th><th>challenger</th>"
    header += (
        f"<th>champion v{esc(str(champion_version))}</th><th>difference</th></tr>" if champion else "</tr>"
    )
    rows = []
    for metric, higher in METRICS.items():
        cells = f"<td>{esc(metric)} ({'higher' if higher else 'lower'} is better)</td>"
        cells += f"<td>{challenger[0][metric]:.4f}</td>"
        if champion is not None:
            diff = challenger[0][metric] - champion[0][metric]
            cells += f"<td>{champion[0][metric]:.4f}</td><td>{diff:+.4f}</td>"
        rows.append(f"<tr>{cells}</tr>")
    if champion_version is None:
        note = "<p>There is no champion yet: only the challenger is shown.</p>"
    elif champion is None:
        note = f"<p>The champion v{esc(champion_version)} could not be scored: {esc(str(champion_error))}</p>"
    else:
        note = ""
    positives = int(np.sum(y))
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>Evaluation of {esc(model_name)} run {esc(run_id[:8])}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}</style>"
        "</head><body>"
        f"<h1>Evaluation of {esc(model_name)}: challenger run {esc(run_id)}</h1>"
        f"<p>Holdout: {esc(', '.join(holdout_days))}: {len(y)} rows, {positives} positive "
        f"({positives / max(len(y), 1):.1%}). Both models are scored on exactly these rows.</p>"
        f"{note}<table>{header}{''.join(rows)}</table>"
        f"<h2>ROC curves</h2>{_roc_svg(curves)}"
        "</body></html>\n"
    )
