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
from pathlib import Path

import numpy as np
import pandas as pd

from continuous_training.config import Column, DatasetContract

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
