"""Live performance on matured labels: the join (late, duplicate, missing labels), maturity, windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from continuous_training.metrics import calibration_error
from continuous_training.monitoring.performance import (
    IMMATURE,
    JUDGED,
    LABEL,
    UNDECIDED,
    Windows,
    join_labels,
    performance_verdict,
    window_metrics,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _served(ids: list[str], minutes: list[int], scores: list[float], version: str = "3") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "row_id": ids,
            "served_at": [T0 + timedelta(minutes=m) for m in minutes],
            "model_version": version,
            "score": scores,
        }
    )


def _labels(ids: list[str], labels: list[int], day: str = "2026-11-01") -> pd.DataFrame:
    return pd.DataFrame({"application_id": ids, "defaulted": labels, "day": day})


def test_the_join_keeps_the_first_answer_the_newest_label_and_counts_the_rest() -> None:
    # b is scored twice (a retry): its first answer counts. c's label never landed.
    served = _served(["a", "b", "b", "c", "d"], [0, 1, 5, 2, 3], [0.9, 0.2, 0.7, 0.5, 0.1])
    labels = pd.concat(
        [
            _labels(["a", "b", "d"], [1, 0, 0], day="2026-11-03"),
            _labels(["a"], [1], day="2026-11-04"),  # the same label again
            _labels(["d"], [1], day="2026-11-05"),  # a correction: the newest wins
            _labels(["z"], [1], day="2026-11-05"),  # a label of a row never served here
        ],
        ignore_index=True,
    )
    joined, counts = join_labels(served, labels, key="application_id", target="defaulted")
    assert joined["row_id"].tolist() == ["a", "b", "c", "d"]
    assert joined.set_index("row_id")["score"].to_dict() == {"a": 0.9, "b": 0.2, "c": 0.5, "d": 0.1}
    assert joined.set_index("row_id")[LABEL].fillna(-1).to_dict() == {"a": 1, "b": 0, "c": -1, "d": 1}
    assert counts == {
        "predictions": 5,
        "duplicate_predictions": 1,
        "labels": 6,
        "duplicate_labels": 2,
        "conflicting_labels": 1,
        "joined": 3,
        "unlabelled": 1,
    }


def test_the_join_names_a_missing_column() -> None:
    with pytest.raises(ValueError, match=r"labels: missing column\(s\) \['defaulted'\]"):
        join_labels(
            _served(["a"], [0], [0.5]),
            pd.DataFrame({"application_id": ["a"], "day": ["d"]}),
            key="application_id",
            target="defaulted",
        )


def _day_of(
    n: int, seed: int, *, positive: float = 0.3, good: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < positive).astype(int)
    noise = rng.normal(0, 0.15 if good else 0.6, n)
    scores = np.clip(0.3 + 0.4 * (y - 0.3) / 0.7 + noise, 0.001, 0.999) if good else rng.random(n)
    ids = [f"{seed}-{i}" for i in range(n)]
    minutes = sorted(rng.integers(0, 24 * 60, n).tolist())
    return _served(ids, minutes, scores.tolist()), _labels(ids, y.tolist())


def test_windows_are_immature_undecided_or_judged() -> None:
    served, labels = _day_of(600, seed=1)
    # Day 2: served, but most labels are missing (late).
    late_served, late_labels = _day_of(600, seed=2)
    late_served["served_at"] += timedelta(days=1)
    # Day 3: served yesterday, too young to judge.
    young_served, young_labels = _day_of(600, seed=3)
    young_served["served_at"] += timedelta(days=2)
    joined, _ = join_labels(
        pd.concat([served, late_served, young_served], ignore_index=True),
        pd.concat([labels, late_labels.head(100), young_labels], ignore_index=True),
        key="application_id",
        target="defaulted",
    )
    now = T0 + timedelta(days=3, hours=12)
    windows = window_metrics(
        joined, Windows(T0, T0 + timedelta(days=3)), now=now, maturity_days=1, min_labels=300
    )
    assert [w["status"] for w in windows] == [JUDGED, UNDECIDED, IMMATURE]
    judged, undecided, immature = windows
    assert judged["rows"] == judged["labelled"] == 600
    assert judged["roc_auc"] > 0.8
    assert 0 <= judged["calibration_error"] < 0.2
    assert judged["positive_rate"] == pytest.approx(labels["defaulted"].mean())
    assert undecided["labelled"] == 100
    assert undecided["coverage"] == round(100 / 600, 4)
    assert "performance.min_labels is 300" in undecided["why"]
    assert "labels may land until 2026-11-05T00:00:00+00:00" in immature["why"]
    assert "roc_auc" not in immature
    assert "roc_auc" not in undecided
    # The late labels land: the same window is judged on the next run.
    joined, _ = join_labels(
        pd.concat([served, late_served], ignore_index=True),
        pd.concat([labels, late_labels], ignore_index=True),
        key="application_id",
        target="defaulted",
    )
    again = window_metrics(
        joined, Windows(T0, T0 + timedelta(days=2)), now=now, maturity_days=1, min_labels=300
    )
    assert [w["status"] for w in again] == [JUDGED, JUDGED]


def test_a_window_of_one_class_is_undecided() -> None:
    served, labels = _day_of(400, seed=4, positive=0.0)
    joined, _ = join_labels(served, labels, key="application_id", target="defaulted")
    (window,) = window_metrics(
        joined,
        Windows(T0, T0 + timedelta(days=1)),
        now=T0 + timedelta(days=9),
        maturity_days=1,
        min_labels=100,
    )
    assert window["status"] == UNDECIDED
    assert "every label is 0" in window["why"]


def _windows(values: list[float | None]) -> list[dict]:
    return [
        {"status": JUDGED, "roc_auc": v, "start": f"s{i}", "end": f"e{i}"}
        if v is not None
        else {"status": UNDECIDED, "start": f"s{i}", "end": f"e{i}"}
        for i, v in enumerate(values)
    ]


@pytest.mark.parametrize(
    ("values", "degraded", "why"),
    [
        pytest.param([0.80, 0.79], False, None, id="steady"),
        pytest.param([0.80, 0.68], True, "past the floor 0.7", id="below-floor"),
        pytest.param([0.80, 0.74], True, "dropped more than 5% from 0.8000", id="relative-drop"),
        pytest.param([0.70, 0.79, None], False, None, id="newest-undecided-older-judged-fine"),
        pytest.param([None, None], None, None, id="nothing-judged"),
    ],
)
def test_performance_verdict(values: list[float | None], degraded: bool | None, why: str | None) -> None:
    verdict = performance_verdict(
        _windows(values), metric="roc_auc", floor=0.70, promoted_value=0.80, max_relative_drop=0.05
    )
    assert verdict["degraded"] is degraded
    assert verdict["limit"] == pytest.approx(0.76)
    if why:
        assert any(why in r for r in verdict["reasons"])
    else:
        assert verdict["reasons"] == []


def test_a_loss_metric_degrades_upwards() -> None:
    windows = [{"status": JUDGED, "log_loss": 0.60, "start": "s", "end": "e"}]
    verdict = performance_verdict(
        windows, metric="log_loss", floor=0.7, promoted_value=0.5, max_relative_drop=0.1
    )
    assert verdict["degraded"] is True
    assert verdict["limit"] == pytest.approx(0.55)


def test_calibration_error() -> None:
    assert calibration_error(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.0)
    assert calibration_error(np.array([0, 0, 0, 0]), np.array([0.9, 0.9, 0.9, 0.9])) == pytest.approx(0.9)
