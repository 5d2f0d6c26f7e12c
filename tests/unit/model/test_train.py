"""The model's input handling and the untrained pipeline (the convention the endpoint relies on).

No MLflow here: the run itself is covered by tests/integration/test_model_lifecycle.py.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from continuous_training.config import load_contract
from continuous_training.features import feature_frame, target_array
from continuous_training.model.train import SKOPS_TRUSTED_TYPES, build_pipeline
from continuous_training.ops.simulate import SimulatorConfig, generate_day

START = date(2026, 3, 1)


@pytest.fixture(scope="module")
def fitted():
    contract = load_contract()
    frame = pd.concat(
        [
            generate_day(START + timedelta(days=i), SimulatorConfig(seed=5, rows_per_day=300), contract)
            for i in range(3)
        ],
        ignore_index=True,
    )
    pipeline = build_pipeline(contract, {"max_iter": 30, "random_state": 0})
    pipeline.fit(feature_frame(frame, contract), target_array(frame, contract))
    return contract, frame, pipeline


def test_feature_frame_types_for_the_model(fitted):
    contract, frame, _ = fitted
    X = feature_frame(frame.head(5), contract)
    assert list(X.columns) == contract.feature_names
    assert all(X[c].dtype == "float64" for c in contract.numeric_features)
    assert all(X[c].dtype == object for c in contract.categorical_features)
    with pytest.raises(ValueError, match="credit_score"):
        feature_frame(frame.drop(columns=["credit_score"]), contract)


def test_pipeline_scores_json_like_rows_with_unknowns_and_nulls(fitted):
    contract, frame, pipeline = fitted
    rows = feature_frame(frame.head(3), contract).to_dict(orient="records")
    rows[0]["loan_purpose"] = "space_tourism"  # a level nobody trained on
    rows[1]["region"] = None
    rows[2]["annual_income"] = None
    scores = pipeline.predict_proba(pd.DataFrame(rows))[:, 1]
    assert scores.shape == (3,)
    assert np.isfinite(scores).all()
    assert ((scores >= 0) & (scores <= 1)).all()
    # The typed frame straight from the lake (Int64 integers, object strings) scores the same as floats.
    typed = frame.head(20)
    np.testing.assert_allclose(
        pipeline.predict_proba(typed[contract.feature_names])[:, 1],
        pipeline.predict_proba(feature_frame(typed, contract))[:, 1],
    )


def test_pipeline_round_trips_through_skops_with_the_declared_trusted_types(fitted):
    import skops.io

    contract, frame, pipeline = fitted
    loaded = skops.io.loads(skops.io.dumps(pipeline), trusted=SKOPS_TRUSTED_TYPES)
    X = feature_frame(frame.head(50), contract)
    np.testing.assert_array_equal(loaded.predict_proba(X), pipeline.predict_proba(X))


def test_build_pipeline_rejects_unknown_params():
    with pytest.raises(ValueError, match="max_depthh"):
        build_pipeline(load_contract(), {"max_depthh": 3})


def test_target_array_refuses_nulls_and_other_labels(fitted):
    contract, frame, _ = fitted
    bad = frame.head(4).copy()
    bad.loc[bad.index[0], "defaulted"] = 2
    with pytest.raises(ValueError, match=r"only 0 and 1, found \[2\]"):
        target_array(bad, contract)
    bad.loc[bad.index[0], "defaulted"] = pd.NA
    with pytest.raises(ValueError, match="1 null"):
        target_array(bad, contract)
