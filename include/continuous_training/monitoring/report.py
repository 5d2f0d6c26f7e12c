"""The drift report: Evidently draws the scores the monitor computed, as HTML (and a JSON snapshot).

Evidently only renders here. The scores come from :func:`continuous_training.monitoring.drift.drift_scores`
over every row; Evidently's ``DataDriftPreset`` draws its page from a seeded sample of at most
:data:`REPORT_SAMPLE_ROWS` rows per side, with a registered stat test that hands it those full-data
scores, so the HTML shows the verdict that was acted on. Run on all rows, the preset would compute
every score three times and chart every row (``make bench`` measures the difference).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from continuous_training.config import DriftPolicy

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

REPORT_HTML = "drift_report.html"


REPORT_JSON = "drift_report.json"


#: The most rows per side the HTML report draws its charts from (the scores use every row).
REPORT_SAMPLE_ROWS = 20_000


_DRIFTED_COUNT_TYPE = "evidently:metric_v2:DriftedColumnsCount"


_NOISY_LOGGERS = ("evidently", "iterative_telemetry")


@contextlib.contextmanager
def quiet_evidently() -> Iterator[None]:
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


def import_evidently() -> None:
    """Import Evidently's report API (seconds: call it while something else runs)."""
    import evidently  # noqa: F401


def render_drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    found: dict[str, float | None],
    *,
    numeric: list[str],
    categorical: list[str],
    policy: DriftPolicy,
    html_path: Path,
    json_path: Path,
    title: str,
    report_rows: int = REPORT_SAMPLE_ROWS,
) -> dict[str, int]:
    """Save Evidently's drift report of the two frames, drawn from samples, showing the given scores.

    Args:
        reference: the reference frame.
        current: the current window.
        found: every judged column's score over all rows (None: no usable value on a side; such a
            column is left out of the report).
        numeric: the judged numeric columns (the prediction column among them, if judged).
        categorical: the judged categorical columns.
        policy: the drift policy (methods and threshold).
        html_path: where the HTML goes.
        json_path: where Evidently's JSON snapshot goes.
        title: the report's title.
        report_rows: the most rows per side the charts are drawn from.

    Returns:
        ``{"reference": rows, "current": rows}`` of the samples the charts come from.

    Raises:
        RuntimeError: Evidently wrote nothing, or the saved report counts other drifted columns than the
            scores say.
    """
    from evidently import DataDefinition, Dataset, Report

    judged = numeric + categorical
    ref_sample = _for_report(_sample(reference, report_rows, seed=1), numeric, categorical)
    cur_sample = _for_report(_sample(current, report_rows, seed=2), numeric, categorical)
    # A column with no usable value on a side has no score, and Evidently refuses an empty column.
    shown = [
        c
        for c in judged
        if found[c] is not None and ref_sample[c].notna().any() and cur_sample[c].notna().any()
    ]
    shown_numeric = [c for c in numeric if c in shown]
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
        name += (
            f" (charts from samples of {len(ref_sample):,} / {len(cur_sample):,} rows; scores over all rows)"
        )
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
    return {"reference": len(ref_sample), "current": len(cur_sample)}
