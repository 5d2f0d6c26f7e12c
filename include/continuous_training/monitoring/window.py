"""The window a monitor run judges: which served rows, snapshotted beside the champion's reference.

:func:`window_bounds` turns the run's time and Params into ``[start, end)``; :func:`snapshot_window`
copies the champion's served rows of that window from the prediction log, and its reference sample from
the registry, into the lake (``lake.served_window``, ``lake.served_reference``), so that the drift step
reads two local files and a re-run judges the same rows.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from continuous_training.config import load_contract
from continuous_training.lake import Lake, to_utc, write_parquet_bytes_stable
from continuous_training.modelstore import load_reference_sample, load_reference_scores
from continuous_training.predlog import read_predictions

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


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


def _parse_param(name: str, value: str) -> datetime:
    try:
        return to_utc(datetime.fromisoformat(value.strip()))
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
        end = to_utc(run_after)
    if start is None:
        start = end - length
    if start >= end:
        raise ValueError(
            f"params window_start={start.isoformat()} and window_end={end.isoformat()}: start must be before end"
        )
    return start, end


def snapshot_window(
    lake: Lake, monitor_run_id: str, start: datetime, end: datetime, *, model_name: str, model_version: str
) -> dict[str, Any]:
    """Copy what ``model_version`` served in ``[start, end)``, and its reference sample, into the lake.

    Args:
        lake: the data lake.
        monitor_run_id: the monitor DAG run (names the snapshot's folder).
        start: window start (inclusive).
        end: window end (exclusive).
        model_name: the registered model.
        model_version: the champion version whose served rows are judged.

    Returns:
        ``{"rows", "path", "reference_path", "reference_scores_path" (None for a version without
        holdout scores), "model_name", "model_version", "window_start", "window_end"}`` (paths as
        strings, times ISO 8601).
    """
    served = read_predictions(lake, start, end, model_version=model_version)
    path = lake.served_window(monitor_run_id)
    write_parquet_bytes_stable(served, path)
    reference_path = lake.served_reference(monitor_run_id)
    write_parquet_bytes_stable(load_reference_sample(model_name, model_version), reference_path)
    scores_path: Path | None = lake.served_reference_scores(monitor_run_id)
    reference_scores = load_reference_scores(model_name, model_version)
    if reference_scores is None:
        log.warning(
            "v%s has no holdout scores (trained before they were kept): no prediction drift", model_version
        )
        scores_path = None
    else:
        write_parquet_bytes_stable(reference_scores, scores_path)
    log.info("Window %s .. %s: %d rows served by v%s", start, end, len(served), model_version)
    return {
        "rows": len(served),
        "path": str(path),
        "reference_path": str(reference_path),
        "reference_scores_path": str(scores_path) if scores_path else None,
        "model_name": model_name,
        "model_version": model_version,
        "window_start": start.isoformat(),
        "window_end": end.isoformat(),
    }
