"""Judge a day's raw partition against the dataset contract with Great Expectations.

The suite is derived from ``dataset.yaml`` (:func:`build_suite`): the exact column set, a minimum row
count, a not-null and unique key, not-null required columns, numeric ranges and allowed values. Typing
happens first (:mod:`continuous_training.frames`): a value that does not parse becomes null, so it
fails its column's not-null expectation, and the count of such values is part of the outcome (and
fails it on its own, so a nullable column cannot hide unreadable values).

GX decides, cheaply: the whole suite runs with ``BOOLEAN_ONLY``, then only the failed expectations run
again with ``SUMMARY`` for their counts and examples; the record is GX's result. The bad rows (those
failing a row-level expectation) are found with one vectorised mask built from the same suite
(:func:`unexpected_rows`, equal to GX's counts), for the quarantine to keep. At 1M rows the cost is
mostly GX's own: its import, and one copy of the frame per column check.

What happens to a judged batch (publication or quarantine) is :mod:`continuous_training.data.partitions`'
business. Great Expectations is imported inside the functions that use it: it takes seconds to import.
"""

from __future__ import annotations

import base64
import json
import logging
import zlib
from collections.abc import Iterable, Iterator
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from continuous_training.config import DatasetContract, load_contract
from continuous_training.data.ingest import open_raw, stage_raw_partition
from continuous_training.frames import iter_table_columns
from continuous_training.lake import Lake, day_key, manifest_file, read_json, write_json_atomic

if TYPE_CHECKING:
    import great_expectations as gx
    import pyarrow.parquet as pq

log = logging.getLogger(__name__)

#: The pseudo-expectation reported for values that did not parse as their contract type.
PARSE_EXPECTATION = "values_parse_as_contract_type"
_EXAMPLES = 5


def _gx() -> Any:
    """Import Great Expectations with its loggers quieted (it logs hundreds of INFO lines on import)."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations

    return great_expectations


def build_suite(contract: DatasetContract) -> gx.ExpectationSuite:
    """The expectation suite of a dataset contract.

    Args:
        contract: the dataset contract.

    Returns:
        A suite (not attached to any data context) with, in this order: the exact column set, the
        minimum row count, key not null and unique, every non-nullable column not null, numeric
        ranges, allowed values of categories and of the target.
    """
    gx = _gx()
    e = gx.expectations
    items: list[Any] = [
        e.ExpectTableColumnsToMatchSet(column_set=contract.column_names, exact_match=True),
        e.ExpectTableRowCountToBeBetween(min_value=contract.min_rows),
        e.ExpectColumnValuesToBeUnique(column=contract.key),
    ]
    # The key must never be null, even if a contract marked it nullable.
    items += [
        e.ExpectColumnValuesToNotBeNull(column=col.name)
        for col in contract.columns
        if not col.nullable or col.name == contract.key
    ]
    for col in contract.columns:
        if col.is_numeric and (col.min is not None or col.max is not None):
            items.append(
                e.ExpectColumnValuesToBeBetween(column=col.name, min_value=col.min, max_value=col.max)
            )
    for col in contract.columns:
        if col.values is not None and (col.type == "category" or col.role == "target"):
            items.append(e.ExpectColumnValuesToBeInSet(column=col.name, value_set=list(col.values)))
    return gx.ExpectationSuite(name=f"{contract.name}_contract", expectations=items)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    return str(value)


def _shown(value: Any, integer: bool) -> str:
    # GX sees nullable integer columns as float64 (see _gx_frame): show 150 as "150", not "150.0".
    if integer and isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _failure(
    result: dict[str, Any],
    key: str,
    integers: frozenset[str] = frozenset(),
    key_values: pd.Series | None = None,
) -> dict[str, Any]:
    config = result["expectation_config"]
    kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
    res = result.get("result") or {}
    info = result.get("exception_info") or {}
    # A raised metric comes back as {metric id: {"exception_message": ...}}; a clean run as one flat dict.
    messages = (
        [info["exception_message"]]
        if info.get("raised_exception")
        else [v.get("exception_message") for v in info.values() if isinstance(v, dict)]
    )
    entry: dict[str, Any] = {
        "expectation": config["type"],
        "column": kwargs.get("column"),
        "kwargs": _jsonable(kwargs),
        "unexpected_count": res.get("unexpected_count"),
        "unexpected_percent": res.get("unexpected_percent"),
        "partial_unexpected_list": [
            _shown(v, kwargs.get("column") in integers)
            for v in (res.get("partial_unexpected_list") or [])[:_EXAMPLES]
        ],
    }
    # GX names a failing row by its position in the batch; the key says which application it is.
    keys = [
        str(v.get(key)) if isinstance(v, dict) else str(v if key_values is None else key_values.iloc[int(v)])
        for v in (res.get("partial_unexpected_index_list") or [])[:_EXAMPLES]
    ]
    if keys:
        entry["partial_unexpected_keys"] = keys
    if "observed_value" in res:
        entry["observed_value"] = _jsonable(res["observed_value"])
    if res.get("details"):
        entry["details"] = _jsonable(res["details"])
    messages = sorted({str(m) for m in messages if m})
    if messages:
        entry["exception"] = "; ".join(messages)
    return entry


def _gx_frame(columns: Iterable[tuple[str, pd.Series]], rows: int, contract: DatasetContract) -> pd.DataFrame:
    """The frame handed to GX: the same values, laid out so that its pandas engine runs fast.

    GX checks the range of a nullable ``Int64`` column with one Python call per value (seconds at 1M
    rows), and copies the whole frame (rows without nulls in the checked column) once per column
    check, consolidating its blocks first if they are not. So the contract's numbers go into one
    ``float64`` block, written column by column as they come (integers are exact there below 2**53,
    which typing guarantees), categories become pandas ``category`` (codes are cheaper to copy than
    Python strings; ``isin`` and null checks see the same values), the rest stays as it is.

    Args:
        columns: ``(name, typed series with a 0..rows-1 index)``, consumed one at a time.
        rows: the number of rows.
        contract: the dataset contract.
    """
    numeric = [c.name for c in contract.columns if c.is_numeric]
    categories = {c.name for c in contract.columns if c.type == "category"}
    block = np.empty((len(numeric), rows), dtype="float64")
    in_block: list[str] = []
    others: dict[str, pd.Series] = {}
    for name, values in columns:
        if name in numeric and name not in in_block and _is_number(values.dtype):
            block[len(in_block)] = values.to_numpy(dtype="float64", na_value=np.nan)
            in_block.append(name)
        elif name in categories and not isinstance(values.dtype, pd.CategoricalDtype):
            others[name] = values.astype("category")
        else:
            others[name] = values
    numbers = pd.DataFrame(block[: len(in_block)].T, columns=in_block, copy=False)
    if not others:
        return numbers
    return pd.concat(
        [numbers, pd.DataFrame(others, index=pd.RangeIndex(rows), copy=False)], axis=1, copy=False
    )


def _is_number(dtype: Any) -> bool:
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)


def _run_suite(
    gx: Any, frame: pd.DataFrame, suite: gx.ExpectationSuite, result_format: dict[str, Any]
) -> dict[str, Any]:
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch = (
        ctx.data_sources.add_pandas("ct")
        .add_dataframe_asset("batch")
        .add_batch_definition_whole_dataframe("all")
    )
    definition = ctx.validation_definitions.add(
        gx.ValidationDefinition(name="contract", data=batch, suite=ctx.suites.add(suite))
    )
    # GX takes the rows without nulls in a column before checking it; when there are none, pandas
    # copies the whole frame, once per check, unless copy-on-write is on (pandas 3's default, and the
    # results are the same). The option is pandas-global, so it is on only for the run.
    with pd.option_context("mode.copy_on_write", True):
        result = definition.run(batch_parameters={"dataframe": frame}, result_format=result_format)
    return result.to_json_dict()


def _gx_result(gx: Any, frame: pd.DataFrame, contract: DatasetContract) -> dict[str, Any]:
    """The suite's GX result: decided with ``BOOLEAN_ONLY``, failures described with ``SUMMARY``.

    ``BOOLEAN_ONLY`` over the whole suite says which expectations fail; only those run again with
    ``SUMMARY`` (counts, examples, the keys of the first failing rows), on the columns they need, and
    their results replace the bare ones. A batch that passes costs one cheap run; every result in the
    record is GX's own.
    """
    result = _run_suite(gx, frame, build_suite(contract), {"result_format": "BOOLEAN_ONLY"})
    failed_at = [i for i, r in enumerate(result["results"]) if not r["success"]]
    if not failed_at:
        return result
    wanted = {_config_key(result["results"][i]) for i in failed_at}
    fresh = build_suite(contract)
    chosen = [e for e in fresh.expectations if _expectation_key(e) in wanted]
    if len(chosen) != len(wanted):
        log.warning("could not pick the failed expectations out of the suite; describing the whole suite")
        chosen = fresh.expectations
    suite = gx.ExpectationSuite(name=fresh.name, expectations=chosen)
    columns = {e.configuration.kwargs.get("column") for e in suite.expectations}
    if None in columns or not columns <= set(frame.columns):
        narrow = frame  # a table-level check (or a missing column) needs the whole frame
    else:
        narrow = frame[[c for c in frame.columns if c in columns]]
    # GX names the first failing rows by their position (validate_frame maps them to keys): its
    # unexpected_index_column_names would do it with a Python loop over every failing row.
    detailed = _run_suite(gx, narrow, suite, {"result_format": "SUMMARY"})
    by_config = {_config_key(r): r for r in detailed["results"]}
    for i in failed_at:
        entry = by_config.get(_config_key(result["results"][i]))
        if entry is None or entry["success"]:
            log.warning("the SUMMARY run did not confirm failure #%d; keeping its BOOLEAN_ONLY result", i)
            continue
        entry["expectation_config"]["id"] = result["results"][i]["expectation_config"].get("id")
        result["results"][i] = entry
    return result


def _config_key(result: dict[str, Any]) -> str:
    """Which expectation a result is for: its type and arguments (the batch id left out)."""
    config = result["expectation_config"]
    kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
    return json.dumps([config["type"], kwargs], sort_keys=True, default=str)


def _expectation_key(expectation: Any) -> str:
    """:func:`_config_key` of a suite's expectation."""
    return _config_key({"expectation_config": expectation.configuration.to_json_dict()})


def unexpected_rows(frame: pd.DataFrame, contract: DatasetContract) -> tuple[np.ndarray, dict[str, int]]:
    """Which rows fail a row-level expectation of the contract's suite, as one vectorised mask.

    Built from the suite's own expectations (not-null, between, in-set, unique) with GX's semantics:
    nulls fail only not-null, both copies of a duplicated key fail uniqueness. Table-level
    expectations (column set, row count) judge the batch, not rows, and expectations on a column the
    frame lacks are skipped.

    Args:
        frame: the typed frame (as :func:`validate_frame` gets it, or as GX sees it).
        contract: the dataset contract.

    Returns:
        ``(mask, counts)``: a boolean array over the rows (True = fails at least one expectation) and
        the number of rows failing each expectation, keyed ``"<expectation type>:<column>"``.

    Raises:
        ValueError: the suite holds a row-level expectation type this function does not know.
    """
    bad = np.zeros(len(frame), dtype=bool)
    counts: dict[str, int] = {}
    for expectation in build_suite(contract).expectations:
        config = expectation.configuration
        kind, kwargs = config.type, config.kwargs
        column = kwargs.get("column")
        if column is None:
            continue
        if column not in frame.columns:
            continue
        values = frame[column]
        present = values.notna().to_numpy()
        if kind == "expect_column_values_to_not_be_null":
            fails = ~present
        elif kind == "expect_column_values_to_be_between":
            inside = np.ones(len(frame), dtype=bool)
            if kwargs.get("min_value") is not None:
                inside &= (values >= kwargs["min_value"]).fillna(False).to_numpy(dtype=bool)
            if kwargs.get("max_value") is not None:
                inside &= (values <= kwargs["max_value"]).fillna(False).to_numpy(dtype=bool)
            fails = present & ~inside
        elif kind == "expect_column_values_to_be_in_set":
            fails = present & ~values.isin(list(kwargs["value_set"])).to_numpy(dtype=bool)
        elif kind == "expect_column_values_to_be_unique":
            fails = present & values.duplicated(keep=False).to_numpy(dtype=bool)
        else:
            raise ValueError(f"unexpected_rows: no row mask for expectation {kind!r} on column {column!r}")
        counts[f"{kind}:{column}"] = int(fails.sum())
        bad |= fails
    return bad, counts


def validate_frame(
    df_typed: pd.DataFrame, contract: DatasetContract, parse_errors: dict[str, int] | None = None
) -> dict[str, Any]:
    """Run the contract's suite on a typed frame.

    Args:
        df_typed: the frame typed by :func:`frames.coerce_to_contract` (columns outside the contract,
            if passed, fail the column-set expectation; missing ones fail it and their own expectations).
        contract: the dataset contract.
        parse_errors: ``{column: count}`` of values that did not parse; any makes the outcome fail.

    Returns:
        A JSON-serialisable outcome ``{"success", "evaluated", "failed", "parse_errors", "rows",
        "gx_result"}``. Each failed item is ``{"expectation", "column", "kwargs", "unexpected_count",
        "unexpected_percent", "partial_unexpected_list"}`` (plus ``observed_value``/``details``/
        ``exception`` when GX gives them); parse failures appear as the pseudo-expectation
        :data:`PARSE_EXPECTATION`. The GX result holds GX's ``SUMMARY`` result of every failed
        expectation and the bare ``BOOLEAN_ONLY`` result of the others.
    """
    frame = df_typed.reset_index(drop=True)
    return _validate_gx_frame(_gx_frame(frame.items(), len(frame), contract), contract, parse_errors)


def _validate_gx_frame(
    frame: pd.DataFrame, contract: DatasetContract, parse_errors: dict[str, int] | None
) -> dict[str, Any]:
    gx = _gx()
    parse_errors = {str(k): int(v) for k, v in (parse_errors or {}).items() if v}
    result = _gx_result(gx, frame, contract)

    order = {name: i for i, name in enumerate(contract.column_names)}
    integers = frozenset(c.name for c in contract.columns if c.type == "integer")
    key_values = frame[contract.key] if contract.key in frame.columns else None
    failed = [_failure(r, contract.key, integers, key_values) for r in result["results"] if not r["success"]]
    rows = len(frame)
    for column, count in sorted(parse_errors.items()):
        failed.append(
            {
                "expectation": PARSE_EXPECTATION,
                "column": column,
                "kwargs": {"column": column, "type": contract.column(column).type},
                "unexpected_count": count,
                "unexpected_percent": 100.0 * count / rows if rows else None,
                "partial_unexpected_list": [],
            }
        )
    failed.sort(
        key=lambda f: (-1 if f["column"] is None else order.get(f["column"], len(order)), f["expectation"])
    )
    outcome = {
        "success": bool(result["success"]) and not parse_errors,
        "evaluated": int(result["statistics"]["evaluated_expectations"]),
        "failed": failed,
        "parse_errors": parse_errors,
        "rows": rows,
        "gx_result": result,
    }
    log.info(
        "validation of %d row(s): %s (%d expectation(s), %d failed%s)",
        rows,
        "passed" if outcome["success"] else "FAILED",
        outcome["evaluated"],
        len(failed),
        f"; parse errors {parse_errors}" if parse_errors else "",
    )
    return outcome


def _text(raw: pq.ParquetFile, columns: list[str]) -> pd.DataFrame:
    frame = raw.read(columns).to_pandas()
    return frame.astype(object).where(frame.notna(), None)


def validate_partition(
    lake: Lake, day: date | str, contract: DatasetContract | None = None
) -> dict[str, Any]:
    """Type and validate the day's raw partition, and find its bad rows.

    Args:
        lake: the data lake.
        day: the partition day.
        contract: the dataset contract (default: :func:`config.load_contract`).

    Returns:
        The outcome of :func:`validate_frame` plus ``"day"``, ``"sha256"`` (of the raw partition),
        ``"rows"``, ``"bad_rows"`` (how many rows fail a row-level check or hold a value that did not
        parse) and ``"bad_row_bitmap"`` (which rows, as :func:`encode_rows` encodes them, for the
        quarantine: a list of positions would cost ~7 bytes of JSON per bad row).
        Parse failures list up to five of the raw values that did not parse.

    Raises:
        FileNotFoundError: the day has no raw partition.
    """
    contract = contract or load_contract()
    key = day_key(day)
    raw, manifest = open_raw(lake, key)
    errors: dict[str, int] = {}

    def typed() -> Iterator[tuple[str, pd.Series]]:
        for col, values, failed in iter_table_columns(raw, contract, categories_as_category=True):
            if failed:
                errors[col.name] = failed
            yield col.name, values
        # Columns outside the contract are kept (as text) so the column-set expectation reports them.
        extra = [c for c in raw.schema_arrow.names if c not in contract.column_names]
        if extra:
            yield from _text(raw, extra).items()

    # Each column is typed straight into GX's frame (same values, see _gx_frame): no other copy is kept.
    frame = _gx_frame(typed(), raw.metadata.num_rows, contract)
    bad, _ = unexpected_rows(frame, contract)
    examples = {}
    for column in errors:
        # A value that did not parse is null in the typed frame and not null in the raw text.
        text = _text(raw, [column])[column]
        unparsed = (text.notna() & frame[column].isna()).to_numpy(dtype=bool)
        bad |= unparsed
        examples[column] = [str(v) for v in text[unparsed].head(_EXAMPLES)]
    outcome = _validate_gx_frame(frame, contract, errors)
    for item in outcome["failed"]:
        if item["expectation"] == PARSE_EXPECTATION:
            item["partial_unexpected_list"] = examples.get(item["column"], [])
    positions = np.flatnonzero(bad)
    outcome.update(
        day=key,
        sha256=manifest["sha256"],
        rows=int(manifest["rows"]),
        bad_rows=len(positions),
        bad_row_bitmap=encode_rows(bad),
    )
    if len(positions):
        log.info("day %s: %d of %d row(s) fail a row-level check", key, len(positions), len(frame))
    return outcome


def validate_day(
    lake: Lake, day: date | str, contract: DatasetContract | None = None
) -> tuple[dict[str, Any], Path]:
    """Validate the day's raw partition and keep the full outcome in the lake.

    The quarantine retires a failed batch's raw partition; validating the day again (a cleared task)
    first stages it again from the landing files, which gives the same bytes.

    Args:
        lake: the data lake.
        day: the partition day.
        contract: the dataset contract (default: :func:`config.load_contract`).

    Returns:
        ``(outcome, record)``: the outcome of :func:`validate_partition` and the file holding it
        (``lake.validation_record(day, raw sha256)``), read back by :func:`read_validation_record`.

    Raises:
        NoLandingFilesError: the raw partition is gone and nothing is left to stage it from.
    """
    if not manifest_file(lake.raw(day)).exists():
        stage_raw_partition(lake, day)
    outcome = validate_partition(lake, day, contract)
    record = lake.validation_record(day, outcome["sha256"])
    write_json_atomic(record, outcome)
    return outcome, record


def read_validation_record(lake: Lake, day: date | str, raw_sha256: str) -> dict[str, Any]:
    """The outcome :func:`validate_day` kept for the raw batch of ``day`` with this content hash.

    Raises:
        FileNotFoundError: the batch was never validated (the file is named).
    """
    return read_json(lake.validation_record(day, raw_sha256))


def encode_rows(mask: np.ndarray) -> str:
    """A boolean row mask as text for a JSON record: the packed bits, zlib-compressed, base64.

    1M rows take at most 125 KB before compression, whatever the number of bad rows.
    """
    return base64.b64encode(zlib.compress(np.packbits(np.asarray(mask, dtype=bool)).tobytes(), 6)).decode()


def decode_rows(text: str, rows: int) -> np.ndarray:
    """The positions of the set rows of a mask :func:`encode_rows` encoded (``rows`` long)."""
    bits = np.unpackbits(np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=np.uint8), count=rows)
    return np.flatnonzero(bits)


def _describe_expected(item: dict[str, Any]) -> str:
    kwargs = item.get("kwargs", {})
    name = item["expectation"]
    if name == "expect_column_values_to_be_between":
        return f"expected {kwargs.get('min_value')} <= value <= {kwargs.get('max_value')}"
    if name == "expect_column_values_to_be_in_set":
        return f"expected one of {kwargs.get('value_set')}"
    if name == "expect_column_values_to_not_be_null":
        return "expected no nulls"
    if name == "expect_column_values_to_be_unique":
        return "expected unique values"
    if name == PARSE_EXPECTATION:
        return f"expected values of type {kwargs.get('type')}"
    return ""


def summarize_failures(outcome: dict[str, Any]) -> list[str]:
    """One readable line per failed check, naming the column.

    Args:
        outcome: an outcome of :func:`validate_frame` / :func:`validate_partition`.

    Returns:
        Lines such as ``"age: 32 of 1609 values (1.99%) fail expect_column_values_to_be_between
        (expected 18 <= value <= 100), e.g. 150, -3"``.
    """
    lines = []
    rows = outcome.get("rows")
    for item in outcome.get("failed", []):
        name = item["expectation"]
        details = item.get("details") or {}
        if name == "expect_table_columns_to_match_set":
            mismatch = details.get("mismatched") or {}
            lines.append(
                f"table columns: missing {mismatch.get('missing', [])}, unexpected {mismatch.get('unexpected', [])} "
                "(expected exactly the contract's columns)"
            )
            continue
        if name == "expect_table_row_count_to_be_between":
            lines.append(
                f"table rows: {item.get('observed_value')} row(s), expected at least {item['kwargs'].get('min_value')}"
            )
            continue
        where = item.get("column") or "table"
        if item.get("exception"):
            lines.append(f"{where}: {name} could not be evaluated: {item['exception']}")
            continue
        count = item.get("unexpected_count")
        percent = item.get("unexpected_percent")
        amount = "values" if count is None else f"{count}{f' of {rows}' if rows is not None else ''} value(s)"
        if percent is not None:
            amount += f" ({percent:.2f}%)"
        expected = _describe_expected(item)
        examples = item.get("partial_unexpected_list") or []
        if name == "expect_column_values_to_not_be_null" and item.get("partial_unexpected_keys"):
            examples = [f"row {k}" for k in item["partial_unexpected_keys"]]
        line = f"{where}: {amount} fail {name}"
        line += f" ({expected})" if expected else ""
        line += f", e.g. {', '.join(examples)}" if examples else ""
        lines.append(line)
    return lines
