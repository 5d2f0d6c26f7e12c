"""One drift computation in its own process (``python -m bench.drift_worker``), for ``bench.drift``.

``--mode ours`` runs the monitor's drift step (:func:`continuous_training.monitoring.drift.compute_drift` on the two
Parquet files, as the DAG task does); ``--mode evidently`` runs Evidently's ``DataDriftPreset()`` with
its defaults on the same frames, as a user would, and saves the same two files. The last stdout line is
a JSON report: the columns found drifted, the report's size and the phases' times.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench.core import self_vmhwm_mb

#: Evidently methods that return a distance (drift when score >= threshold); the others return p-values.
_DISTANCES = {"wasserstein", "jensenshannon", "hellinger", "kl_div", "psi", "ed"}


def _ours(reference: Path, current: Path, out: Path) -> dict[str, Any]:
    from continuous_training.monitoring.drift import compute_drift

    result = compute_drift(reference, current, report_dir=out, title=f"bench {current.stem}")
    return {"drifted": result["drifted_columns"], "report_html": result["report_html"]}


def _evidently_defaults(reference: Path, current: Path, out: Path) -> dict[str, Any]:
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from continuous_training.config import load_contract

    contract = load_contract()
    ref = pd.read_parquet(reference, columns=contract.feature_names)
    cur = pd.read_parquet(current, columns=contract.feature_names)
    # The roles stated, as Evidently's docs advise (its inference would turn small-int columns categorical).
    definition = DataDefinition(
        numerical_columns=contract.numeric_features, categorical_columns=contract.categorical_features
    )
    snapshot = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(cur, data_definition=definition),
        Dataset.from_pandas(ref, data_definition=definition),
    )
    out.mkdir(parents=True, exist_ok=True)
    html, js = out / "drift_report.html", out / "drift_report.json"
    snapshot.save_html(str(html))
    snapshot.save_json(str(js))
    # The snapshot names each column's method by its display name ("Wasserstein distance (normed)").
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest
    from evidently.legacy.core import ColumnType

    distances = set()
    for name in _DISTANCES:
        for column_type in (ColumnType.Numerical, ColumnType.Categorical):
            try:
                distances.add(get_registered_stattest(name, column_type).display_name)
            except Exception:  # the method does not apply to this column type
                continue
    drifted = []
    for metric in json.loads(js.read_text())["metrics"]:
        config = metric.get("config") or {}
        if not config.get("type", "").endswith(":ValueDrift"):
            continue
        value, threshold = float(metric["value"]), float(config["threshold"])
        flagged = value >= threshold if config["method"] in distances else value < threshold
        if flagged:
            drifted.append(config["column"])
    return {"drifted": sorted(drifted), "report_html": str(html)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("ours", "evidently"), required=True)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--current", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    run = _ours if args.mode == "ours" else _evidently_defaults
    result = run(args.reference, args.current, args.out)
    result["seconds_in_process"] = round(time.perf_counter() - started, 3)
    result["report_bytes"] = Path(result["report_html"]).stat().st_size
    result["vmhwm_mb"] = self_vmhwm_mb()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
