"""The champion's live performance: served predictions joined with the labels that land days later.

The endpoint logs every row it scores with the key the client sent (``row_id``); the labelled batch of
the same rows lands later (the label delay) and is validated into ``validated/dt=<day>`` like every
batch. :func:`join_labels` joins the two by key, :func:`window_metrics` computes the model's metrics
per window of serving time, and :func:`performance_verdict` compares them with the policy.

* **Maturity.** A window is judged only once its labels had time to land: its end plus
  ``performance.maturity_days`` before now. Younger windows are ``immature``.
* **Too few labels.** A mature window with fewer than ``performance.min_labels`` labelled rows, or
  labels of one class only (the ranking metrics are undefined), is ``undecided``: not judged.
* **Duplicates.** A row scored twice (a client's retry) counts once, with its first answer: the one
  the client acted on. A key labelled twice with the same label counts once; with different labels,
  the newest partition's label wins (a correction) and the conflict is counted.
* **Missing labels.** Served rows whose label never landed stay unlabelled: counted, not judged.

Pure functions of frames (pandas/NumPy, scikit-learn's metrics); reading the lake is the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from continuous_training.lake import to_utc
from continuous_training.metrics import METRICS, calibration_error, classification_metrics

if TYPE_CHECKING:
    import pandas as pd

#: The joined frame's label column (nullable: NaN where no label landed).
LABEL = "label"
#: What a window is: not yet judged (labels may still land), judged on too few labels, or judged.
IMMATURE, UNDECIDED, JUDGED = "immature", "undecided", "judged"


def join_labels(
    predictions: pd.DataFrame, labels: pd.DataFrame, *, key: str, target: str
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Each served row with its label, if one landed (a left join by key).

    Args:
        predictions: served rows: ``row_id``, ``served_at``, ``model_version``, ``score``.
        labels: labelled rows: ``key``, ``target`` and ``day`` (the partition they came from; the
            newest wins when a key's labels disagree).
        key: the contract's key column.
        target: the contract's target column.

    Returns:
        The frame (``row_id``, ``served_at``, ``model_version``, ``score``, :data:`LABEL`), one row
        per served key, sorted by ``served_at``; and counts: ``predictions``, ``duplicate_predictions``,
        ``labels``, ``duplicate_labels``, ``conflicting_labels``, ``joined``, ``unlabelled``.

    Raises:
        ValueError: a frame lacks a column it needs (named).
    """
    import pandas as pd

    for frame, columns, what in (
        (predictions, ("row_id", "served_at", "model_version", "score"), "predictions"),
        (labels, (key, target, "day"), "labels"),
    ):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{what}: missing column(s) {missing}; expected {list(columns)}")
    import numpy as np

    served = predictions[["row_id", "served_at", "model_version", "score"]]
    if not served["served_at"].is_monotonic_increasing:
        served = served.sort_values("served_at", kind="stable")
    labelled = labels[[key, target, "day"]]
    labelled = labelled[labelled[target].notna()]
    # One integer code per key across both sides: deduplicating and joining integers, not strings.
    codes, uniques = pd.factorize(pd.concat([served["row_id"], labelled[key]], ignore_index=True))
    served_codes, label_codes = codes[: len(served)], codes[len(served) :]
    first = ~pd.Series(served_codes).duplicated().to_numpy()
    values = pd.to_numeric(labelled[target], errors="coerce").to_numpy(dtype="float64")
    day_codes = pd.factorize(labelled["day"].astype(str), sort=True)[0]
    pairs = pd.DataFrame({"code": label_codes, "label": values, "day": day_codes})
    distinct = pairs.drop_duplicates(["code", "label"])
    conflicting = int(distinct["code"].duplicated().sum())
    # The newest partition's label of each key (a stable sort by day, the last one kept).
    newest = distinct.iloc[np.argsort(distinct["day"].to_numpy(), kind="stable")].drop_duplicates(
        "code", keep="last"
    )
    label_of = np.full(len(uniques), np.nan)
    label_of[newest["code"].to_numpy()] = newest["label"].to_numpy()
    joined = served[first].copy()
    joined[LABEL] = label_of[served_codes[first]]
    counts = {
        "predictions": len(predictions),
        "duplicate_predictions": int((~first).sum()),
        "labels": len(labelled),
        "duplicate_labels": len(labelled) - len(newest),
        "conflicting_labels": conflicting,
        "joined": int(joined[LABEL].notna().sum()),
        "unlabelled": int(joined[LABEL].isna().sum()),
    }
    return joined.reset_index(drop=True), counts


@dataclass(frozen=True)
class Windows:
    """How served time is cut into judged windows."""

    start: datetime
    end: datetime
    hours: float = 24.0


def window_metrics(
    joined: pd.DataFrame, windows: Windows, *, now: datetime, maturity_days: float, min_labels: int
) -> list[dict[str, Any]]:
    """The metrics of each window of serving time, oldest first.

    Args:
        joined: from :func:`join_labels`.
        windows: the span and the windows' length.
        now: the judging time; a window is mature when its end plus ``maturity_days`` is before it.
        maturity_days: the label delay the policy allows for.
        min_labels: fewest labelled rows of a judged window.

    Returns:
        ``[{"start", "end", "status" (immature | undecided | judged), "why", "rows", "labelled",
        "coverage", "mean_score", "positive_rate", and for judged windows every metric of
        :data:`~continuous_training.metrics.METRICS` and ``calibration_error``}]``.
    """
    import numpy as np

    now = to_utc(now)
    step = timedelta(hours=windows.hours)
    served = joined["served_at"]
    times = served.dt.tz_convert("UTC") if served.dt.tz is not None else served.dt.tz_localize("UTC")
    if not times.is_monotonic_increasing:
        order = np.argsort(times.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]"), kind="stable")
        joined, times = joined.iloc[order], times.iloc[order]
    stamps = times.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    found = []
    start = to_utc(windows.start)
    while start < to_utc(windows.end):
        end = min(start + step, to_utc(windows.end))
        # Served times are sorted: each window is a slice, found by bisection.
        lo, hi = np.searchsorted(
            stamps, [np.datetime64(start.replace(tzinfo=None)), np.datetime64(end.replace(tzinfo=None))]
        )
        inside = joined.iloc[lo:hi]
        with_label = inside[inside[LABEL].notna()]
        window: dict[str, Any] = {
            "start": start.isoformat(),
            "end": end.isoformat(),
            "rows": len(inside),
            "labelled": len(with_label),
            "coverage": round(len(with_label) / len(inside), 4) if len(inside) else None,
            "mean_score": float(inside["score"].mean()) if len(inside) else None,
            "positive_rate": float(with_label[LABEL].mean()) if len(with_label) else None,
        }
        matures = end + timedelta(days=maturity_days)
        y = with_label[LABEL].to_numpy(dtype="int64")
        if matures > now:
            window.update(status=IMMATURE, why=f"labels may land until {matures.isoformat()}")
        elif len(with_label) < min_labels:
            window.update(
                status=UNDECIDED,
                why=f"{len(with_label)} labelled row(s) of {len(inside)}; performance.min_labels is {min_labels}",
            )
        elif len(np.unique(y)) < 2:
            window.update(
                status=UNDECIDED, why=f"every label is {int(y[0])}: the ranking metrics are undefined"
            )
        else:
            scores = with_label["score"].to_numpy(dtype="float64")
            window.update(status=JUDGED, why="", **classification_metrics(y, scores))
            window["calibration_error"] = calibration_error(y, scores)
        found.append(window)
        start = end
    return found


def performance_verdict(
    windows: list[dict[str, Any]],
    *,
    metric: str,
    floor: float,
    promoted_value: float | None,
    max_relative_drop: float,
) -> dict[str, Any]:
    """Whether the newest judged window fell below the policy.

    It falls when its ``metric`` is worse than the absolute ``floor``, or worse than the holdout figure
    the version was promoted on (``promoted_value``) by more than ``max_relative_drop`` of it.

    Returns:
        ``{"degraded": bool | None (None: no window judged), "metric", "value", "window", "floor",
        "promoted_value", "limit" (the relative one, or None), "reasons", "judged", "undecided",
        "immature"}``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r}: expected one of {sorted(METRICS)}")
    higher_is_better = METRICS[metric]
    counts = {s: sum(w["status"] == s for w in windows) for s in (JUDGED, UNDECIDED, IMMATURE)}
    judged = [w for w in windows if w["status"] == JUDGED]
    limit = None
    if promoted_value is not None:
        limit = promoted_value * (1 - max_relative_drop if higher_is_better else 1 + max_relative_drop)
    verdict: dict[str, Any] = {
        "metric": metric,
        "floor": floor,
        "promoted_value": promoted_value,
        "limit": limit,
        "judged": counts[JUDGED],
        "undecided": counts[UNDECIDED],
        "immature": counts[IMMATURE],
        "reasons": [],
    }
    if not judged:
        return {**verdict, "degraded": None, "value": None, "window": None}
    newest = judged[-1]
    value = float(newest[metric])

    def worse(a: float, b: float) -> bool:
        return a < b if higher_is_better else a > b

    reasons = []
    if worse(value, floor):
        reasons.append(
            f"{metric} {value:.4f} on {newest['start']}..{newest['end']} is past the floor {floor}"
        )
    if limit is not None and worse(value, limit):
        reasons.append(
            f"{metric} {value:.4f} dropped more than {max_relative_drop:.0%} from {promoted_value:.4f}, the holdout "
            f"figure the version was promoted on (limit {limit:.4f})"
        )
    return {**verdict, "degraded": bool(reasons), "value": value, "window": newest, "reasons": reasons}
