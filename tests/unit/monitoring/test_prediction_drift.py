"""Prediction drift against the model's out-of-sample holdout scores: power and false-positive rate.

A real model (the project's pipeline) is fitted on simulated history; its reference is its scores on
the held-out days, as the train DAG stores them. Served windows are scored by the same model: control
windows of the same population must not drift, covariate-shifted windows must.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from continuous_training.config import DriftPolicy, load_contract, load_policy
from continuous_training.features import feature_frame, target_array
from continuous_training.model.train import build_pipeline, holdout_scores, reference_sample
from continuous_training.monitoring.drift import PREDICTION_COLUMN, compute_drift, prediction_drift
from continuous_training.ops.simulate import SimulatorConfig, generate_day

START = date(2026, 9, 1)
HISTORY = SimulatorConfig(seed=11, rows_per_day=2500)
#: Windows per side: enough to state a false-positive rate (at least 20 control windows).
WINDOWS = 24
WINDOW_ROWS = 2000


@pytest.fixture(scope="module")
def fitted():
    contract = load_contract()
    days = [generate_day(START + timedelta(days=i), HISTORY, contract) for i in range(8)]
    train, holdout = pd.concat(days[:6], ignore_index=True), pd.concat(days[6:], ignore_index=True)
    pipeline = build_pipeline(contract, dict(load_policy().model.params))
    pipeline.fit(feature_frame(train, contract), target_array(train, contract))
    scores = holdout_scores(pipeline, holdout, contract, rows=5000)
    return contract, pipeline, train, scores


def _served(contract, pipeline, config: SimulatorConfig, day: date) -> pd.DataFrame:
    frame = generate_day(day, config, contract).head(WINDOW_ROWS)
    served = feature_frame(frame, contract)
    served[PREDICTION_COLUMN] = pipeline.predict_proba(served)[:, 1]
    return served


def test_the_reference_scores_are_out_of_sample(fitted) -> None:
    contract, pipeline, train, scores = fitted
    assert list(scores.columns) == [PREDICTION_COLUMN]
    assert len(scores) == 5000
    assert scores[PREDICTION_COLUMN].between(0, 1).all()
    in_sample = pipeline.predict_proba(feature_frame(train, contract))[:, 1]
    # Scored on rows it never saw: not the training rows' (over-confident) distribution.
    assert not np.allclose(np.sort(in_sample[:5000]), np.sort(scores[PREDICTION_COLUMN].to_numpy()))


def test_shifted_windows_drift_and_control_windows_do_not(fitted) -> None:
    contract, pipeline, _, scores = fitted
    policy = load_policy().drift
    later = START + timedelta(days=30)
    control = [
        prediction_drift(
            scores,
            _served(contract, pipeline, SimulatorConfig(seed=100 + i, rows_per_day=2500), later),
            policy,
        )
        for i in range(WINDOWS)
    ]
    shifted_config = [
        SimulatorConfig(seed=200 + i, rows_per_day=2500, drift_from=later) for i in range(WINDOWS)
    ]
    shifted = [
        prediction_drift(scores, _served(contract, pipeline, c, later), policy) for c in shifted_config
    ]
    false_positives = sum(d["drifted"] for d in control)
    found = sum(d["drifted"] for d in shifted)
    print(
        f"prediction drift over {WINDOWS} windows of {WINDOW_ROWS} rows: false positives {false_positives}/"
        f"{WINDOWS} (max control score {max(d['score'] for d in control):.3f}), found {found}/{WINDOWS} "
        f"(min shifted score {min(d['score'] for d in shifted):.3f}), threshold {policy.threshold}"
    )
    # Seeded, so the figures are the same every run; the bounds leave room for a retuned model.
    assert false_positives == 0
    assert found >= 0.9 * WINDOWS
    assert all(d["method"] == policy.num_method for d in control + shifted)


def test_compute_drift_judges_the_served_scores_against_the_holdout_scores(fitted, tmp_path: Path) -> None:
    contract, pipeline, train, scores = fitted
    later = START + timedelta(days=30)
    served = _served(
        contract, pipeline, SimulatorConfig(seed=300, rows_per_day=2500, drift_from=later), later
    )
    policy = DriftPolicy()
    result = compute_drift(
        reference_sample(train, contract, 5000),
        served,
        reference_scores=scores,
        contract=contract,
        policy=policy,
        report_dir=tmp_path,
    )
    assert result["prediction_drift"]["drifted"] is True
    assert result["prediction_drift"]["score"] == pytest.approx(
        prediction_drift(scores, served, policy)["score"]
    )
    assert result["prediction_drift"]["reference_rows"] == 5000
    assert PREDICTION_COLUMN not in result["drifted_columns"], "reported, and counted only if policy says"
    assert PREDICTION_COLUMN in (tmp_path / "drift_report.html").read_text()
