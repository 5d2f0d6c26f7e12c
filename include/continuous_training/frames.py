"""Typing raw data to the dataset contract, shared by validation, training and the endpoint.

Raw data is kept as text (what landed, verbatim); typing happens here, once, with the same rules
everywhere: integers -> pandas ``Int64`` (nullable), floats -> ``float64``, strings and categories ->
``object`` holding ``str`` (not pandas ``category``, so unseen levels stay visible), timestamps ->
``datetime64[ns, UTC]``. A value that does not parse becomes null and is counted, so validation can
refuse the batch and say which column held what.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from continuous_training.config import Column, DatasetContract

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

log = logging.getLogger(__name__)

_DTYPES = {
    "integer": "Int64",
    "float": "float64",
    "string": "object",
    "category": "object",
    "timestamp": "datetime64[ns, UTC]",
}


def contract_dtypes(contract: DatasetContract) -> dict[str, str]:
    """The pandas dtype of every contract column after :func:`coerce_to_contract`.

    Args:
        contract: the dataset contract.

    Returns:
        ``{column: dtype string}`` in contract order.
    """
    return {col.name: _DTYPES[col.type] for col in contract.columns}


def read_landing_csv(path: Path) -> pd.DataFrame:
    """Read a landing CSV with every column as text, so that what landed is kept verbatim.

    Only an empty field is read as null ("NA", "null" and friends stay text). A zero-byte file gives a
    frame with no rows and no columns (a failed export is refused by validation, not here).

    Args:
        path: the CSV file (with a header line).

    Returns:
        A frame of ``object`` columns holding ``str`` or NaN.

    Raises:
        ValueError: the file is not parseable CSV (names the file and the parser's reason).
    """
    path = Path(path)
    if path.stat().st_size == 0:
        log.warning("%s is empty (zero bytes): reading it as zero rows and no columns", path)
        return pd.DataFrame()
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: not a parseable UTF-8 CSV file with a header line: {exc}") from exc


def _parse_integer(values: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce")
    # "12.5" parses as a number but is not an integer: count it as a failure, do not round it away.
    integral = numbers.notna() & (numbers.abs() < 2**53) & (numbers == np.round(numbers))
    return numbers.where(integral).astype("Int64")


def _parse_float(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce").astype("float64")


def _parse_text(values: pd.Series) -> pd.Series:
    text = values.map(lambda v: v if isinstance(v, str) else str(v), na_action="ignore")
    return text.astype(object).where(text.notna(), None)


def _parse_timestamp(values: pd.Series) -> pd.Series:
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return values.dt.tz_localize("UTC").astype("datetime64[ns, UTC]")
    text = values.map(lambda v: v if isinstance(v, str) else str(v), na_action="ignore")
    # ISO 8601 only: "05/10/2026" is ambiguous, so it counts as a failure rather than a guess.
    parsed = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
    return parsed.astype("datetime64[ns, UTC]")


def _coerce_column(values: pd.Series, col: Column) -> pd.Series:
    if col.type == "integer":
        if pd.api.types.is_bool_dtype(values.dtype):
            values = values.astype("Int64")
        return _parse_integer(values)
    if col.type == "float":
        return _parse_float(values)
    if col.type == "timestamp":
        return _parse_timestamp(values)
    return _parse_text(values)


def coerce_to_contract(df: pd.DataFrame, contract: DatasetContract) -> tuple[pd.DataFrame, dict[str, int]]:
    """Type a frame to the contract, counting the values that do not parse.

    Works on text frames (landing files, raw partitions) and on already typed frames (endpoint rows,
    simulator output) alike; typing a typed frame again changes nothing.

    Args:
        df: the frame; columns absent from the contract are dropped (and logged).
        contract: the dataset contract.

    Returns:
        ``(typed, parse_errors)``: ``typed`` has exactly the contract's columns that are present, in
        contract order, with the dtypes of :func:`contract_dtypes` and the input's index;
        ``parse_errors`` maps a column to the number of non-null values that failed to parse and became
        null (columns without failures are left out).
    """
    names = set(contract.column_names)
    extra = [c for c in df.columns if c not in names]
    if extra:
        log.info("dropping columns not in contract %r: %s", contract.name, extra)
    typed: dict[str, pd.Series] = {}
    errors: dict[str, int] = {}
    for col in contract.columns:
        if col.name not in df.columns:
            continue
        values = df[col.name]
        if isinstance(values, pd.DataFrame):
            raise ValueError(f"column {col.name!r} appears {values.shape[1]} times; expected once")
        out = _coerce_column(values, col)
        failed = int((values.notna() & out.isna()).sum())
        if failed:
            errors[col.name] = failed
            log.info("column %r: %d value(s) did not parse as %s", col.name, failed, col.type)
        typed[col.name] = out
    frame = pd.DataFrame(typed, index=df.index)
    return frame, errors


#: The timestamp form the landing exports use; other ISO 8601 forms take pandas' slower parser.
_ISO_UTC = "%Y-%m-%dT%H:%M:%SZ"


def _fast_arrow_column(values: pa.ChunkedArray, col: Column) -> pd.Series | None:
    """Type a text Arrow column with Arrow's vectorised casts, or None when they cannot be trusted.

    Only a column in which every value parses the plain way takes this path (finite decimal numbers,
    integers without a fraction below 2**53, timestamps in :data:`_ISO_UTC`); then it gives exactly what
    the pandas parsers give. Anything else (a value that does not parse, ``"12.0"`` for an integer,
    ``"nan"``, another ISO 8601 form) returns None: then :func:`_mixed_number_column` or the pandas
    parsers type the column, and count the failures.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return None
    try:
        if col.type == "float":
            numbers = pc.cast(values, pa.float64())
            if pc.any(pc.invert(pc.is_finite(numbers))).as_py():
                return None
            return numbers.to_pandas().astype("float64")
        if col.type == "integer":
            numbers = pc.cast(values, pa.int64())
            if pc.any(pc.greater_equal(pc.abs(numbers), 2**53)).as_py():
                return None
            data = pc.fill_null(numbers, 0).to_numpy()
            mask = pc.is_null(numbers).to_numpy()
            return pd.Series(pd.arrays.IntegerArray(data, mask))
        if col.type == "timestamp":
            stamps = pc.strptime(values, format=_ISO_UTC, unit="ns", error_is_null=False)
            return stamps.to_pandas().dt.tz_localize("UTC").astype("datetime64[ns, UTC]")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    # Text and categories: Arrow strings become ``str`` objects (one per distinct value: Arrow
    # deduplicates them), nulls None, as _parse_text gives.
    return values.to_pandas().astype(object)


#: Plain decimal text, which Arrow's casts parse exactly as pandas does.
_PLAIN = {"integer": r"^-?[0-9]+$", "float": r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"}


def _mixed_number_column(values: pa.ChunkedArray, col: Column) -> tuple[pd.Series, int] | None:
    """Type a number column holding some values that are not plain numbers, or None if unsure.

    Arrow casts the plain values (see :data:`_PLAIN`); only the others, usually few (``"n/a"``,
    ``"12.0"`` for an integer, ``" 1"``), go through the pandas parsers, one by one as pandas would.

    Returns:
        ``(typed series, number of non-null values that did not parse)``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if col.type not in _PLAIN or not (
        pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
    ):
        return None
    plain = pc.fill_null(pc.match_substring_regex(values, _PLAIN[col.type]), False)
    target = pa.int64() if col.type == "integer" else pa.float64()
    try:
        numbers = pc.cast(pc.if_else(plain, values, pa.scalar(None, values.type)), target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    limit = (
        pc.greater_equal(pc.abs(numbers), 2**53)
        if col.type == "integer"
        else pc.invert(pc.is_finite(numbers))
    )
    if pc.any(limit).as_py():
        return None
    others = np.flatnonzero(pc.and_(pc.invert(plain), pc.is_valid(values)).to_numpy(zero_copy_only=False))
    text = pd.Series(values.take(pa.array(others, type=pa.int64())).to_pandas(), dtype=object)
    parsed = _coerce_column(text, col)
    if col.type == "integer":
        data = pc.fill_null(numbers, 0).to_numpy().copy()
        mask = pc.is_null(numbers).to_numpy(zero_copy_only=False).copy()
        data[others] = parsed.fillna(0).to_numpy(dtype="int64")
        mask[others] = parsed.isna().to_numpy()
        out = pd.Series(pd.arrays.IntegerArray(data, mask))
    else:
        floats = numbers.to_numpy(zero_copy_only=False).astype("float64", copy=True)
        floats[others] = parsed.to_numpy(dtype="float64", na_value=np.nan)
        out = pd.Series(floats)
    return out, int(parsed.isna().sum())


def iter_table_columns(
    table: pa.Table | pq.ParquetFile, contract: DatasetContract, *, categories_as_category: bool = False
) -> Iterator[tuple[Column, pd.Series, int]]:
    """Type the contract's columns of an Arrow table (or Parquet file) one at a time.

    The column-by-column form of :func:`coerce_table_to_contract`, for a caller that lays the typed
    columns out its own way (validation hands GX a frame of its own): it holds one column at a time.

    Args:
        table: the raw table, or its Parquet file (then each column is read when it is typed).
        contract: the dataset contract; its columns absent from the table are skipped, the table's
            columns absent from it are logged and skipped.
        categories_as_category: give ``category`` columns as pandas ``category`` (the same values,
            straight from Arrow's dictionary encoding) instead of ``object``.

    Yields:
        ``(column, typed series with a 0..n-1 index, number of values that did not parse)``, in
        contract order.

    Raises:
        ValueError: a contract column appears more than once.
    """
    import pyarrow as pa

    present = list(table.column_names if isinstance(table, pa.Table) else table.schema_arrow.names)
    names = set(contract.column_names)
    extra = [c for c in present if c not in names]
    if extra:
        log.info("dropping columns not in contract %r: %s", contract.name, extra)
    for col in contract.columns:
        if col.name not in present:
            continue
        if present.count(col.name) > 1:
            raise ValueError(f"column {col.name!r} appears {present.count(col.name)} times; expected once")
        values = table.column(col.name) if isinstance(table, pa.Table) else table.read([col.name]).column(0)
        if categories_as_category and col.type == "category" and pa.types.is_string(values.type):
            yield col, pd.Series(values.dictionary_encode().to_pandas()), 0
            continue
        out = _fast_arrow_column(values, col)
        failed = 0
        mixed = _mixed_number_column(values, col) if out is None else None
        if mixed is not None:
            out, failed = mixed
            if failed:
                log.info("column %r: %d value(s) did not parse as %s", col.name, failed, col.type)
        elif out is None:
            text = values.to_pandas().astype(object)
            text = text.where(text.notna(), None)
            out = _coerce_column(text, col)
            failed = int((text.notna() & out.isna()).sum())
            if failed:
                log.info("column %r: %d value(s) did not parse as %s", col.name, failed, col.type)
        del values
        yield col, out.reset_index(drop=True), failed


def coerce_table_to_contract(
    table: pa.Table | pq.ParquetFile, contract: DatasetContract
) -> tuple[pd.DataFrame, dict[str, int]]:
    """:func:`coerce_to_contract` for Arrow text columns (a raw partition), faster and lighter.

    A column whose values all parse is typed by Arrow's vectorised casts without first becoming a
    column of Python strings; in a number column with some values that are not plain numbers, only
    those go through the parsers of :func:`coerce_to_contract`, and any other column goes through
    them whole, so the typed frame and the parse-error counts are the same. Given a Parquet file,
    columns are read one at a time, so only one column's text is in memory at once.

    Args:
        table: the raw table, or its Parquet file; columns absent from the contract are dropped (and
            logged).
        contract: the dataset contract.

    Returns:
        ``(typed, parse_errors)`` as :func:`coerce_to_contract` returns them, with a fresh index.

    Raises:
        ValueError: a contract column appears more than once.
    """
    import pyarrow as pa

    rows = table.num_rows if isinstance(table, pa.Table) else table.metadata.num_rows
    typed: dict[str, pd.Series] = {}
    errors: dict[str, int] = {}
    for col, values, failed in iter_table_columns(table, contract):
        typed[col.name] = values
        if failed:
            errors[col.name] = failed
    # The columns are fresh: the frame can hold them as they are (consolidating them would copy them).
    return pd.DataFrame(typed, index=pd.RangeIndex(rows), copy=False), errors


def cast_to_contract_dtypes(df: pd.DataFrame, contract: DatasetContract) -> pd.DataFrame:
    """Restore the contract dtypes of a typed frame read back from Parquet.

    Parquet keeps the values but, without pandas metadata, an integer column with nulls comes back as
    float and a column without nulls as ``int64``; this puts every present contract column back to the
    dtype of :func:`contract_dtypes`.

    Args:
        df: a frame whose values are already typed (as written by :func:`coerce_to_contract`).
        contract: the dataset contract.

    Returns:
        The frame with contract columns in contract order and their contract dtypes.
    """
    dtypes = {name: dtype for name, dtype in contract_dtypes(contract).items() if name in df.columns}
    out = df[list(dtypes)].astype(dtypes)
    for name, dtype in dtypes.items():
        if dtype == "object":
            out[name] = out[name].where(out[name].notna(), None)
    return out
