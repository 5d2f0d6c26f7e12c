"""The model's inputs: a contract's feature columns and its 0/1 target, as the estimator takes them.

Shared by training, evaluation and the deploy smoke test, so that every model is fed the same way.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from continuous_training.config import DatasetContract


def feature_frame(df: pd.DataFrame, contract: DatasetContract) -> pd.DataFrame:
    """The model's input: the contract's features in contract order, numerics float64, categories object.

    Nulls become NaN (numerics) and None (categories). The pipeline would accept ``Int64`` columns as
    well; training on float64 keeps the logged signature to what JSON clients send.

    Args:
        df: a frame holding at least the contract's feature columns.
        contract: the dataset contract.

    Returns:
        A new frame with the feature columns only, same index as ``df``.

    Raises:
        ValueError: feature columns are missing (names them).
    """
    missing = [c for c in contract.feature_names if c not in df.columns]
    if missing:
        raise ValueError(f"input frame lacks the contract's feature column(s) {missing}")
    out = pd.DataFrame(index=df.index)
    for col in contract.features:
        values = df[col.name]
        if col.is_numeric:
            out[col.name] = pd.to_numeric(values, errors="raise").astype("float64")
        else:
            # An all-null column would arrive as float NaN, which the estimator's encoder cannot compare
            # with the string levels it learnt: keep categories as Python objects.
            text = values.astype(object)
            out[col.name] = text.where(text.notna(), None)
    return out


def target_array(df: pd.DataFrame, contract: DatasetContract) -> np.ndarray:
    """The 0/1 target of a labelled frame as an int array.

    Raises:
        ValueError: the target column is missing or holds nulls or values other than 0/1.
    """
    name = contract.target
    if name not in df.columns:
        raise ValueError(f"input frame lacks the target column {name!r}")
    values = df[name]
    if values.isna().any():
        raise ValueError(f"target column {name!r} has {int(values.isna().sum())} null value(s)")
    y = values.astype("int64").to_numpy()
    bad = sorted(set(np.unique(y).tolist()) - {0, 1})
    if bad:
        raise ValueError(f"target column {name!r}: expected only 0 and 1, found {bad}")
    return y
