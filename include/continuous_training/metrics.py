"""The model's metrics, shared by the gate (holdout) and the monitor (live, on matured labels)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

#: The gate's metrics: name -> whether higher is better.
METRICS: dict[str, bool] = {"roc_auc": True, "average_precision": True, "log_loss": False, "brier": False}


def classification_metrics(y_true: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """roc_auc, average_precision, log_loss and brier of probabilities against 0/1 labels.

    Raises:
        ValueError: the labels hold a single class (ranking metrics are undefined).
    """
    import numpy as np
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


def calibration_error(y_true: np.ndarray, score: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: the row-weighted mean gap between the mean score and the observed
    positive rate over ``bins`` equal-width score bins (0: the scores are the observed rates)."""
    import numpy as np

    y_true = np.asarray(y_true, dtype="float64")
    score = np.clip(np.asarray(score, dtype="float64"), 0.0, 1.0)
    if len(score) == 0:
        raise ValueError("calibration_error: no rows")
    which = np.minimum((score * bins).astype("int64"), bins - 1)
    counts = np.bincount(which, minlength=bins)
    gaps = np.abs(
        np.bincount(which, weights=score, minlength=bins) - np.bincount(which, weights=y_true, minlength=bins)
    )
    return float(gaps.sum() / counts.sum())
