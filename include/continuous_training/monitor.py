"""Drift monitoring: what the endpoint served in a window against the champion's reference sample.

The monitor DAG calls, in order: :func:`window_bounds` (which served rows to judge),
:func:`compute_drift` (per-column scores over every row, and an Evidently report saved as HTML and JSON),
:func:`retrain_decision` (a pure predicate over those scores and the policy), and, when it says retrain,
:func:`record_retrain_trigger` so that the next run's :func:`last_retrain_trigger` enforces the cooldown.

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

import contextlib
import fcntl
import functools
import json
import logging
import math
import os
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from continuous_training.config import DatasetContract, DriftPolicy, load_contract, load_policy
from continuous_training.storage import Lake, read_json, write_json_atomic

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

#: The endpoint's prediction column; its drift is reported but does not count as a drifted feature.
PREDICTION_COLUMN = "score"
REPORT_HTML = "drift_report.html"
REPORT_JSON = "drift_report.json"
SUMMARY_JSON = "summary.json"
TRIGGER_LEDGER = "retrain_triggers.json"
#: The most rows per side the HTML report draws its charts from (the scores use every row).
REPORT_SAMPLE_ROWS = 20_000

#: Evidently methods whose score is a distance (drift when score >= threshold). The p-value tests
#: (ks, chisquare, ...) flag the other way round, and chi-square over-fires; they are refused.
DISTANCE_METHODS = frozenset({"wasserstein", "jensenshannon", "hellinger", "kl_div", "psi", "ed"})
_NUMERIC_CAPABLE = DISTANCE_METHODS
_CATEGORICAL_CAPABLE = frozenset({"jensenshannon", "hellinger", "kl_div", "psi"})
_DRIFTED_COUNT_TYPE = "evidently:metric_v2:DriftedColumnsCount"
_NOISY_LOGGERS = ("evidently", "iterative_telemetry")


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


@contextlib.contextmanager
def _quiet_evidently() -> Iterator[None]:
    saved = {}
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = logger.level
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def drifted_count_from_report(report: dict[str, Any]) -> int:
    """The drifted-column count of an Evidently 0.7 snapshot dict (the content of ``drift_report.json``).

    Evidently 0.7 stores it as ``{"config": {"type": "evidently:metric_v2:DriftedColumnsCount", ...},
    "value": {"count": float, "share": float}}``.

    Args:
        report: the parsed ``drift_report.json`` (``snapshot.dict()``).

    Returns:
        The count.

    Raises:
        ValueError: the dict is not an Evidently 0.7 snapshot with a ``DriftedColumnsCount`` metric.
    """
    metrics = report.get("metrics")
    if not isinstance(metrics, list):
        raise ValueError("drift report: expected a `metrics` list (Evidently 0.7 snapshot dict)")
    for metric in metrics:
        if (metric.get("config") or {}).get("type") == _DRIFTED_COUNT_TYPE:
            return int(metric["value"]["count"])
    raise ValueError(f"drift report: no {_DRIFTED_COUNT_TYPE} metric")


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


def _sample(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """At most ``rows`` rows, drawn without replacement with a fixed seed, in their original order."""
    import numpy as np

    if len(frame) <= rows:
        return frame.reset_index(drop=True)
    picked = np.sort(np.random.default_rng(seed).choice(len(frame), size=rows, replace=False))
    return frame.iloc[picked].reset_index(drop=True)


def _for_report(frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    """The sample as Evidently draws it: float64 numbers (+-inf as NaN), categories as text (None for null)."""
    import numpy as np
    import pandas as pd

    out: dict[str, Any] = {}
    for col in numeric:
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        # Infinities are no score's business (dropped, as Evidently drops them) and break its charts.
        values[np.isinf(values)] = np.nan
        out[col] = values
    for col in categorical:
        values = frame[col].astype(object)
        out[col] = values.where(values.isna(), values.astype(str)).to_numpy(dtype=object)
    return pd.DataFrame(out)


_PRECOMPUTED: dict[str, float] = {}
_PRECOMPUTED_LOCK = threading.Lock()


def _precomputed(
    reference: pd.Series, current: pd.Series, feature_type: Any, threshold: float
) -> tuple[float, bool]:
    """The registered stat test of the report: the score :func:`drift_scores` computed over all rows."""
    score = _PRECOMPUTED[str(reference.name)]
    return score, score >= threshold


def _register_precomputed(method: str, kind: str, rows: int) -> str:
    """Register (once per method) the stat test that hands Evidently the full-data scores; its name."""
    from evidently.legacy.calculations.stattests.registry import (
        StatTest,
        get_registered_stattest,
        register_stattest,
    )
    from evidently.legacy.core import ColumnType

    column_type = ColumnType.Numerical if kind == "num" else ColumnType.Categorical
    own = get_registered_stattest(method, column_type)
    name = f"ct-all-rows-{kind}-{method}"
    register_stattest(
        StatTest(
            name=name,
            display_name=f"{own.display_name}, over all {rows:,} rows",
            allowed_feature_types=[column_type],
            default_threshold=own.default_threshold,
        ),
        _precomputed,
    )
    return name


@functools.cache
def _report_preset() -> type:
    """``DataDriftPreset`` drawing what its HTML shows, without the per-column ``ValueDrift`` metrics.

    The preset's HTML is its dataset-drift summary and drift table (Evidently's legacy metrics, drawn in
    ``render``). Its per-column ``ValueDrift`` metrics add nothing to that page, yet each one scores its
    column again and builds plotly charts that are thrown away: about 45% of ``Report.run``. The scores
    are in ``summary.json``; the JSON snapshot keeps the drifted-columns count.
    """
    from evidently.metrics import DriftedColumnsCount
    from evidently.presets import DataDriftPreset

    class DriftReportPreset(DataDriftPreset):
        def generate_metrics(self, context: Any) -> list[Any]:
            return [m for m in super().generate_metrics(context) if isinstance(m, DriftedColumnsCount)]

    return DriftReportPreset


def _save_report(snapshot: Any, html_path: Path, json_path: Path) -> None:
    # save_html/save_json take str paths only: a Path or a file object is silently ignored.
    tag = uuid.uuid4().hex
    for target, save in ((html_path, snapshot.save_html), (json_path, snapshot.save_json)):
        tmp = target.with_name(f".{target.name}.{tag}.tmp")
        save(str(tmp))
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise RuntimeError(f"Evidently wrote nothing to {tmp}")
        os.replace(tmp, target)


def _load_and_score(
    reference: pd.DataFrame | Path,
    current: pd.DataFrame | Path,
    contract: DatasetContract,
    policy: DriftPolicy,
) -> tuple[pd.DataFrame, pd.DataFrame, list[str], dict[str, float | None]]:
    """Read (if given paths), check and score both sides; returns the frames, numeric columns, scores."""
    features = contract.feature_names
    wanted = [*features, PREDICTION_COLUMN]
    if not hasattr(reference, "columns"):
        reference = read_window(Path(reference), wanted, contract.categorical_features)
    if not hasattr(current, "columns"):
        current = read_window(Path(current), wanted, contract.categorical_features)
    _check_columns(reference, features, "reference")
    _check_columns(current, features, "current")
    with_prediction = PREDICTION_COLUMN in reference.columns and PREDICTION_COLUMN in current.columns
    numeric = contract.numeric_features + ([PREDICTION_COLUMN] if with_prediction else [])
    found = drift_scores(
        reference, current, numeric=numeric, categorical=contract.categorical_features, policy=policy
    )
    return reference, current, numeric, found


def compute_drift(
    reference: pd.DataFrame | Path,
    current: pd.DataFrame | Path,
    *,
    contract: DatasetContract | None = None,
    policy: DriftPolicy | None = None,
    report_dir: Path,
    title: str = "",
    report_rows: int = REPORT_SAMPLE_ROWS,
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

    Returns:
        A JSON-serialisable summary: ``drifted_columns`` (sorted), ``scores`` (feature -> score),
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
    with _quiet_evidently(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="drift-load") as background:
        # Evidently's import alone takes seconds: the frames are read and scored meanwhile.
        pending = background.submit(_load_and_score, reference, current, contract, policy)
        from evidently import DataDefinition, Dataset, Report

        reference, current, judged_numeric, found = pending.result()
        with_prediction = PREDICTION_COLUMN in judged_numeric
        judged = judged_numeric + categorical
        ref_sample = _for_report(_sample(reference, report_rows, seed=1), judged_numeric, categorical)
        cur_sample = _for_report(_sample(current, report_rows, seed=2), judged_numeric, categorical)
        # A column with no usable value on a side has no score, and Evidently refuses an empty column.
        shown = [
            c
            for c in judged
            if found[c] is not None and ref_sample[c].notna().any() and cur_sample[c].notna().any()
        ]
        shown_numeric = [c for c in judged_numeric if c in shown]
        shown_categorical = [c for c in categorical if c in shown]
        # Every role list is given, so Evidently infers nothing (no int column turned categorical).
        definition = DataDefinition(
            numerical_columns=shown_numeric,
            categorical_columns=shown_categorical,
            text_columns=[],
            datetime_columns=[],
            unknown_columns=[],
            list_columns=[],
        )
        sampled = len(reference) > report_rows or len(current) > report_rows
        name = title or "drift"
        if sampled:
            name += f" (charts from samples of {len(ref_sample):,} / {len(cur_sample):,} rows; scores over all rows)"
        with _PRECOMPUTED_LOCK:
            _PRECOMPUTED.clear()
            _PRECOMPUTED.update({c: float(found[c]) for c in shown})
            preset = _report_preset()(
                columns=shown,
                num_method=_register_precomputed(policy.num_method, "num", len(current)),
                cat_method=_register_precomputed(policy.cat_method, "cat", len(current)),
                threshold=policy.threshold,
            )
            snapshot = Report([preset]).run(
                Dataset.from_pandas(cur_sample[shown], data_definition=definition),
                Dataset.from_pandas(ref_sample[shown], data_definition=definition),
                name=name,
            )
        _save_report(snapshot, html_path, json_path)

    counted = drifted_count_from_report(json.loads(json_path.read_text()))
    expected = sum(1 for c in shown if found[c] >= policy.threshold)
    if counted != expected:
        raise RuntimeError(
            f"{json_path}: the report counts {counted} drifted column(s), the computed scores {expected}"
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
    drifted = sorted(c for c, s in scores.items() if s is not None and s >= policy.threshold)
    prediction_drift = None
    if with_prediction:
        value = _score(PREDICTION_COLUMN)
        prediction_drift = {
            "column": PREDICTION_COLUMN,
            "score": value,
            "drifted": value is not None and value >= policy.threshold,
        }
    summary_path = report_dir / SUMMARY_JSON
    result: dict[str, Any] = {
        "title": title,
        "drifted_columns": drifted,
        "scores": scores,
        "threshold": policy.threshold,
        "num_method": policy.num_method,
        "cat_method": policy.cat_method,
        "share_drifted": len(drifted) / len(features),
        "rows_reference": len(reference),
        "rows_current": len(current),
        "report_sample_rows": {"reference": len(ref_sample), "current": len(cur_sample)},
        "prediction_drift": prediction_drift,
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


def read_window(
    path: Path, columns: list[str] | None = None, categorical: list[str] | None = None
) -> pd.DataFrame:
    """Read a Parquet window with its text columns as pandas categories (1M rows of str cost ~300 MB).

    Args:
        path: the Parquet file.
        columns: the columns to read, those the file has (default: all).
        categorical: text columns to read dictionary-encoded (default: the contract's categoricals).

    Returns:
        The frame.
    """
    import pyarrow.parquet as pq

    categorical = load_contract().categorical_features if categorical is None else categorical
    if columns is not None:
        present = set(pq.read_schema(path).names)
        columns = [c for c in columns if c in present]
    table = pq.read_table(path, columns=columns, read_dictionary=categorical)
    # One pandas block per column, each freed from Arrow as it converts: the peak stays near one copy.
    return table.to_pandas(split_blocks=True, self_destruct=True)


def _to_utc(value: datetime) -> datetime:
    """A plain ``datetime`` in UTC; naive values are taken as UTC (pendulum values become stdlib)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return datetime(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        tzinfo=UTC,
    )


def _fmt_scores(drift: dict[str, Any], columns: list[str]) -> str:
    scores = drift.get("scores", {})
    return ", ".join(f"{c}={scores[c]:.3f}" if scores.get(c) is not None else c for c in columns)


def retrain_decision(
    drift: dict[str, Any], policy: DriftPolicy, *, last_trigger_at: datetime | None, now: datetime
) -> dict[str, Any]:
    """Decide whether a drift result should trigger retraining (pure: no I/O, no clock).

    Retrain when at least ``policy.min_drifted_columns`` feature columns drifted and the previous
    drift-triggered retraining is at least ``policy.cooldown_hours`` old (or there was none). A window with
    fewer than ``policy.min_rows`` served rows is not judged.

    Args:
        drift: the dict returned by :func:`compute_drift`.
        policy: the drift policy.
        last_trigger_at: time of the last drift-triggered retraining, or None.
        now: the decision time (the run's ``run_after``); naive datetimes are taken as UTC.

    Returns:
        ``{"retrain": bool, "why": str}``; ``why`` names the drifted columns and their scores, or says
        why not (too few rows, no drift, below ``min_drifted_columns``, cooldown until a time).
    """
    drifted = list(drift.get("drifted_columns", []))
    threshold = drift.get("threshold", policy.threshold)
    rows = drift.get("rows_current")
    if rows is not None and rows < policy.min_rows:
        return {
            "retrain": False,
            "why": f"only {rows} served rows in the window; drift.min_rows is {policy.min_rows}",
        }
    if not drifted:
        scores = {c: s for c, s in drift.get("scores", {}).items() if s is not None}
        top = max(scores, key=scores.__getitem__) if scores else None
        highest = f"; highest {top}={scores[top]:.3f}" if top else ""
        return {
            "retrain": False,
            "why": f"no drift: no feature column reached threshold {threshold}{highest}",
        }
    described = f"{len(drifted)} column(s) drifted (>= {threshold}): {_fmt_scores(drift, drifted)}"
    if len(drifted) < policy.min_drifted_columns:
        return {
            "retrain": False,
            "why": f"{described}; below drift.min_drifted_columns={policy.min_drifted_columns}",
        }
    if last_trigger_at is not None:
        until = _to_utc(last_trigger_at) + timedelta(hours=policy.cooldown_hours)
        if _to_utc(now) < until:
            return {
                "retrain": False,
                "why": (
                    f"{described}; but in cooldown until {until.isoformat()} "
                    f"(last drift-triggered retraining {_to_utc(last_trigger_at).isoformat()}, "
                    f"cooldown {policy.cooldown_hours} h)"
                ),
            }
    return {"retrain": True, "why": described}


def _ledger_path(lake: Lake) -> Path:
    return lake.root / "monitoring" / TRIGGER_LEDGER


def _read_ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    try:
        entries = read_json(path)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); expected a list of retrain triggers") from exc
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "at" in e for e in entries):
        raise ValueError(f"{path}: expected a list of entries with `monitor_run_id` and `at`")
    return entries


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of the ledger between concurrent monitor runs (local lake only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def last_retrain_trigger(lake: Lake) -> datetime | None:
    """Time of the latest drift-triggered retraining recorded in the lake's ledger.

    Args:
        lake: the data lake; the ledger is ``<lake>/monitoring/retrain_triggers.json``.

    Returns:
        The latest ``at`` (UTC), or None when nothing was ever triggered.

    Raises:
        ValueError: the ledger is not a list of entries, or an ``at`` is not an ISO time (file named).
    """
    path = _ledger_path(lake)
    times = []
    for entry in _read_ledger(path):
        try:
            times.append(_to_utc(datetime.fromisoformat(entry["at"])))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: entry {entry.get('monitor_run_id')!r} has a bad `at`: {exc}") from exc
    return max(times) if times else None


def record_retrain_trigger(lake: Lake, monitor_run_id: str, at: datetime, drift: dict[str, Any]) -> None:
    """Append a drift-triggered retraining to the ledger, once per monitor run.

    A re-run of the same monitor run (a task retry) neither adds a second entry nor moves the time.

    Args:
        lake: the data lake.
        monitor_run_id: the monitor DAG run id that decided to retrain.
        at: when (the run's ``run_after``); naive is taken as UTC.
        drift: the dict returned by :func:`compute_drift` (columns, scores and report paths are kept).
    """
    path = _ledger_path(lake)
    with _locked(path):
        entries = _read_ledger(path)
        if any(e.get("monitor_run_id") == monitor_run_id for e in entries):
            log.info("retrain trigger of monitor run %s already recorded in %s", monitor_run_id, path)
            return
        drifted = list(drift.get("drifted_columns", []))
        scores = drift.get("scores", {})
        entries.append(
            {
                "monitor_run_id": monitor_run_id,
                "at": _to_utc(at).isoformat(),
                "drifted_columns": drifted,
                "scores": {c: scores.get(c) for c in drifted},
                "threshold": drift.get("threshold"),
                "report_html": drift.get("report_html"),
                "report_json": drift.get("report_json"),
            }
        )
        write_json_atomic(path, entries)
    log.info("recorded retrain trigger of monitor run %s at %s in %s", monitor_run_id, at, path)


def _parse_param(name: str, value: str) -> datetime:
    try:
        return _to_utc(datetime.fromisoformat(value.strip()))
    except ValueError as exc:
        raise ValueError(
            f"param {name}={value!r}: expected an ISO 8601 time such as 2026-01-01T00:00:00+00:00"
        ) from exc


def window_bounds(
    run_after: datetime, *, window_start: str | None, window_end: str | None, window_hours: float
) -> tuple[datetime, datetime]:
    """The served-time window ``[start, end)`` a monitor run judges.

    Explicit bounds (the run's Params) win. A missing end is ``run_after`` and a missing start is
    ``end - window_hours``, so without either the window is ``[run_after - window_hours, run_after)``.
    Empty strings count as missing (an untouched form field).

    Args:
        run_after: the DAG run's ``run_after``; naive is taken as UTC.
        window_start: ISO time from the ``window_start`` Param, or None/"".
        window_end: ISO time from the ``window_end`` Param, or None/"".
        window_hours: the window length when a bound is not given.

    Returns:
        ``(start, end)`` as tz-aware UTC datetimes.

    Raises:
        ValueError: a bound is not ISO 8601 (the param is named), ``window_hours`` is not positive, or
            start is not before end.
    """
    if not window_hours > 0:
        raise ValueError(f"window_hours={window_hours!r}: expected a positive number of hours")
    length = timedelta(hours=window_hours)
    start = _parse_param("window_start", window_start) if window_start else None
    end = _parse_param("window_end", window_end) if window_end else None
    if end is None:
        end = _to_utc(run_after)
    if start is None:
        start = end - length
    if start >= end:
        raise ValueError(
            f"params window_start={start.isoformat()} and window_end={end.isoformat()}: start must be before end"
        )
    return start, end
