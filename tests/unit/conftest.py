"""Fixtures shared by the unit tests of every room."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from services import wait_until

from continuous_training.config import DatasetContract, load_contract
from continuous_training.lake import Lake


@pytest.fixture(scope="session")
def contract() -> DatasetContract:
    """The shipped dataset contract (``include/config/dataset.yaml``)."""
    return load_contract()


@pytest.fixture
def lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lake:
    """An empty lake of the test's own, also what ``Lake.from_settings()`` gives (``CT_LAKE``)."""
    monkeypatch.setenv("CT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CT_LAKE", str(tmp_path / "lake"))
    return Lake.from_settings()


@pytest.fixture(scope="session")
def synthetic_rows(contract: DatasetContract) -> Callable[[int, int], pd.DataFrame]:
    """``synthetic_rows(n, seed)``: rows of the contract's features (numbers as float, categories as
    str) plus the key column, uniform over each feature's range and values."""

    def make(n: int, seed: int) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        data: dict[str, Any] = {contract.key: [f"app-{seed}-{i}" for i in range(n)]}
        for col in contract.features:
            if col.is_numeric:
                values = rng.uniform(col.min, col.max, n)
                data[col.name] = np.round(values) if col.type == "integer" else values
            else:
                data[col.name] = rng.choice(np.array(col.values, dtype=object), n)
        return pd.DataFrame(data)

    return make


@pytest.fixture(scope="session")
def feature_columns(contract: DatasetContract) -> Callable[[pd.DataFrame], dict[str, np.ndarray]]:
    """``feature_columns(frame)``: the frame's features as the typed columns the endpoint scores
    (float64 numbers, object text), as :func:`continuous_training.serving.request.columns_from_body`
    gives them."""

    def columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
        return {
            col.name: frame[col.name].to_numpy(np.float64)
            if col.is_numeric
            else frame[col.name].to_numpy(object)
            for col in contract.features
        }

    return columns


@pytest.fixture(scope="session")
def wait_for() -> Callable[[Callable[[], Any], float, str], None]:
    """``wait_for(predicate, timeout, what)``: poll until ``predicate()`` is true, else fail naming ``what``."""

    def wait(predicate: Callable[[], Any], timeout: float, what: str) -> None:
        wait_until(predicate, timeout, what, interval=0.05)

    return wait
