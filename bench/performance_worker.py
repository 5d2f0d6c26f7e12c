"""One live-performance computation in its own process (``python -m bench.performance_worker``).

``--mode ours`` runs the monitor's performance library on the two Parquet files: the served rows joined
with the labels by key (:func:`~continuous_training.monitoring.performance.join_labels`: first answer of a
retried row, newest label of a relabelled key), the metrics of each day on matured labels
(:func:`~continuous_training.monitoring.performance.window_metrics`) and the verdict. ``--mode
evidently`` is what a user of the field's library would write: a pandas inner merge, then Evidently's
``ClassificationPreset()`` with its defaults over the joined rows (one report, no windows). The last
stdout line is a JSON report.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.core import self_vmhwm_mb


def _ours(served: Path, labels: Path) -> dict[str, Any]:
    import pandas as pd

    from continuous_training.monitoring.performance import (
        Windows,
        join_labels,
        performance_verdict,
        window_metrics,
    )

    t0 = time.perf_counter()
    predictions = pd.read_parquet(served, columns=["row_id", "served_at", "model_version", "score"])
    landed = pd.read_parquet(labels, columns=["application_id", "defaulted", "day"])
    read_s = time.perf_counter() - t0
    joined, counts = join_labels(predictions, landed, key="application_id", target="defaulted")
    join_s = time.perf_counter() - t0 - read_s
    start = joined["served_at"].min().floor("D").to_pydatetime()
    end = joined["served_at"].max().ceil("D").to_pydatetime()
    windows = window_metrics(
        joined, Windows(start, end), now=end + timedelta(days=30), maturity_days=7, min_labels=500
    )
    verdict = performance_verdict(
        windows, metric="roc_auc", floor=0.7, promoted_value=0.8, max_relative_drop=0.05
    )
    return {
        "counts": counts,
        "windows": len(windows),
        "judged": verdict["judged"],
        "roc_auc_newest": verdict["value"],
        "phases": {
            "read": round(read_s, 3),
            "join": round(join_s, 3),
            "windows": round(time.perf_counter() - t0 - read_s - join_s, 3),
        },
    }


def _evidently(served: Path, labels: Path) -> dict[str, Any]:
    import pandas as pd
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.presets import ClassificationPreset

    predictions = pd.read_parquet(served, columns=["row_id", "served_at", "model_version", "score"])
    landed = pd.read_parquet(labels, columns=["application_id", "defaulted", "day"])
    joined = predictions.merge(landed, left_on="row_id", right_on="application_id", how="inner")
    definition = DataDefinition(
        classification=[BinaryClassification(target="defaulted", prediction_probas="score", pos_label=1)],
        numerical_columns=["score"],
    )
    snapshot = Report([ClassificationPreset()]).run(
        Dataset.from_pandas(joined, data_definition=definition), None
    )
    roc = next(
        (m["value"] for m in snapshot.dict()["metrics"] if "RocAuc" in str(m.get("metric_id", ""))),
        None,
    )
    return {"joined_rows": len(joined), "roc_auc_all": roc}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("ours", "evidently"), required=True)
    parser.add_argument("--served", type=Path, required=True)
    parser.add_argument("--labels", type=Path, required=True)
    args = parser.parse_args()
    report = (_ours if args.mode == "ours" else _evidently)(args.served, args.labels)
    print(json.dumps({**report, "vmhwm_mb": self_vmhwm_mb()}, default=str))


if __name__ == "__main__":
    main()
