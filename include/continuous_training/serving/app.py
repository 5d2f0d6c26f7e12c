"""The prediction endpoint: FastAPI serving whatever model version the ``champion`` alias names.

Start it with ``uvicorn continuous_training.serving.app:create_app --factory --workers 2``. Each
worker process holds its own model, polls the registry alias and logs its predictions to the lake.

Serving notes (measured, see MLFLOW-SERVING-NOTES.md and ``bench/serving.py``): bodies are parsed
with orjson into typed columns, without a DataFrame. A HistGradientBoosting champion is scored by a
compiled scorer (:class:`HistGradientBoostingScorer`: the same trees without scikit-learn's per-call
validation and ColumnTransformer, checked bit-identical to ``predict_proba`` at load) on one OpenMP
thread, on the event loop for bodies up to :data:`INLINE_MAX_BODY_BYTES`. Other models, and larger
bodies, are scored in a worker thread; the process should run with ``OMP_NUM_THREADS=1`` (``ct stack
up`` sets it): HistGradientBoosting's OpenMP spin-waits otherwise collapse throughput.

Endpoints:
    ``POST /predict``: score rows (three body formats, see :func:`frame_from_body`).
    ``GET /health``: which model version this worker serves.
    ``POST /reload``: check the alias now (loopback clients only).
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from continuous_training.config import Column, DatasetContract, load_contract, load_policy
from continuous_training.serving.predlog import PredictionLog
from continuous_training.settings import Settings, load_settings
from continuous_training.storage import Lake

log = logging.getLogger(__name__)

ALIAS = "champion"
BODY_FORMATS = ("rows", "dataframe_records", "dataframe_split")
REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_LENGTH = 128
# Bodies up to this size are scored on the event loop when the compiled scorer serves (a 100-row
# body is ~55 KB and scores in ~3 ms): the hop to a worker thread and the GIL handoffs between many
# scoring threads cost more than they save and widen the latency tail (measured, see bench/serving.py).
# Larger bodies, and models scored by predict_proba (OpenMP), go to a worker thread.
INLINE_MAX_BODY_BYTES = 256 * 1024
# How long startup waits for the first alias lookup before serving 503s; MLflow's client retries
# an unreachable server for minutes, and a worker must come up (and report no_model) regardless.
STARTUP_WAIT_SECONDS = 30.0
# A version that failed to load is retried after this long (or at once on /reload), not every poll.
FAILED_LOAD_RETRY_SECONDS = 30.0


class OrjsonResponse(Response):
    """JSON via orjson, numpy arrays included (FastAPI deprecated its own ORJSONResponse)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class RequestError(ValueError):
    """A prediction request the endpoint refuses (HTTP 422).

    Args:
        message: what is wrong, for a person.
        row: index of the offending row in the request, if one row is at fault.
        column: the offending column, if any.
        expected: what was expected instead.
    """

    def __init__(
        self, message: str, *, row: int | None = None, column: str | None = None, expected: str | None = None
    ) -> None:
        super().__init__(message)
        self.row = row
        self.column = column
        self.expected = expected

    def body(self, request_id: str) -> dict[str, Any]:
        """The JSON error body."""
        return {
            "request_id": request_id,
            "error": str(self),
            "row": self.row,
            "column": self.column,
            "expected": self.expected,
        }


class NoModelError(RuntimeError):
    """No champion model is loaded yet (HTTP 503)."""


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r}: expected a number of seconds") from exc
    if not value > 0:
        raise ValueError(f"environment variable {name}={raw!r}: expected a positive number of seconds")
    return value


# ------------------------------------------------------------------------------------------ parsing


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_types(values: list[Any], col: Column, types: set[type], expected: str) -> None:
    """Refuse the first value whose exact type is not in ``types`` (null too, unless nullable)."""
    allowed = types | {type(None)} if col.nullable else types
    if set(map(type, values)) <= allowed:
        return
    expected = f"{expected} or null" if col.nullable else expected
    if col.values:
        expected += f" (known values: {', '.join(map(str, col.values))})"
    i, bad = next((i, v) for i, v in enumerate(values) if type(v) not in allowed)
    raise RequestError(
        f"row {i}, column {col.name!r}: expected {expected}, got {_show(bad)} ({_type_name(bad)})",
        row=i,
        column=col.name,
        expected=expected,
    )


def _numeric_column(values: list[Any], col: Column) -> np.ndarray:
    # bool is excluded on purpose: type(True) is bool, not int, and True is no age.
    _check_types(values, col, {int, float}, "a number")
    array = np.array(values, dtype=np.float64)
    if col.type == "integer":
        fractional = np.flatnonzero(np.isfinite(array) & (array != np.floor(array)))
        if len(fractional):
            i = int(fractional[0])
            raise RequestError(
                f"row {i}, column {col.name!r}: expected an integer, got {_show(values[i])}",
                row=i,
                column=col.name,
                expected="an integer",
            )
    return array


def _text_column(values: list[Any], col: Column) -> np.ndarray:
    _check_types(values, col, {str}, "a string")
    # Unknown category values pass: the model maps unseen levels to missing.
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _columns_from_records(rows: Any, fmt: str, wanted: list[str], key: str) -> dict[str, list[Any]]:
    if not isinstance(rows, list):
        raise RequestError(
            f"{fmt!r}: expected a list of row objects, got {_type_name(rows)}", expected="a list"
        )
    for i, row in enumerate(rows):
        if type(row) is not dict:
            raise RequestError(
                f"{fmt}[{i}]: expected an object of column -> value, got {_type_name(row)}",
                row=i,
                expected="an object of column -> value",
            )
    columns: dict[str, list[Any]] = {}
    for name in wanted:
        try:
            columns[name] = [row[name] for row in rows]
        except KeyError:
            i = next(i for i, row in enumerate(rows) if name not in row)
            raise RequestError(
                f"row {i}: missing feature column {name!r}",
                row=i,
                column=name,
                expected=f"a value for {name!r}",
            ) from None
    if any(key in row for row in rows):
        columns[key] = [row.get(key) for row in rows]
    return columns


def _columns_from_split(split: Any, wanted: list[str], key: str) -> dict[str, list[Any]]:
    if not isinstance(split, dict):
        raise RequestError(
            f"'dataframe_split': expected an object with 'columns' and 'data', got {_type_name(split)}",
            expected="an object with 'columns' and 'data'",
        )
    names, data = split.get("columns"), split.get("data")
    if not isinstance(names, list) or not all(type(n) is str for n in names):
        raise RequestError(
            "'dataframe_split.columns': expected a list of column names", expected="a list of strings"
        )
    if not isinstance(data, list):
        raise RequestError("'dataframe_split.data': expected a list of rows", expected="a list of lists")
    for i, row in enumerate(data):
        if type(row) is not list or len(row) != len(names):
            raise RequestError(
                f"dataframe_split.data[{i}]: expected a list of {len(names)} values (one per column), "
                f"got {_show(row)}",
                row=i,
                expected=f"a list of {len(names)} values",
            )
    position = {}
    for j, name in enumerate(names):
        position.setdefault(name, j)
    columns: dict[str, list[Any]] = {}
    for name in wanted:
        if name not in position:
            raise RequestError(
                f"missing feature column {name!r} in 'dataframe_split.columns'",
                row=0 if data else None,
                column=name,
                expected=f"a value for {name!r}",
            )
        j = position[name]
        columns[name] = [row[j] for row in data]
    if key in position:
        j = position[key]
        columns[key] = [row[j] for row in data]
    return columns


def columns_from_body(body: bytes, contract: DatasetContract) -> tuple[dict[str, np.ndarray], int]:
    """Parse and check a ``/predict`` body into typed columns of the contract's features.

    The request path works on these columns directly: building a DataFrame per request costs more
    than scoring one row (see :func:`frame_from_body` for the frame).

    Accepted bodies: ``{"rows": [{...}, ...]}``, MLflow's ``{"dataframe_records": [{...}, ...]}`` and
    ``{"dataframe_split": {"columns": [...], "data": [[...], ...]}}``. Every contract feature must
    be present in every row: numbers for numeric features (integral for integer ones), strings for
    categories and strings; null only where the contract says ``nullable``. Category values outside
    the contract's list are accepted. Other columns are ignored, except the key column, kept as the
    row id when sent.

    Args:
        body: the raw request body.
        contract: the dataset contract.

    Returns:
        The columns (features in contract order: float64 arrays for numbers, object arrays holding
        str for text; plus the key column, str or None, when the request has it) and the row count.

    Raises:
        RequestError: the body is not JSON, not one of the formats, has no rows, or a row lacks a
            feature or holds a wrongly typed value (the row index and column are named).
    """
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"request body is not valid JSON: {exc}", expected="a JSON object") from None
    formats = [f for f in BODY_FORMATS if isinstance(payload, dict) and f in payload]
    if len(formats) != 1:
        got = sorted(payload) if isinstance(payload, dict) else _type_name(payload)
        raise RequestError(
            f"request body: expected a JSON object with exactly one of {list(BODY_FORMATS)}, got {got}",
            expected=f"one of {list(BODY_FORMATS)}",
        )
    fmt = formats[0]
    key = contract.key
    wanted = contract.feature_names
    if fmt == "dataframe_split":
        raw = _columns_from_split(payload[fmt], wanted, key)
    else:
        raw = _columns_from_records(payload[fmt], fmt, wanted, key)
    n_rows = len(raw[wanted[0]])
    if n_rows == 0:
        raise RequestError(f"request body {fmt!r} has no rows", expected="at least one row")
    columns: dict[str, np.ndarray] = {}
    for col in contract.features:
        values = raw[col.name]
        columns[col.name] = _numeric_column(values, col) if col.is_numeric else _text_column(values, col)
    if key in raw:
        ids = np.empty(n_rows, dtype=object)
        ids[:] = [None if v is None else str(v) for v in raw[key]]
        columns[key] = ids
    return columns, n_rows


def frame_from_body(body: bytes, contract: DatasetContract) -> pd.DataFrame:
    """Parse and check a ``/predict`` body into a typed frame of the contract's features.

    Accepted bodies and checks: see :func:`columns_from_body`.

    Args:
        body: the raw request body.
        contract: the dataset contract.

    Returns:
        One row per request row: the features in contract order (float64 for numbers, object
        holding str for text), plus the key column (str or None) when the request has it.

    Raises:
        RequestError: the body is not JSON, not one of the formats, has no rows, or a row lacks a
            feature or holds a wrongly typed value (the row index and column are named).
    """
    columns, _ = columns_from_body(body, contract)
    return pd.DataFrame(columns, copy=False)


def sample_frame(contract: DatasetContract) -> pd.DataFrame:
    """A one-row frame of plausible feature values, used to warm up and check a freshly loaded model.

    Args:
        contract: the dataset contract.

    Returns:
        One row: each numeric feature at the middle of its range (or 0), each text feature at its
        first known value (or "").
    """
    row: dict[str, Any] = {}
    for col in contract.features:
        if col.is_numeric:
            low = col.min if col.min is not None else 0.0
            high = col.max if col.max is not None else low
            value = (float(low) + float(high)) / 2
            row[col.name] = [float(round(value)) if col.type == "integer" else value]
        else:
            row[col.name] = [str(col.values[0]) if col.values else ""]
    return pd.DataFrame(row)


# ---------------------------------------------------------------------------------------- the scorer

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


# ----------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ServedModel:
    """A loaded model version; replaced as a whole, so a request sees one consistent version."""

    name: str
    version: str
    model: Any
    loaded_at: datetime
    scorer: Scorer
    scorer_kind: str


def load_model_version(name: str, version: str) -> Any:
    """The registry's loader (:func:`continuous_training.registry.load_model_version`), imported lazily."""
    from continuous_training.registry import load_model_version as registry_load

    return registry_load(name, version)


def _is_missing_alias(exc: Exception) -> bool:
    from mlflow.exceptions import RestException

    if not isinstance(exc, RestException):
        return False
    # An unknown model is RESOURCE_DOES_NOT_EXIST; a known model without the alias is
    # INVALID_PARAMETER_VALUE "...alias champion not found" (measured on mlflow 3.17.2).
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST" or (
        exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc)
    )


class ModelHolder:
    """Keeps the ``champion`` version loaded and swaps it when the alias moves.

    A daemon thread resolves the alias every ``poll_seconds``. A new version is loaded and warmed up
    in that thread, then published with one reference assignment: requests already running finish
    on the model they started with, and none waits for or fails because of a swap. A version that
    fails to load (or to score a sample row) is logged, reported in ``last_error``, and the previous
    model keeps serving.

    Args:
        tracking_uri: the MLflow tracking/registry server.
        model_name: the registered model whose ``champion`` alias is served.
        contract: the dataset contract (for the warm-up row).
        poll_seconds: alias polling period.
        loader: ``(name, version) -> estimator``; default :func:`load_model_version`.
    """

    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        contract: DatasetContract,
        poll_seconds: float = 2.0,
        loader: Callable[[str, str], Any] | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.contract = contract
        self.poll_seconds = poll_seconds
        self._loader = loader or load_model_version
        self._current: ServedModel | None = None
        self._check_lock = threading.Lock()
        self._stop = threading.Event()
        self._first_check = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._registry_error: str | None = None
        self._failed: tuple[str, float, str] | None = None  # (version, monotonic time, message)
        self._alias_state: str | None = None  # last logged alias state, to log changes only

    @property
    def current(self) -> ServedModel | None:
        """The model serving now (None before the first successful load)."""
        return self._current

    @property
    def last_error(self) -> str | None:
        """The latest registry or load failure not yet resolved."""
        if self._registry_error:
            return self._registry_error
        return self._failed[2] if self._failed else None

    def _resolve_alias(self) -> str | None:
        from mlflow import MlflowClient

        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        try:
            return str(self._client.get_model_version_by_alias(self.model_name, ALIAS).version)
        except Exception as exc:
            if _is_missing_alias(exc):
                return None
            raise

    def _note_alias(self, state: str, message: str, *args: Any) -> None:
        if state != self._alias_state:
            self._alias_state = state
            log.info(message, *args)

    def check(self, force: bool = False) -> ServedModel | None:
        """Resolve the alias now and load its version if it is not the one serving.

        Never raises: failures are logged and reported by :attr:`last_error`.

        Args:
            force: retry a version that failed to load without waiting for the retry delay.

        Returns:
            The model serving after the check.
        """
        with self._check_lock:
            try:
                version = self._resolve_alias()
            except Exception as exc:
                message = f"registry {self.tracking_uri} unreachable or failing: {exc}"
                if self._registry_error is None:
                    log.warning("%s (keeps polling)", message)
                self._registry_error = message
                return self._current
            if self._registry_error is not None:
                log.info("Registry %s answers again", self.tracking_uri)
                self._registry_error = None
            current = self._current
            if version is None:
                if current is None:
                    self._note_alias(
                        "none", "Model %r has no %r alias yet: /predict answers 503", self.model_name, ALIAS
                    )
                else:
                    # The endpoint serves the champion and nothing else: a removed alias (e.g. a first
                    # deploy rolled back) must not leave the rejected version answering.
                    self._note_alias(
                        "gone",
                        "Alias %r of %r was removed; stopped serving version %s: /predict answers 503",
                        ALIAS,
                        self.model_name,
                        current.version,
                    )
                    self._current = None
                return None
            self._note_alias(
                f"v{version}", "Alias %r of %r points at version %s", ALIAS, self.model_name, version
            )
            if current is not None and current.version == version:
                return current
            if (
                self._failed is not None
                and self._failed[0] == version
                and not force
                and time.monotonic() - self._failed[1] < FAILED_LOAD_RETRY_SECONDS
            ):
                return current
            self._load(version)
            return self._current

    def _load(self, version: str) -> None:
        started = time.monotonic()
        try:
            model = self._loader(self.model_name, version)
            scores = np.asarray(model.predict_proba(sample_frame(self.contract)))
            if scores.ndim != 2 or scores.shape[0] != 1 or scores.shape[1] < 2:
                raise ValueError(f"predict_proba on one row returned shape {scores.shape}; expected (1, 2)")
        except Exception as exc:
            message = f"loading {self.model_name} version {version} failed: {type(exc).__name__}: {exc}"
            self._failed = (version, time.monotonic(), message)
            serving = self._current.version if self._current else None
            log.exception("%s; still serving version %s", message, serving)
            return
        scorer, kind = compile_scorer(model, self.contract)
        previous = self._current
        self._current = ServedModel(self.model_name, version, model, datetime.now(UTC), scorer, kind)
        self._failed = None
        log.info(
            "Serving %s version %s (was %s, scorer %s), loaded in %.1f s",
            self.model_name,
            version,
            previous.version if previous else None,
            kind,
            time.monotonic() - started,
        )

    def _run(self) -> None:
        while True:
            try:
                self.check()
            except Exception:  # check() does not raise; this guards the thread against surprises
                log.exception("Alias poll failed")
            finally:
                self._first_check.set()
            if self._stop.wait(self.poll_seconds):
                return

    def start(self) -> None:
        """Start polling (the first check runs at once, in the polling thread)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="champion-poller", daemon=True)
        self._thread.start()

    def wait_first_check(self, timeout: float) -> bool:
        """Wait until the first alias check finished; True if it did within ``timeout`` seconds."""
        return self._first_check.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling (a registry call in flight is abandoned: the thread is a daemon)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def health(self) -> dict[str, Any]:
        """The ``/health`` body."""
        served = self._current
        return {
            "status": "ok" if served is not None else "no_model",
            "model_name": self.model_name,
            "model_version": served.version if served else None,
            "pid": os.getpid(),
            "loaded_at": served.loaded_at.isoformat() if served else None,
            "scorer": served.scorer_kind if served else None,
            "last_error": self.last_error,
        }


# -------------------------------------------------------------------------------------------- the app


def _request_id(request: Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER)
    if not given:
        return uuid.uuid4().hex
    if len(given) > MAX_REQUEST_ID_LENGTH or not given.isascii() or not given.isprintable():
        raise RequestError(
            f"header {REQUEST_ID_HEADER}: expected at most {MAX_REQUEST_ID_LENGTH} printable ASCII characters",
            expected=f"at most {MAX_REQUEST_ID_LENGTH} printable ASCII characters",
        )
    return given


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the prediction endpoint (the uvicorn ``--factory`` target).

    Reads the model name from ``policy.yaml`` (``CT_MODEL_NAME``), the contract from
    ``dataset.yaml``, the alias poll period from ``CT_ENDPOINT_POLL_SECONDS`` (default 2) and the
    prediction-log flush period from ``CT_ENDPOINT_FLUSH_SECONDS`` (default 2). Nothing starts until
    the app's lifespan does (uvicorn, or ``with TestClient(app)``).

    Security: there is no authentication in the embedded mode, which binds to loopback only.
    ``/reload`` additionally refuses clients that are not on loopback (403).

    Args:
        settings: where things live; default :func:`~continuous_training.settings.load_settings`.

    Returns:
        The FastAPI application.

    Raises:
        ValueError: a ``CT_ENDPOINT_*`` variable is not a positive number.
        continuous_training.config.ConfigError: the contract or policy file is invalid.
    """
    settings = settings or load_settings()
    contract = load_contract(settings.config_dir)
    model_name = load_policy(settings.config_dir).model.name
    poll_seconds = _env_seconds("CT_ENDPOINT_POLL_SECONDS", 2.0)
    flush_seconds = _env_seconds("CT_ENDPOINT_FLUSH_SECONDS", 2.0)
    holder = ModelHolder(settings.mlflow_tracking_uri, model_name, contract, poll_seconds)
    predlog = PredictionLog(Lake(settings.lake), flush_seconds=flush_seconds, contract=contract)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import mlflow

        # models:/ URIs resolve against the process-wide tracking URI; this process only serves.
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        predlog.start()
        holder.start()
        if not await run_in_threadpool(holder.wait_first_check, STARTUP_WAIT_SECONDS):
            log.warning(
                "Registry %s did not answer within %.0f s; serving 503 until it does",
                settings.mlflow_tracking_uri,
                STARTUP_WAIT_SECONDS,
            )
        # mlflow, scikit-learn and the model leave ~240k long-lived objects; a full collection over
        # them stalled a worker ~75 ms (measured). Frozen, later collections skip them.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            holder.stop()
            await run_in_threadpool(predlog.stop)

    app = FastAPI(
        title="continuous-training prediction endpoint",
        description=f"Serves the {ALIAS!r} alias of the registered model {model_name!r}.",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    app.state.holder = holder
    app.state.predlog = predlog
    app.state.contract = contract

    def score(served: ServedModel, body: bytes, request_id: str) -> dict[str, Any]:
        # On the event loop or in a worker thread (see predict): parse, score, buffer the log rows.
        served_at = datetime.now(UTC)
        columns, n_rows = columns_from_body(body, contract)
        scores = served.scorer(columns, n_rows)
        predlog.append(
            columns,
            scores,
            request_id=request_id,
            model_name=served.name,
            model_version=served.version,
            served_at=served_at,
        )
        return {
            "request_id": request_id,
            "model_name": served.name,
            "model_version": served.version,
            "predictions": scores,
        }

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        """Score the rows of the body with the champion model."""
        request_id = ""
        try:
            request_id = _request_id(request)
            body = await request.body()
            served = holder.current
            if served is None:
                raise NoModelError
            if served.scorer_kind == COMPILED and len(body) <= INLINE_MAX_BODY_BYTES:
                result = score(served, body, request_id)
            else:
                result = await run_in_threadpool(score, served, body, request_id)
        except RequestError as exc:
            # Only an invalid X-Request-ID header fails before the id exists.
            request_id = request_id or uuid.uuid4().hex
            # The endpoint runs without an access log: refused requests are logged here.
            log.warning("Refused request %s (422): %s", request_id, exc)
            return OrjsonResponse(
                exc.body(request_id), status_code=422, headers={REQUEST_ID_HEADER: request_id}
            )
        except NoModelError:
            log.warning("Refused request %s (503): no %r model of %r loaded", request_id, ALIAS, model_name)
            content = {
                "request_id": request_id,
                "error": f"no {ALIAS!r} model of {model_name!r} is loaded yet",
                "last_error": holder.last_error,
            }
            return OrjsonResponse(content, status_code=503, headers={REQUEST_ID_HEADER: request_id})
        except Exception as exc:
            log.exception("Prediction failed (request %s)", request_id)
            content = {"request_id": request_id, "error": f"prediction failed: {type(exc).__name__}: {exc}"}
            return OrjsonResponse(content, status_code=500, headers={REQUEST_ID_HEADER: request_id})
        return OrjsonResponse(result, headers={REQUEST_ID_HEADER: request_id})

    @app.get("/health")
    async def health() -> Response:
        """Which model version this worker serves, its pid and the latest failure."""
        return OrjsonResponse(holder.health())

    @app.post("/reload")
    async def reload(request: Request) -> Response:
        """Check the alias now and load its version if it changed; answers like /health.

        Loopback clients only, and no authentication: the embedded stack listens on loopback.
        """
        client = request.client.host if request.client else None
        if not _is_loopback(client):
            return OrjsonResponse(
                {"error": f"/reload is for loopback clients only, not {client}"}, status_code=403
            )
        await run_in_threadpool(holder.check, True)
        return OrjsonResponse(holder.health())

    return app
