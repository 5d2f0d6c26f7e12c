"""What live traffic says about a release: the shadow verdict on a challenger, the watch verdict on a champion.

Both read rows of the prediction log (:func:`~continuous_training.predlog.read_predictions`) and the
``release:`` policy (:class:`~continuous_training.config.ReleasePolicy`); neither moves an alias. They
answer ``None`` while the evidence is still being gathered (too few rows, time left), so that a caller
polling them (a deferred task) asks again later, and a verdict once it can judge:

* :func:`shadow_verdict`: the rows the endpoint also scored with the challenger. The challenger passes
  when it failed on at most ``shadow_max_error_rate`` of them, decided at least
  ``shadow_min_agreement`` of them as the champion did (score at or above ``decision_threshold``) and
  its scores lie within ``shadow_max_score_shift`` (Wasserstein distance) of the champion's. Too few
  rows after ``shadow_max_wait_minutes`` blocks it: a version nobody saw live is not promoted on trust.
* :func:`watch_verdict`: the rows the new champion served since it took over, against those the
  previous champion served before. It breaches when its error rate (failed or non-finite scores) is
  above ``watch_max_error_rate``, its p99 request latency above ``watch_max_p99_ratio`` times the
  previous champion's, or its scores further than ``watch_max_score_shift`` from the previous
  champion's. A breach is reported as soon as ``watch_min_rows`` rows show it; a champion that served
  fewer rows in its whole window is left alone and the verdict says it could not be judged.

Every verdict carries its figures and limits, and its reasons in sentences, for the version's tags, the
ledger and the mail.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from continuous_training.config import ReleasePolicy
from continuous_training.predlog import (
    CHALLENGER_ERROR_COLUMN,
    CHALLENGER_SCORE_COLUMN,
    CHALLENGER_VERSION_COLUMN,
    ERROR_COLUMN,
    LATENCY_COLUMN,
    SCORE_COLUMN,
)


def _wasserstein(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import wasserstein_distance

    if len(a) == 0 or len(b) == 0:
        return None
    return float(wasserstein_distance(a, b))


def _finite(values: pd.Series) -> np.ndarray:
    array = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return array[np.isfinite(array)]


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def shadow_verdict(
    rows: pd.DataFrame, version: str, policy: ReleasePolicy, *, waited_s: float
) -> dict[str, Any] | None:
    """The shadow verdict on ``version``, or None while it waits for rows.

    Args:
        rows: prediction-log rows (any; those ``version`` shadow-scored are used).
        version: the challenger version.
        policy: the ``release:`` policy.
        waited_s: seconds since the shadow stage began.

    Returns:
        None when fewer than ``shadow_min_rows`` rows were shadow-scored and the wait is not over;
        otherwise ``{passed, version, rows, error_rate, agreement, score_shift, waited_s, limits,
        reasons}`` (figures None where no row allows them).
    """
    mine = rows[rows[CHALLENGER_VERSION_COLUMN].astype("string") == str(version)]
    n = len(mine)
    timed_out = waited_s >= policy.shadow_max_wait_minutes * 60.0
    if n < policy.shadow_min_rows and not timed_out:
        return None
    errors = int(mine[CHALLENGER_ERROR_COLUMN].notna().sum()) if n else 0
    error_rate = errors / n if n else None
    both = mine[[SCORE_COLUMN, CHALLENGER_SCORE_COLUMN]].apply(pd.to_numeric, errors="coerce")
    both = both[np.isfinite(both).all(axis=1)]
    agreement = None
    if len(both):
        threshold = policy.decision_threshold
        agreement = float(
            ((both[SCORE_COLUMN] >= threshold) == (both[CHALLENGER_SCORE_COLUMN] >= threshold)).mean()
        )
    shift = _wasserstein(both[SCORE_COLUMN].to_numpy(), both[CHALLENGER_SCORE_COLUMN].to_numpy())
    reasons = []
    if n < policy.shadow_min_rows:
        reasons.append(
            f"only {n} shadow-scored rows in {waited_s / 60:.0f} min "
            f"(release.shadow_min_rows is {policy.shadow_min_rows})"
        )
    else:
        if error_rate is not None and error_rate > policy.shadow_max_error_rate:
            reasons.append(
                f"the challenger failed on {error_rate:.2%} of {n} rows "
                f"(release.shadow_max_error_rate is {policy.shadow_max_error_rate:.2%})"
            )
        if agreement is None:
            reasons.append("no row has both scores")
        elif agreement < policy.shadow_min_agreement:
            reasons.append(
                f"it decided {agreement:.2%} of rows as the champion did "
                f"(release.shadow_min_agreement is {policy.shadow_min_agreement:.2%})"
            )
        if shift is not None and shift > policy.shadow_max_score_shift:
            reasons.append(
                f"its scores are {shift:.4f} (Wasserstein) from the champion's "
                f"(release.shadow_max_score_shift is {policy.shadow_max_score_shift})"
            )
    return {
        "passed": not reasons,
        "version": str(version),
        "rows": n,
        "error_rate": _round(error_rate),
        "agreement": _round(agreement),
        "score_shift": _round(shift),
        "waited_s": round(float(waited_s), 1),
        "limits": {
            "min_rows": policy.shadow_min_rows,
            "max_wait_minutes": policy.shadow_max_wait_minutes,
            "min_agreement": policy.shadow_min_agreement,
            "max_score_shift": policy.shadow_max_score_shift,
            "max_error_rate": policy.shadow_max_error_rate,
            "decision_threshold": policy.decision_threshold,
        },
        "reasons": reasons,
    }


def _served_figures(rows: pd.DataFrame) -> dict[str, Any]:
    """Rows, error rate, p99 request latency and finite scores of one version's rows."""
    n = len(rows)
    if not n:
        return {"rows": 0, "error_rate": None, "p99_ms": None, "scores": np.empty(0)}
    scores = pd.to_numeric(rows[SCORE_COLUMN], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    failed = rows[ERROR_COLUMN].notna().to_numpy() | ~np.isfinite(scores)
    # One latency per request (each of its rows carries it).
    latency = rows.drop_duplicates("request_id")[LATENCY_COLUMN]
    latency = _finite(latency)
    return {
        "rows": n,
        "error_rate": float(failed.mean()),
        "p99_ms": float(np.percentile(latency, 99)) if len(latency) else None,
        "scores": scores[np.isfinite(scores)],
    }


def watch_verdict(
    new_rows: pd.DataFrame,
    previous_rows: pd.DataFrame,
    policy: ReleasePolicy,
    *,
    version: str,
    previous_version: str | None,
    elapsed_s: float,
) -> dict[str, Any] | None:
    """The watch verdict on a new champion, or None while it keeps watching.

    Args:
        new_rows: the rows the new champion served since the move (error rows included:
            ``read_predictions(..., include_errors=True)``).
        previous_rows: the rows the previous champion served before the move (empty when none).
        policy: the ``release:`` policy.
        version: the new champion.
        previous_version: the champion before it (None: the first one; only the error rate applies).
        elapsed_s: seconds since the move.

    Returns:
        None while fewer than ``watch_min_rows`` rows came in, or no breach was seen, and the window
        is not over; otherwise ``{passed, judged, version, previous_version, figures, limits,
        breaches, elapsed_s}``: ``passed`` False on a breach, ``judged`` False when the window ended
        with too few rows to compare.
    """
    new = _served_figures(new_rows)
    old = _served_figures(previous_rows)
    over = elapsed_s >= policy.watch_minutes * 60.0
    breaches: list[str] = []
    enough = new["rows"] >= policy.watch_min_rows
    if enough:
        if new["error_rate"] > policy.watch_max_error_rate:
            breaches.append(
                f"v{version} failed or gave no finite score on {new['error_rate']:.2%} of {new['rows']} rows "
                f"(release.watch_max_error_rate is {policy.watch_max_error_rate:.2%})"
            )
        if new["p99_ms"] is not None and old["p99_ms"]:
            ratio = new["p99_ms"] / old["p99_ms"]
            if ratio > policy.watch_max_p99_ratio:
                breaches.append(
                    f"its p99 latency is {new['p99_ms']:.1f} ms, {ratio:.1f}x v{previous_version}'s "
                    f"{old['p99_ms']:.1f} ms (release.watch_max_p99_ratio is {policy.watch_max_p99_ratio:g})"
                )
        shift = _wasserstein(new["scores"], old["scores"])
        if shift is not None and shift > policy.watch_max_score_shift:
            breaches.append(
                f"its scores are {shift:.4f} (Wasserstein) from v{previous_version}'s "
                f"(release.watch_max_score_shift is {policy.watch_max_score_shift})"
            )
    else:
        shift = None
    if not breaches and not over:
        return None
    figures = {
        "rows": new["rows"],
        "error_rate": _round(new["error_rate"]),
        "p99_ms": _round(new["p99_ms"], 2),
        "previous_rows": old["rows"],
        "previous_error_rate": _round(old["error_rate"]),
        "previous_p99_ms": _round(old["p99_ms"], 2),
        "score_shift": _round(shift),
    }
    return {
        "passed": not breaches,
        "judged": enough,
        "version": str(version),
        "previous_version": previous_version,
        "elapsed_s": round(float(elapsed_s), 1),
        "figures": figures,
        "limits": {
            "minutes": policy.watch_minutes,
            "min_rows": policy.watch_min_rows,
            "max_error_rate": policy.watch_max_error_rate,
            "max_p99_ratio": policy.watch_max_p99_ratio,
            "max_score_shift": policy.watch_max_score_shift,
        },
        "breaches": breaches,
    }
