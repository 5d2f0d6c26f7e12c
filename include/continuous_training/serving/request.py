"""Parsing a ``/predict`` body into typed columns of the contract's features, or a clear refusal.

The request path works on columns directly: building a DataFrame per request costs more than scoring
one row. A refusal (:class:`RequestError`, HTTP 422) names the row and the column at fault and what was
expected.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pandas as pd

from continuous_training.config import Column, DatasetContract

BODY_FORMATS = ("rows", "dataframe_records", "dataframe_split")


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
