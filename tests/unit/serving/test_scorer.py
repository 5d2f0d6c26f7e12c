"""The endpoint's lean request path: columns without a DataFrame, the compiled scorer, the log's batching."""

from __future__ import annotations

import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline

# The same synthetic rows as the endpoint's other tests (pytest puts tests/unit on sys.path).
from continuous_training.config import load_contract
from continuous_training.model.train import build_pipeline
from continuous_training.serving.request import columns_from_body, frame_from_body
from continuous_training.serving.scorer import (
    COMPILED,
    HistGradientBoostingScorer,
    check_columns,
    compile_scorer,
)

CONTRACT = load_contract()
FEATURES = CONTRACT.feature_names
KEY = CONTRACT.key


@pytest.fixture(scope="module")
def pipeline(synthetic_rows) -> Pipeline:
    """A model built by the project's own build_pipeline (native categorical HistGradientBoosting)."""
    frame = synthetic_rows(400, seed=1)
    label = ((frame["credit_score"] < 575) | (frame["home_ownership"] == "RENT")).astype(int)
    return build_pipeline(CONTRACT, {"max_iter": 25, "random_state": 0}).fit(frame[FEATURES], label)


def test_compiled_scorer_is_bit_identical_to_predict_proba(
    pipeline: Pipeline, feature_columns, synthetic_rows
) -> None:
    scorer, kind = compile_scorer(pipeline, CONTRACT)
    assert kind == COMPILED
    assert isinstance(scorer, HistGradientBoostingScorer)
    frame = synthetic_rows(300, seed=7)
    # Corners the check rows also hold: an unseen category, a null category, a missing number.
    frame.loc[0, "loan_purpose"] = "space_tourism"
    frame.loc[1, "region"] = None
    frame.loc[2, "annual_income"] = np.nan
    expected = pipeline.predict_proba(frame[FEATURES])[:, 1]
    got = scorer(feature_columns(frame), len(frame))
    assert got.dtype == np.float64
    assert np.array_equal(got, expected)
    # One row, as most requests are.
    assert np.array_equal(scorer(feature_columns(frame.iloc[:1]), 1), expected[:1])


def test_check_columns_cover_every_known_category_and_an_unseen_one() -> None:
    columns, n = check_columns(CONTRACT)
    for col in CONTRACT.features:
        assert len(columns[col.name]) == n
        if not col.is_numeric:
            assert set(col.values) <= set(columns[col.name])
            assert "__never_seen__" in set(columns[col.name])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_other_models_are_scored_by_predict_proba(feature_columns, synthetic_rows) -> None:
    frame = synthetic_rows(200, seed=3)
    label = (frame["credit_score"] < 575).astype(int)
    numeric = CONTRACT.numeric_features
    linear = make_pipeline(LogisticRegression(max_iter=50)).fit(frame[numeric], label)

    class Subclassed(HistGradientBoostingClassifier):
        """Not the class the compiled scorer was written against: its internals may differ."""

    subclassed = Subclassed(max_iter=5, categorical_features=CONTRACT.categorical_features)
    subclassed.fit(frame[FEATURES], label)
    assert compile_scorer(linear, CONTRACT)[1] == "predict_proba"
    scorer, kind = compile_scorer(subclassed, CONTRACT)
    assert kind == "predict_proba"
    expected = subclassed.predict_proba(frame[FEATURES])[:, 1]
    assert np.array_equal(scorer(feature_columns(frame), len(frame)), expected)


def test_a_scorer_that_disagrees_is_not_used(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    # A scikit-learn whose internals changed meaning would make the compiled scores drift.
    original = HistGradientBoostingScorer.__call__
    monkeypatch.setattr(
        HistGradientBoostingScorer, "__call__", lambda self, c, n: original(self, c, n) + 1e-15
    )
    _, kind = compile_scorer(pipeline, CONTRACT)
    assert kind == "predict_proba"


def test_columns_from_body_is_the_frame_without_pandas(synthetic_rows) -> None:
    frame = synthetic_rows(4, seed=5)
    records = frame.to_dict(orient="records")
    body = orjson.dumps({"dataframe_records": records})
    columns, n = columns_from_body(body, CONTRACT)
    assert n == 4
    assert list(columns) == [*FEATURES, KEY]
    pd.testing.assert_frame_equal(pd.DataFrame(columns), frame_from_body(body, CONTRACT))
