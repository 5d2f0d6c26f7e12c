"""Drift statistics: what the endpoint served in a window against the champion's reference sample.

:func:`compute_drift` scores every judged column over all rows (:func:`drift_scores`), has the report
drawn (:mod:`continuous_training.monitoring.report`) and writes ``summary.json``. The monitor DAG gets
its rows from :mod:`continuous_training.monitoring.window` and decides with
:mod:`continuous_training.monitoring.retrain`.

The drift statistics are pinned from the policy (normed Wasserstein for numeric columns, Jensen-Shannon
distance for categoricals, one threshold). Evidently's own defaults depend on the reference size and switch
to KS / chi-square at 1,000 rows or fewer, and its chi-square flags every categorical of a no-drift window
(it ignores the reference's sampling noise), so the defaults are never used.

Cost (``make bench``): the scores are computed here with vectorised NumPy, exactly as Evidently defines
them, and Evidently only draws the report, from a bounded sample and with those scores handed to it. On
a 1,000,000-row window Evidently's ``DataDriftPreset`` alone spends most of its time scoring every column
three times and charting every row.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from continuous_training.config import DatasetContract, DriftPolicy, load_contract, load_policy
from continuous_training.lake import write_json_atomic
from continuous_training.monitoring.report import (
    REPORT_HTML,
    REPORT_JSON,
    REPORT_SAMPLE_ROWS,
    import_evidently,
    quiet_evidently,
    render_drift_report,
)
from continuous_training.monitoring.window import read_window

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

#: The endpoint's prediction column; its drift is reported but does not count as a drifted feature.
PREDICTION_COLUMN = "score"
SUMMARY_JSON = "summary.json"

#: Evidently methods whose score is a distance (drift when score >= threshold). The p-value tests
#: (ks, chisquare, ...) flag the other way round, and chi-square over-fires; they are refused.
DISTANCE_METHODS = frozenset({"wasserstein", "jensenshannon", "hellinger", "kl_div", "psi", "ed"})
_NUMERIC_CAPABLE = DISTANCE_METHODS
_CATEGORICAL_CAPABLE = frozenset({"jensenshannon", "hellinger", "kl_div", "psi"})


def _check_methods(policy: DriftPolicy) -> None:
    for field_name, method, capable in (
        ("num_method", policy.num_method, _NUMERIC_CAPABLE),
        ("cat_method", policy.cat_method, _CATEGORICAL_CAPABLE),
    ):
        if method not in DISTANCE_METHODS:
            raise ValueError(
                f"policy drift.{field_name}={method!r}: expected a distance method, one of "
                f"{sorted(DISTANCE_METHODS)} (p-value tests flag drift the other way round, and Evidently's "
                "chi-square over-fires on samples of a few thousand rows)"
            )
        if method not in capable:
            raise ValueError(f"policy drift.{field_name}={method!r}: expected one of {sorted(capable)}")
    if not policy.threshold > 0:
        raise ValueError(f"policy drift.threshold={policy.threshold!r}: expected a positive distance")


def _check_columns(frame: pd.DataFrame, wanted: list[str], what: str) -> None:
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{what} frame lacks the contract's feature column(s) {missing}; it has {list(frame.columns)}"
        )
    if len(frame) == 0:
        raise ValueError(f"{what} frame has no rows; drift needs rows on both sides")


def _numbers(frame: pd.DataFrame, col: str, what: str) -> np.ndarray:
    """The column's finite values as float64 (Evidently drops NaN and +-inf before testing)."""
    import numpy as np
    import pandas as pd

    series = frame[col]
    if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        try:
            series = pd.to_numeric(series, errors="raise")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what} frame, column {col!r}: expected numbers ({exc})") from exc
    values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    return values[np.isfinite(values)]


def _levels(frame: pd.DataFrame, col: str) -> pd.Series:
    """Counts of the column's non-null values keyed by their text, whatever the dtype (category, str, int).

    A category dtype or ints on one side and str on the other would otherwise count as different levels.
    """
    import pandas as pd

    counts = frame[col].value_counts(dropna=True, sort=False)
    counts = counts[counts > 0]
    # Few levels: a plain text index (not a CategoricalIndex), summing e.g. 1 and "1" together.
    counts = pd.Series(counts.to_numpy(), index=pd.Index([str(v) for v in counts.index], dtype=object))
    return counts.groupby(level=0, sort=False).sum()


def wasserstein_normed(reference: np.ndarray, current: np.ndarray) -> float:
    """Evidently's ``wasserstein`` drift score: W1(reference, current) / max(std(reference), 0.001).

    The exact first Wasserstein distance between the two empirical distributions, computed as the
    integral of the gap between their quantile functions: both samples are sorted, and the integral is
    summed over the merged grid of breakpoints ``i/n`` and ``j/m`` (kept as integers ``i*m`` and ``j*n``
    so that no breakpoint is lost to rounding). It equals ``scipy.stats.wasserstein_distance`` (which
    integrates the CDF gap instead) to rounding, with one sort per side and no argsort of the union.

    Args:
        reference: the reference's finite values.
        current: the current window's finite values.

    Returns:
        The normed distance (0 for identical samples).
    """
    import numpy as np

    u = np.sort(reference)
    v = np.sort(current)
    n, m = len(u), len(v)
    # Breakpoints of the quantile functions on the scale n*m: i/n -> i*m, j/m -> j*n.
    keys = np.concatenate((np.arange(1, n + 1, dtype=np.int64) * m, np.arange(1, m + 1, dtype=np.int64) * n))
    keys.sort(kind="stable")  # two sorted runs: a linear merge
    keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    widths = np.diff(keys, prepend=0).astype(np.float64)
    # On (keys[k-1], keys[k]] the quantile functions are u[ceil(k/m) - 1] and v[ceil(k/n) - 1].
    gap = np.abs(u[(keys + (m - 1)) // m - 1] - v[(keys + (n - 1)) // n - 1])
    distance = float(np.dot(gap, widths)) / (float(n) * float(m))
    return distance / max(float(np.std(reference)), 0.001)


def jensenshannon_levels(reference: pd.Series, current: pd.Series) -> float:
    """Evidently's ``jensenshannon`` score of a categorical column, from the two sides' level counts.

    Evidently takes the union of the levels seen on either side, each side's share of its rows per level
    (zeros kept as zeros) and scipy's Jensen-Shannon distance with the natural logarithm.

    Args:
        reference: counts per level of the reference (see :func:`_levels`).
        current: counts per level of the current window.

    Returns:
        The distance, between 0 and sqrt(ln 2).
    """
    import numpy as np
    from scipy.spatial import distance

    keys = reference.index.union(current.index)
    p = reference.reindex(keys, fill_value=0).to_numpy(dtype=np.float64) / reference.sum()
    q = current.reindex(keys, fill_value=0).to_numpy(dtype=np.float64) / current.sum()
    return float(distance.jensenshannon(p, q))


def _evidently_score(
    method: str, kind: str, reference: pd.Series, current: pd.Series, threshold: float
) -> float:
    """Any other distance method: Evidently's own implementation on the full columns."""
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest
    from evidently.legacy.core import ColumnType

    column_type = ColumnType.Numerical if kind == "num" else ColumnType.Categorical
    stattest = get_registered_stattest(method, column_type)
    return float(stattest(reference, current, column_type, threshold).drift_score)


def _column_score(
    col: str, kind: str, method: str, reference: pd.DataFrame, current: pd.DataFrame, threshold: float
) -> float | None:
    """One column's drift score over all rows, or None when a side has no usable value."""
    import pandas as pd

    if kind == "num":
        ref, cur = _numbers(reference, col, "reference"), _numbers(current, col, "current")
        if len(ref) == 0 or len(cur) == 0:
            return None
        if method == "wasserstein":
            return wasserstein_normed(ref, cur)
        return _evidently_score(method, kind, pd.Series(ref, name=col), pd.Series(cur, name=col), threshold)
    ref_counts, cur_counts = _levels(reference, col), _levels(current, col)
    if ref_counts.sum() == 0 or cur_counts.sum() == 0:
        return None
    if method == "jensenshannon":
        return jensenshannon_levels(ref_counts, cur_counts)
    expand = lambda counts: pd.Series(counts.index.repeat(counts.to_numpy()), name=col)  # noqa: E731
    return _evidently_score(method, kind, expand(ref_counts), expand(cur_counts), threshold)


def drift_scores(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    numeric: list[str],
    categorical: list[str],
    policy: DriftPolicy,
    threads: int = 2,
) -> dict[str, float | None]:
    """Every column's drift score over all rows, columns scored in parallel threads.

    NumPy's sorts and pandas' counting release the GIL, so the threads run on separate cores.
    ``wasserstein`` and ``jensenshannon`` are computed here (vectorised, exactly as Evidently defines
    them: equal to its own functions to 1e-14); any other distance method falls back to Evidently's
    implementation.

    Args:
        reference: the reference frame.
        current: the current window.
        numeric: columns scored with ``policy.num_method``.
        categorical: columns scored with ``policy.cat_method``.
        policy: the drift policy (methods and threshold).
        threads: worker threads.

    Returns:
        ``{column: score or None}`` (None: a side has no finite value / no non-null level).

    Raises:
        ValueError: a numeric column holds non-numbers (named).
    """
    jobs = [(c, "num", policy.num_method) for c in numeric] + [
        (c, "cat", policy.cat_method) for c in categorical
    ]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="drift") as pool:
        futures = {
            col: pool.submit(_column_score, col, kind, method, reference, current, policy.threshold)
            for col, kind, method in jobs
        }
        return {col: future.result() for col, future in futures.items()}


def prediction_drift(
    reference_scores: pd.DataFrame, current: pd.DataFrame, policy: DriftPolicy
) -> dict[str, Any]:
    """Drift of the served scores from the model's out-of-sample scores, with ``policy.num_method``.

    Args:
        reference_scores: the model's scores of held-out rows (column ``score``), as the train DAG keeps
            them with the version.
        current: the served window (column ``score``).
        policy: the drift policy (method and threshold, as for a numeric feature).

    Returns:
        ``{"column", "score" (None without usable values), "drifted", "method", "threshold",
        "reference_rows", "current_rows"}``.

    Raises:
        ValueError: a frame has no ``score`` column, or it holds non-numbers.
    """
    _check_columns(reference_scores, [PREDICTION_COLUMN], "reference scores")
    _check_columns(current, [PREDICTION_COLUMN], "current")
    value = _column_score(
        PREDICTION_COLUMN, "num", policy.num_method, reference_scores, current, policy.threshold
    )
    return _prediction_verdict(value, policy, len(reference_scores), len(current))


def _prediction_verdict(
    value: float | None, policy: DriftPolicy, reference_rows: int, current_rows: int
) -> dict[str, Any]:
    value = value if value is not None and math.isfinite(value) else None
    return {
        "column": PREDICTION_COLUMN,
        "score": value,
        "drifted": value is not None and value >= policy.threshold,
        "method": policy.num_method,
        "threshold": policy.threshold,
        "reference_rows": reference_rows,
        "current_rows": current_rows,
    }


def _with_reference_scores(reference: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """The reference sample with a ``score`` column drawn (seeded) from the holdout scores, for the
    report's charts: each column is charted on its own distribution, so the scores need not belong to
    the sample's rows (they cannot: the sample is of training rows, scored in sample)."""
    import numpy as np

    values = scores[PREDICTION_COLUMN].to_numpy(dtype="float64")
    rng = np.random.default_rng(0)
    drawn = (
        rng.choice(values, size=len(reference), replace=len(values) < len(reference))
        if len(values)
        else np.nan
    )
    return reference.assign(**{PREDICTION_COLUMN: drawn})


def _load_and_score(
    reference: pd.DataFrame | Path,
    current: pd.DataFrame | Path,
    contract: DatasetContract,
    policy: DriftPolicy,
    reference_scores: pd.DataFrame | Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, list[str], dict[str, float | None], dict[str, Any] | None]:
    """Read (if given paths), check and score both sides; returns the frames, numeric columns, scores
    and the prediction drift (None when no side carries scores to judge)."""
    import pandas as pd

    features = contract.feature_names
    wanted = [*features, PREDICTION_COLUMN]
    if not hasattr(reference, "columns"):
        reference = read_window(Path(reference), wanted, contract.categorical_features)
    if not hasattr(current, "columns"):
        current = read_window(Path(current), wanted, contract.categorical_features)
    if reference_scores is not None and not hasattr(reference_scores, "columns"):
        reference_scores = pd.read_parquet(Path(reference_scores), columns=[PREDICTION_COLUMN])
    _check_columns(reference, features, "reference")
    _check_columns(current, features, "current")
    predicted = None
    if reference_scores is not None and PREDICTION_COLUMN in current.columns:
        predicted = prediction_drift(reference_scores, current, policy)
        reference = _with_reference_scores(
            reference.drop(columns=[PREDICTION_COLUMN], errors="ignore"), reference_scores
        )
    with_prediction = PREDICTION_COLUMN in reference.columns and PREDICTION_COLUMN in current.columns
    numeric = contract.numeric_features + ([PREDICTION_COLUMN] if with_prediction else [])
    found = drift_scores(
        reference,
        current,
        numeric=[c for c in numeric if predicted is None or c != PREDICTION_COLUMN],
        categorical=contract.categorical_features,
        policy=policy,
    )
    if predicted is not None:
        found[PREDICTION_COLUMN] = predicted["score"]  # over every holdout score, not the charts' draw
    elif with_prediction:
        predicted = _prediction_verdict(found[PREDICTION_COLUMN], policy, len(reference), len(current))
    return reference, current, numeric, found, predicted


def unseen_categories(
    reference: pd.DataFrame, current: pd.DataFrame, categorical: list[str], floor: float
) -> dict[str, list[dict[str, Any]]]:
    """The categories of the served window that the reference never had, on at least ``floor`` of its rows.

    Args:
        reference: the reference sample.
        current: the served window.
        categorical: the categorical feature columns.
        floor: the smallest share of the window's rows (nulls included) a new category must reach.

    Returns:
        ``{column: [{"value", "rows", "share"}, ...]}``, most frequent first; only columns with one.
    """
    total = len(current)
    found: dict[str, list[dict[str, Any]]] = {}
    if not total:
        return found
    for col in categorical:
        known = set(reference[col].dropna().astype(str).unique())
        counts = current[col].value_counts(dropna=True, sort=True)
        new = [
            {"value": str(value), "rows": int(rows), "share": round(rows / total, 4)}
            for value, rows in counts.items()
            if rows > 0 and str(value) not in known and rows / total >= floor
        ]
        if new:
            found[col] = new
    return found


def compute_drift(
    reference: pd.DataFrame | Path,
    current: pd.DataFrame | Path,
    *,
    contract: DatasetContract | None = None,
    policy: DriftPolicy | None = None,
    report_dir: Path,
    title: str = "",
    report_rows: int = REPORT_SAMPLE_ROWS,
    reference_scores: pd.DataFrame | Path | None = None,
) -> dict[str, Any]:
    """Compare the served window with the reference sample and save an Evidently drift report.

    Only the contract's feature columns are judged (ids, timestamps, the target and the serving metadata
    are left out), plus the prediction column ``score`` when both frames carry it; the prediction's drift
    is reported under ``prediction_drift`` but is not a drifted feature.

    The scores are computed over all rows by :func:`drift_scores` (vectorised; the same values as
    Evidently's methods). Evidently then renders its ``DataDriftPreset`` report from a seeded sample of
    at most ``report_rows`` rows per side, with a registered stat test that hands it those full-data
    scores: the HTML shows the verdict that was acted on, while its charts come from the sample. Run on
    all rows, Evidently's preset computes every score three times and builds its charts from every row
    (``make bench`` measures the difference).

    Args:
        reference: the champion's reference sample (features, target, maybe ``score``), or the path of
            a Parquet file holding it (read by :func:`read_window` while Evidently is imported).
        current: the served window (features, request/serving columns, ``score``), or its Parquet path.
        contract: the dataset contract; default :func:`load_contract`.
        policy: the drift policy; default ``load_policy().drift``.
        report_dir: folder receiving ``drift_report.html``, ``drift_report.json`` and ``summary.json``
            (created; files of a previous run with the same folder are replaced).
        title: a label for the report and the summary (e.g. the monitor run id and window).
        report_rows: the most rows per side the report's charts are drawn from.
        reference_scores: the model's out-of-sample scores of its held-out rows (column ``score``; a
            frame or a Parquet path): the reference of prediction drift (:func:`prediction_drift`),
            instead of a ``score`` column of ``reference``.

    Returns:
        A JSON-serialisable summary: ``drifted_columns`` (by score, highest first; ties by name),
        ``scores`` (feature -> score; None when a side has no usable value), ``null_columns``
        (``{"current": [...], "reference": [...]}``: the feature columns with no value at all in the
        served window or the reference: not judged, a data-quality finding), ``unseen_categories``
        (see :func:`unseen_categories`; each such column is drifted),
        ``threshold``, ``num_method``, ``cat_method``, ``share_drifted``, ``rows_reference``,
        ``rows_current``, ``report_sample_rows``, ``prediction_drift`` (or None), ``title``,
        ``report_html``, ``report_json``, ``summary_json`` (absolute paths).

    Raises:
        ValueError: a feature column is missing from a frame (named), a frame is empty, a numeric column
            holds non-numbers, or the policy names a method that is not a distance.
        RuntimeError: the saved report does not carry the computed scores.
    """
    contract = contract or load_contract()
    policy = policy or load_policy().drift
    _check_methods(policy)
    features = contract.feature_names
    categorical = contract.categorical_features
    report_dir = Path(report_dir).absolute()
    report_dir.mkdir(parents=True, exist_ok=True)
    html_path, json_path = report_dir / REPORT_HTML, report_dir / REPORT_JSON
    with quiet_evidently(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="drift-load") as background:
        # Evidently's import alone takes seconds: the frames are read and scored meanwhile.
        pending = background.submit(_load_and_score, reference, current, contract, policy, reference_scores)
        import_evidently()
        reference, current, judged_numeric, found, prediction_drift_found = pending.result()
        samples = render_drift_report(
            reference,
            current,
            found,
            numeric=judged_numeric,
            categorical=categorical,
            policy=policy,
            html_path=html_path,
            json_path=json_path,
            title=title,
            report_rows=report_rows,
        )

    def _score(col: str) -> float | None:
        value = found[col]
        if value is None or not math.isfinite(value):
            log.warning(
                "drift score of column %s is %s (no usable value on a side); not counted as drift", col, value
            )
            return None
        return value

    scores = {col: _score(col) for col in features}
    unseen = unseen_categories(reference, current, categorical, policy.unseen_category_floor)
    # The answer first: the most drifted column leads (ties by name). A new category above the floor
    # drifts its column even when it is too rare to move the score past the threshold.
    drifted = sorted(
        (c for c, s in scores.items() if (s is not None and s >= policy.threshold) or c in unseen),
        key=lambda c: (-(scores[c] or 0.0), c),
    )
    # A column with no value on a side cannot be judged: a data-quality finding, said as such.
    null_columns = {
        side: [c for c in features if len(frame) and bool(frame[c].isna().all())]
        for side, frame in (("current", current), ("reference", reference))
    }
    summary_path = report_dir / SUMMARY_JSON
    result: dict[str, Any] = {
        "title": title,
        "drifted_columns": drifted,
        "scores": scores,
        "null_columns": null_columns,
        "unseen_categories": unseen,
        "threshold": policy.threshold,
        "num_method": policy.num_method,
        "cat_method": policy.cat_method,
        "share_drifted": len(drifted) / len(features),
        "rows_reference": len(reference),
        "rows_current": len(current),
        "report_sample_rows": samples,
        "prediction_drift": prediction_drift_found,
        "report_html": str(html_path),
        "report_json": str(json_path),
        "summary_json": str(summary_path),
    }
    write_json_atomic(summary_path, result)
    log.info(
        "drift %s: %d of %d feature columns drifted %s (threshold %s, %d reference vs %d current rows)",
        title or report_dir,
        len(drifted),
        len(features),
        drifted,
        policy.threshold,
        len(reference),
        len(current),
    )
    return result
