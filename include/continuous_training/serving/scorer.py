"""Scoring typed columns: the model's ``predict_proba``, or a compiled scorer proven equal to it.

:func:`compile_scorer` gives a binary HistGradientBoosting champion a :class:`HistGradientBoostingScorer`
(its own fitted trees, without scikit-learn's per-call validation and encoding) only when its scores are
bit-identical to ``predict_proba`` on :func:`check_columns`; any other model is scored by
:func:`frame_scorer`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from continuous_training.config import DatasetContract

log = logging.getLogger(__name__)

#: ``scorer(columns, n_rows) -> scores``: the positive-class probability of each row, float64.
Scorer = Callable[[Mapping[str, np.ndarray], int], np.ndarray]


#: The kind of scorer :func:`compile_scorer` returns when the fast path is exact.
COMPILED = "compiled"


#: Rows of the load-time check that a compiled scorer equals ``predict_proba``, besides the corners.
CHECK_ROWS = 64


def frame_scorer(model: Any, features: list[str]) -> Scorer:
    """The general scorer: ``model.predict_proba`` on a DataFrame of the features, column 1.

    Args:
        model: anything with scikit-learn's ``predict_proba``.
        features: the feature columns, in the order the model was trained on.

    Returns:
        The scorer.
    """

    def score(columns: Mapping[str, np.ndarray], n_rows: int) -> np.ndarray:
        frame = pd.DataFrame({name: columns[name] for name in features}, copy=False)
        return np.ascontiguousarray(np.asarray(model.predict_proba(frame))[:, 1], dtype=np.float64)

    return score


class HistGradientBoostingScorer:
    """``predict_proba(X)[:, 1]`` of a fitted binary HistGradientBoostingClassifier, without pandas.

    On one row, scikit-learn's ``predict_proba`` spends about three quarters of its ~6 ms in input
    validation and in the ColumnTransformer that ordinal-encodes the categorical columns (measured
    here). This scorer encodes with one dict lookup per value, in the column order that transformer
    produces (categorical columns first, then numeric), then adds the same fitted trees'
    ``TreePredictor.predict`` to the same baseline in the same order and applies the same link: the
    arithmetic is scikit-learn's own, so the scores are bit-identical. It reads private attributes
    of the estimator (``_preprocessor``, ``_predictors``, ``_bin_mapper``, ``_baseline_prediction``,
    ``_loss``), so :func:`compile_scorer` only uses it after checking it against ``predict_proba``.

    Args:
        estimator: the fitted classifier (trained on a DataFrame, so it knows its feature names).

    Raises:
        ValueError: the estimator is not binary, or its preprocessing is not the one described.
    """

    def __init__(self, estimator: Any) -> None:
        if estimator.n_trees_per_iteration_ != 1 or len(estimator.classes_) != 2:
            raise ValueError("not a binary classifier")
        names = [str(name) for name in estimator.feature_names_in_]
        is_categorical = estimator.is_categorical_
        mask = np.zeros(len(names), bool) if is_categorical is None else np.asarray(is_categorical, bool)
        self._categorical: list[tuple[str, dict[str, float]]] = []
        preprocessor = estimator._preprocessor
        if preprocessor is None:
            if mask.any():
                raise ValueError("categorical features without a preprocessor")
        else:
            steps = {name: (step, columns) for name, step, columns in preprocessor.transformers_}
            encoder, encoded = steps["encoder"]
            _, numeric = steps["numerical"]
            if not (np.array_equal(np.asarray(encoded), mask) and np.array_equal(np.asarray(numeric), ~mask)):
                raise ValueError("the preprocessor's column selection differs from is_categorical_")
            if not (np.isnan(encoder.unknown_value) and np.isnan(encoder.encoded_missing_value)):
                raise ValueError("unknown or missing categories are not encoded as NaN")
            categorical = [names[i] for i in np.flatnonzero(mask)]
            for name, categories in zip(categorical, encoder.categories_, strict=True):
                # NaN among the categories is "missing", encoded NaN like unknown values.
                codes = {value: float(i) for i, value in enumerate(categories) if isinstance(value, str)}
                self._categorical.append((name, codes))
        self._numeric = [names[i] for i in np.flatnonzero(~mask)]
        self.features = names
        self._bitsets, self._f_idx_map = estimator._bin_mapper.make_known_categories_bitsets()
        self._predictors = [iteration[0] for iteration in estimator._predictors]
        self._baseline = estimator._baseline_prediction
        self._loss = estimator._loss
        # One thread: rows are scored independently, so the scores do not depend on it, and the
        # endpoint may call this on its event loop, where OpenMP's spin-waiting threads must not run.
        self._n_threads = 1

    def __call__(self, columns: Mapping[str, np.ndarray], n_rows: int) -> np.ndarray:
        """Score ``n_rows`` rows given as columns (numbers float64, categories str or None)."""
        X = np.empty((n_rows, len(self.features)), dtype=np.float64)
        nan = float("nan")
        j = 0
        for name, codes in self._categorical:
            get = codes.get
            X[:, j] = [get(value, nan) for value in columns[name]]
            j += 1
        for name in self._numeric:
            X[:, j] = columns[name]
            j += 1
        raw = np.zeros((n_rows, 1), dtype=self._baseline.dtype, order="F")
        raw += self._baseline
        total = raw[:, 0]
        for predictor in self._predictors:
            total += predictor.predict(X, self._bitsets, self._f_idx_map, self._n_threads)
        return np.ascontiguousarray(self._loss.predict_proba(raw)[:, 1], dtype=np.float64)


def check_columns(
    contract: DatasetContract, rows: int = CHECK_ROWS, seed: int = 0
) -> tuple[dict[str, np.ndarray], int]:
    """Rows that exercise a scorer: random values in range, every known category, an unseen one, nulls.

    Args:
        contract: the dataset contract.
        rows: random rows besides the fixed corner rows.
        seed: the random seed.

    Returns:
        Columns as :func:`columns_from_body` returns them, and the row count.
    """
    rng = np.random.default_rng(seed)
    longest = max((len(c.values or ()) for c in contract.features), default=0)
    n = rows + longest + 2
    columns: dict[str, np.ndarray] = {}
    for col in contract.features:
        if col.is_numeric:
            low = float(col.min) if col.min is not None else -1000.0
            high = float(col.max) if col.max is not None else low + 2000.0
            values = rng.uniform(low, high, n)
            if col.type == "integer":
                values = np.round(values)
            values[:2] = (low, high)
            if col.nullable:
                values[2::7] = np.nan
            columns[col.name] = values
        else:
            known = [str(v) for v in col.values or ()]
            choices = [*known, "__never_seen__"]
            array = np.empty(n, dtype=object)
            array[:] = [choices[i] for i in rng.integers(0, len(choices), n)]
            array[rows : rows + len(known)] = known
            array[-1] = "__never_seen__"
            if col.nullable:
                array[3::5] = None
            columns[col.name] = array
    return columns, n


def _final_estimator(model: Any) -> Any:
    """The estimator a pipeline of pass-through steps ends with (the model itself otherwise)."""
    from sklearn.pipeline import Pipeline

    if isinstance(model, Pipeline):
        if any(step not in (None, "passthrough") for _, step in model.steps[:-1]):
            return None
        return model.steps[-1][1]
    return model


def compile_scorer(model: Any, contract: DatasetContract) -> tuple[Scorer, str]:
    """The fastest scorer whose scores equal ``model.predict_proba(frame)[:, 1]`` exactly.

    A (pipeline ending in a) binary ``HistGradientBoostingClassifier`` gets a
    :class:`HistGradientBoostingScorer` if it gives bit-identical scores on :func:`check_columns`;
    any other model, or one that fails the check, is scored by :func:`frame_scorer`.

    Args:
        model: the loaded model.
        contract: the dataset contract.

    Returns:
        The scorer and its kind: ``"compiled"`` or ``"predict_proba"``.
    """
    features = contract.feature_names
    general = frame_scorer(model, features)
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier

        estimator = _final_estimator(model)
        if type(estimator) is not HistGradientBoostingClassifier:
            return general, "predict_proba"
        fast = HistGradientBoostingScorer(estimator)
        if fast.features != features:
            raise ValueError(f"trained on {fast.features}, not the contract's features {features}")
        columns, n = check_columns(contract)
        expected, got = general(columns, n), fast(columns, n)
        if not np.array_equal(expected, got):
            raise ValueError(f"scores differ from predict_proba by up to {np.max(np.abs(expected - got)):g}")
    except Exception as exc:
        log.warning("Compiled scorer not used (%s: %s); scoring with predict_proba", type(exc).__name__, exc)
        return general, "predict_proba"
    return fast, COMPILED
