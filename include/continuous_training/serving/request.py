"""Parsing a ``/predict`` body into typed columns of the contract's features, or a clear refusal.

The request path works on columns directly: building a DataFrame per request costs more than scoring
one row. A refusal (:class:`RequestError`) carries its HTTP status and names what was expected, and the
row and the column at fault where there is one: 400 for a body that is not UTF-8 JSON (NaN and
Infinity literals, numbers beyond a double, nesting deeper than 1024 levels included: orjson refuses
them), 413 for more rows than allowed, 422 for a wrong structure, a missing feature, a wrongly typed
value or (when the policy rejects them) a value outside the contract.

A refusal never quotes what the client sent: not a value, not a column name outside the contract, not
the JSON parser's message (which can quote the input). It names the type of a wrong value ("got a
string") and the contract's own names, types, ranges and categories.

Values outside the contract (a number outside its column's ``min``/``max`` or not finite, a category
not in its ``values``) are found with a few numpy operations on the columns already built
(:class:`RequestParser`), so the one-row hot path stays fast; what happens to them is the policy's
``serving.out_of_range``: ``reject`` refuses the request (422), ``score`` scores it and reports the
flagged rows (:attr:`ParsedRequest.flagged`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pandas as pd

from continuous_training.config import OUT_OF_RANGE_ACTIONS, Column, DatasetContract

BODY_FORMATS = ("rows", "dataframe_records", "dataframe_split")
#: orjson's nesting limit (it refuses deeper documents).
MAX_JSON_DEPTH = 1024
JSON_EXPECTED = (
    f"a UTF-8 JSON object (finite numbers, no NaN or Infinity; nested at most {MAX_JSON_DEPTH} levels)"
)


class RequestError(ValueError):
    """A prediction request the endpoint refuses.

    Its message is written by the endpoint and never quotes the client's input.

    Args:
        message: what is wrong, for a person.
        row: index of the offending row in the request, if one row is at fault.
        column: the offending contract column, if any.
        expected: what was expected instead.
        status: the HTTP status (422 unless said otherwise).
    """

    def __init__(
        self,
        message: str,
        *,
        row: int | None = None,
        column: str | None = None,
        expected: str | None = None,
        status: int = 422,
    ) -> None:
        super().__init__(message)
        self.row = row
        self.column = column
        self.expected = expected
        self.status = status

    def body(self, request_id: str) -> dict[str, Any]:
        """The JSON error body."""
        return {
            "request_id": request_id,
            "error": str(self),
            "row": self.row,
            "column": self.column,
            "expected": self.expected,
        }


_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
    dict: "an object",
    list: "a list",
}


def _type_name(value: Any) -> str:
    """What kind of JSON value ``value`` is (never the value itself)."""
    return _TYPE_NAMES.get(type(value), "a value of another type")


def _json_problem(exc: orjson.JSONDecodeError) -> str:
    """What is wrong with a body orjson refused, in our words (its message may quote the input)."""
    text = str(exc)
    if "BOM" in text:
        return "starts with a byte order mark"
    if "UTF-8" in text:
        return "is not valid UTF-8"
    if "depth" in text or "recursion" in text:
        return f"nests deeper than {MAX_JSON_DEPTH} levels"
    if "infinity" in text.lower():
        return "holds a number too large for a 64-bit float"
    return "is not valid JSON"


def _bound(value: float) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def _range_text(low: float, high: float) -> str:
    if np.isfinite(low) and np.isfinite(high):
        return f"a number between {_bound(low)} and {_bound(high)}"
    if np.isfinite(low):
        return f"a finite number of at least {_bound(low)}"
    if np.isfinite(high):
        return f"a finite number of at most {_bound(high)}"
    return "a finite number"


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
        f"row {i}, column {col.name!r}: expected {expected}, got {_type_name(bad)}",
        row=i,
        column=col.name,
        expected=expected,
    )


def _records(payload: Any, fmt: str, max_rows: int | None) -> list[Any]:
    rows = payload[fmt]
    if not isinstance(rows, list):
        raise RequestError(
            f"{fmt!r}: expected a list of row objects, got {_type_name(rows)}", expected="a list"
        )
    _check_row_count(len(rows), max_rows)
    return rows


def _check_row_count(n_rows: int, max_rows: int | None) -> None:
    if max_rows is not None and n_rows > max_rows:
        raise RequestError(
            f"request body has more than {max_rows} rows; send at most {max_rows} rows per request",
            expected=f"at most {max_rows} rows",
            status=413,
        )


def _columns_from_records(rows: list[Any], fmt: str, wanted: list[str], key: str) -> dict[str, list[Any]]:
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


def _split(payload: Any, max_rows: int | None) -> tuple[list[Any], list[Any]]:
    split = payload["dataframe_split"]
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
    _check_row_count(len(data), max_rows)
    return names, data


def _columns_from_split(
    names: list[str], data: list[Any], wanted: list[str], key: str
) -> dict[str, list[Any]]:
    width = len(names)
    for i, row in enumerate(data):
        if type(row) is not list or len(row) != width:
            got = f"a list of {len(row)} values" if type(row) is list else _type_name(row)
            raise RequestError(
                f"dataframe_split.data[{i}]: expected a list of {width} values (one per column), got {got}",
                row=i,
                expected=f"a list of {width} values",
            )
    position: dict[str, int] = {}
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


@dataclass(frozen=True)
class ParsedRequest:
    """A ``/predict`` body as typed columns.

    Attributes:
        columns: the contract's features in contract order (float64 arrays for numbers, object arrays
            holding str for text), plus the key column (str or None) when the request has it.
        n_rows: the row count.
        flagged: contract column -> boolean mask of the rows whose value lies outside the contract
            (only columns with such a row), or None when every value is inside (the common case).
    """

    columns: dict[str, np.ndarray]
    n_rows: int
    flagged: dict[str, np.ndarray] | None = None

    def flagged_rows(self) -> list[dict[str, Any]]:
        """The flagged rows for the response: ``[{"row": i, "columns": [name, ...]}, ...]`` (no values)."""
        if not self.flagged:
            return []
        names = list(self.flagged)
        masks = np.vstack([self.flagged[name] for name in names])
        return [
            {"row": int(i), "columns": [names[j] for j in np.flatnonzero(masks[:, i])]}
            for i in np.flatnonzero(masks.any(axis=0))
        ]

    def flag_column(self, flagged_rows: list[dict[str, Any]] | None = None) -> np.ndarray | None:
        """The prediction log's ``out_of_range`` column: per row, its flagged columns joined by commas,
        or None; None as a whole when no row is flagged.

        Args:
            flagged_rows: :meth:`flagged_rows`, if already computed.
        """
        if not self.flagged:
            return None
        flags = np.full(self.n_rows, None, dtype=object)
        for entry in self.flagged_rows() if flagged_rows is None else flagged_rows:
            flags[entry["row"]] = ",".join(entry["columns"])
        return flags


class RequestParser:
    """Parses ``/predict`` bodies against one contract and serving policy (built once per app).

    Everything the checks need (column groups, bounds, category sets) is computed here, so that a
    request pays only for its own parsing: the numeric features become one float64 matrix (one numpy
    conversion; the columns are its rows), checked against the bounds in one comparison.

    Args:
        contract: the dataset contract.
        max_rows: most rows per request (413 beyond); None for no limit.
        out_of_range: ``score`` (flag values outside the contract) or ``reject`` (422).

    Raises:
        ValueError: ``out_of_range`` is not one of :data:`~continuous_training.config.OUT_OF_RANGE_ACTIONS`.
    """

    def __init__(
        self, contract: DatasetContract, *, max_rows: int | None = None, out_of_range: str = "score"
    ) -> None:
        if out_of_range not in OUT_OF_RANGE_ACTIONS:
            raise ValueError(f"out_of_range={out_of_range!r}: expected one of {list(OUT_OF_RANGE_ACTIONS)}")
        self.contract = contract
        self.max_rows = max_rows
        self.reject = out_of_range == "reject"
        self._features = list(contract.features)
        self._wanted = contract.feature_names
        self._key = contract.key
        self._numeric = [c for c in self._features if c.is_numeric]
        self._text = [c for c in self._features if not c.is_numeric]
        self._integer_rows = np.array(
            [i for i, c in enumerate(self._numeric) if c.type == "integer"], dtype=np.intp
        )
        self._nullable_integer = any(c.nullable for c in self._numeric if c.type == "integer")
        self._nullable_numeric = any(c.nullable for c in self._numeric)
        inf = float("inf")
        # Shaped (numeric features, 1) to broadcast over the rows of the number matrix.
        self._low = np.array([-inf if c.min is None else float(c.min) for c in self._numeric]).reshape(-1, 1)
        self._high = np.array([inf if c.max is None else float(c.max) for c in self._numeric]).reshape(-1, 1)
        self._unbounded = not (np.isfinite(self._low).all() and np.isfinite(self._high).all())
        self._categories = [
            (c, frozenset(str(v) for v in c.values) | ({None} if c.nullable else frozenset()))
            for c in self._text
            if c.values
        ]

    def parse(self, body: bytes) -> ParsedRequest:
        """Parse and check a ``/predict`` body.

        Accepted bodies: ``{"rows": [{...}, ...]}``, MLflow's ``{"dataframe_records": [{...}, ...]}``
        and ``{"dataframe_split": {"columns": [...], "data": [[...], ...]}}``. Every contract feature
        must be present in every row: numbers for numeric features (integral for integer ones),
        strings for categories and strings; null only where the contract says ``nullable``. Other
        columns are ignored, except the key column, kept as the row id when sent.

        Args:
            body: the raw request body.

        Returns:
            The typed columns, the row count and the rows outside the contract.

        Raises:
            RequestError: 400 the body is not UTF-8 JSON; 413 it has more than ``max_rows`` rows; 422
                it is not one of the formats, has no rows, a row lacks a feature or holds a wrongly
                typed value, or (``reject``) a value outside the contract (row and column named).
        """
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise RequestError(
                f"request body {_json_problem(exc)} (at position {exc.pos})",
                expected=JSON_EXPECTED,
                status=400,
            ) from None
        formats = [f for f in BODY_FORMATS if f in payload] if type(payload) is dict else []
        if len(formats) != 1:
            got = f"an object with {len(formats)} of them" if type(payload) is dict else _type_name(payload)
            raise RequestError(
                f"request body: expected a JSON object with exactly one of {list(BODY_FORMATS)}, got {got}",
                expected=f"one of {list(BODY_FORMATS)}",
            )
        fmt = formats[0]
        if fmt == "dataframe_split":
            names, data = _split(payload, self.max_rows)
            raw = _columns_from_split(names, data, self._wanted, self._key)
        else:
            raw = _columns_from_records(_records(payload, fmt, self.max_rows), fmt, self._wanted, self._key)
        n_rows = len(raw[self._wanted[0]])
        if n_rows == 0:
            raise RequestError(f"request body {fmt!r} has no rows", expected="at least one row")

        # Numbers: one matrix (numeric features x rows); each column is a contiguous row view of it.
        # bool is excluded on purpose: type(True) is bool, not int, and True is no age.
        for col in self._numeric:
            _check_types(raw[col.name], col, {int, float}, "a number")
        numbers = np.array([raw[c.name] for c in self._numeric], dtype=np.float64).reshape(
            len(self._numeric), n_rows
        )
        if len(self._integer_rows):
            whole = numbers[self._integer_rows]
            fractional = np.floor(whole) != whole
            if self._nullable_integer:
                fractional &= ~np.isnan(whole)
            if fractional.any():
                j, i = (int(x[0]) for x in np.nonzero(fractional))
                col = self._numeric[int(self._integer_rows[j])]
                raise RequestError(
                    f"row {i}, column {col.name!r}: expected an integer, got a number with a fractional part",
                    row=i,
                    column=col.name,
                    expected="an integer",
                )
        for col in self._text:
            _check_types(raw[col.name], col, {str}, "a string")
        flagged = self._out_of_range(numbers, raw, n_rows)

        columns: dict[str, np.ndarray] = {}
        position = 0
        for col in self._features:
            if col.is_numeric:
                columns[col.name] = numbers[position]
                position += 1
            else:
                array = np.empty(n_rows, dtype=object)
                array[:] = raw[col.name]
                columns[col.name] = array
        if self._key in raw:
            ids = np.empty(n_rows, dtype=object)
            ids[:] = [None if v is None else str(v) for v in raw[self._key]]
            columns[self._key] = ids
        return ParsedRequest(columns, n_rows, flagged)

    def _out_of_range(
        self, numbers: np.ndarray, raw: dict[str, list[Any]], n_rows: int
    ) -> dict[str, np.ndarray] | None:
        """Column -> mask of rows outside the contract (None if none); ``reject`` raises instead."""
        flagged: dict[str, np.ndarray] = {}
        inside = (numbers >= self._low) & (numbers <= self._high)
        if self._unbounded:
            inside &= np.isfinite(numbers)  # finite bounds exclude +-inf already
        if self._nullable_numeric:
            inside |= np.isnan(numbers)  # null, in a nullable column: missing, not out of range
        if not inside.all():
            for j in np.flatnonzero(~inside.all(axis=1)):
                flagged[self._numeric[j].name] = ~inside[j]
        for col, allowed in self._categories:
            values = raw[col.name]
            if not allowed.issuperset(values):
                flagged[col.name] = np.fromiter((v not in allowed for v in values), bool, n_rows)
        if not flagged:
            return None
        if self.reject:
            # The first flagged row; within it, the first column in contract order.
            order = {c.name: k for k, c in enumerate(self._features)}
            row = min(int(np.flatnonzero(mask)[0]) for mask in flagged.values())
            name = min((n for n, mask in flagged.items() if mask[row]), key=order.__getitem__)
            raise self._range_error(row, self.contract.column(name))
        # Keep contract order, so that flags read the same whichever check found them.
        return {c.name: flagged[c.name] for c in self._features if c.name in flagged}

    def _range_error(self, row: int, col: Column) -> RequestError:
        if col.is_numeric:
            j = self._numeric.index(col)
            expected = _range_text(float(self._low[j, 0]), float(self._high[j, 0]))
        else:
            expected = f"one of {', '.join(map(str, col.values or ()))}"
        return RequestError(
            f"row {row}, column {col.name!r}: expected {expected} (the contract's range; "
            "this endpoint rejects values outside it)",
            row=row,
            column=col.name,
            expected=expected,
        )


# One parser per contract object for the module-level helpers (their callers pass the same contract).
_PARSERS: dict[int, tuple[DatasetContract, RequestParser]] = {}


def _parser(contract: DatasetContract, max_rows: int | None) -> RequestParser:
    if max_rows is not None:
        return RequestParser(contract, max_rows=max_rows)
    entry = _PARSERS.get(id(contract))
    if entry is None or entry[0] is not contract:
        entry = (contract, RequestParser(contract))
        _PARSERS[id(contract)] = entry
    return entry[1]


def columns_from_body(
    body: bytes, contract: DatasetContract, *, max_rows: int | None = None
) -> tuple[dict[str, np.ndarray], int]:
    """Parse and check a ``/predict`` body into typed columns of the contract's features.

    The request path works on these columns directly: building a DataFrame per request costs more
    than scoring one row (see :func:`frame_from_body` for the frame). Values outside the contract
    are accepted (the endpoint's :class:`RequestParser` flags or rejects them by policy).

    Accepted bodies and checks: see :meth:`RequestParser.parse`.

    Args:
        body: the raw request body.
        contract: the dataset contract.
        max_rows: most rows accepted (413 beyond); None for no limit.

    Returns:
        The columns (features in contract order: float64 arrays for numbers, object arrays holding
        str for text; plus the key column, str or None, when the request has it) and the row count.

    Raises:
        RequestError: the body is not JSON (400), has too many rows (413), is not one of the formats,
            has no rows, or a row lacks a feature or holds a wrongly typed value (422; the row index
            and column are named).
    """
    parsed = _parser(contract, max_rows).parse(body)
    return parsed.columns, parsed.n_rows


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
        RequestError: as :func:`columns_from_body`.
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
