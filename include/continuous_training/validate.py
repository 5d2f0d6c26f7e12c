"""Validate a day's raw partition against the dataset contract with Great Expectations, then publish
it (``validated/``) or quarantine it (``quarantine/``) with the evidence.

The suite is derived from ``dataset.yaml`` (:func:`build_suite`): the exact column set, a minimum row
count, a not-null and unique key, not-null required columns, numeric ranges and allowed values. Typing
happens first (:func:`frames.coerce_to_contract`): a value that does not parse becomes null, so it
fails its column's not-null expectation, and the count of such values is part of the outcome (and
fails it on its own, so a nullable column cannot hide unreadable values).

Great Expectations is imported inside the functions that use it: it takes seconds to import.
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from continuous_training.config import DatasetContract, load_contract
from continuous_training.frames import cast_to_contract_dtypes, coerce_to_contract, contract_dtypes
from continuous_training.ingest import day_key, read_raw
from continuous_training.storage import (
    DATA_FILE,
    MANIFEST_FILE,
    Lake,
    publish_staged,
    read_json,
    sha256_file,
    write_json_atomic,
    write_parquet_bytes_stable,
)

if TYPE_CHECKING:
    import great_expectations as gx

log = logging.getLogger(__name__)

VALIDATION_FILE = "validation.json"
REASON_FILE = "reason.txt"
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


def _failure(result: dict[str, Any], key: str) -> dict[str, Any]:
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
        "partial_unexpected_list": [str(v) for v in (res.get("partial_unexpected_list") or [])[:_EXAMPLES]],
    }
    keys = [
        str(v.get(key)) if isinstance(v, dict) else str(v)
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
        :data:`PARSE_EXPECTATION`.
    """
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    parse_errors = {str(k): int(v) for k, v in (parse_errors or {}).items() if v}
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch = (
        ctx.data_sources.add_pandas("ct")
        .add_dataframe_asset("batch")
        .add_batch_definition_whole_dataframe("all")
    )
    suite = ctx.suites.add(build_suite(contract))
    definition = ctx.validation_definitions.add(
        gx.ValidationDefinition(name="contract", data=batch, suite=suite)
    )
    frame = df_typed.reset_index(drop=True)
    result_format: dict[str, Any] = {"result_format": "SUMMARY"}
    if contract.key in frame.columns:
        # Failing rows are then named by their key rather than by a position in this batch.
        result_format["unexpected_index_column_names"] = [contract.key]
    result = definition.run(batch_parameters={"dataframe": frame}, result_format=result_format).to_json_dict()

    order = {name: i for i, name in enumerate(contract.column_names)}
    failed = [_failure(r, contract.key) for r in result["results"] if not r["success"]]
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


def _typed_partition(
    lake: Lake, day: str, contract: DatasetContract
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int], dict[str, Any]]:
    raw, manifest = read_raw(lake, day)
    typed, errors = coerce_to_contract(raw, contract)
    return raw, typed, errors, manifest


def validate_partition(
    lake: Lake, day: date | str, contract: DatasetContract | None = None
) -> dict[str, Any]:
    """Type and validate the day's raw partition.

    Args:
        lake: the data lake.
        day: the partition day.
        contract: the dataset contract (default: :func:`config.load_contract`).

    Returns:
        The outcome of :func:`validate_frame` plus ``"day"``, ``"sha256"`` (of the raw partition) and
        ``"rows"``. Parse failures list up to five of the raw values that did not parse.

    Raises:
        FileNotFoundError: the day has no raw partition.
    """
    contract = contract or load_contract()
    key = day_key(day)
    raw, typed, errors, manifest = _typed_partition(lake, key, contract)
    # Columns outside the contract are kept (as text) so the column-set expectation reports them.
    extra = [c for c in raw.columns if c not in typed.columns]
    frame = pd.concat([typed, raw[extra]], axis=1) if extra else typed
    outcome = validate_frame(frame, contract, errors)
    for item in outcome["failed"]:
        if item["expectation"] == PARSE_EXPECTATION:
            column = item["column"]
            bad = raw[column][raw[column].notna() & typed[column].isna()]
            item["partial_unexpected_list"] = [str(v) for v in bad.head(_EXAMPLES)]
    outcome.update(day=key, sha256=manifest["sha256"], rows=int(manifest["rows"]))
    return outcome


def _check_outcome_matches(outcome: dict[str, Any], manifest: dict[str, Any], key: str) -> None:
    if outcome.get("sha256") not in (None, manifest["sha256"]):
        raise ValueError(
            f"day {key}: the outcome was computed on raw sha256 {outcome['sha256']}, but the raw partition "
            f"now has sha256 {manifest['sha256']}; validate it again"
        )
    if outcome.get("day") not in (None, key):
        raise ValueError(f"the outcome is for day {outcome['day']}, not {key}")


def _parquet_ready(df: pd.DataFrame) -> pd.DataFrame:
    # A nullable string dtype keeps text columns Parquet strings even when every value is null.
    text = [c for c in df.columns if df[c].dtype == object]
    return df.astype({c: "string" for c in text})


def publish_validated(
    lake: Lake, day: date | str, outcome: dict[str, Any], contract: DatasetContract | None = None
) -> dict[str, Any]:
    """Publish the typed partition of a day that passed validation to ``lake.validated(day)``.

    Writes ``data.parquet`` (the typed frame, stable bytes), ``validation.json`` (the outcome, GX result
    included) and ``_manifest.json`` ``{"day", "rows", "sha256", "raw_sha256", "columns"}``, atomically.
    Publishing the same day again is a no-op.

    Args:
        lake: the data lake.
        day: the partition day.
        outcome: the successful outcome of :func:`validate_partition` for this day.
        contract: the dataset contract (default: :func:`config.load_contract`).

    Returns:
        The published manifest plus ``"path"``.

    Raises:
        ValueError: the outcome did not succeed, or belongs to other raw content.
        PartitionConflictError: the day is already published with other content.
    """
    contract = contract or load_contract()
    key = day_key(day)
    if not outcome.get("success"):
        raise ValueError(
            f"day {key}: refusing to publish a partition that failed validation "
            f"({len(outcome.get('failed', []))} failed expectation(s)); quarantine it instead"
        )
    _, typed, errors, manifest = _typed_partition(lake, key, contract)
    _check_outcome_matches(outcome, manifest, key)
    if errors or list(typed.columns) != contract.column_names:
        raise ValueError(
            f"day {key}: the raw partition does not type cleanly to the contract; validate it again"
        )

    dest = lake.validated(key)

    def write(staged: Path) -> None:
        digest = write_parquet_bytes_stable(_parquet_ready(typed), staged / DATA_FILE)
        write_json_atomic(staged / VALIDATION_FILE, outcome)
        write_json_atomic(
            staged / MANIFEST_FILE,
            {
                "day": key,
                "rows": len(typed),
                "sha256": digest,
                "raw_sha256": manifest["sha256"],
                "columns": list(typed.columns),
            },
        )

    created = publish_staged(dest, write)
    published = read_json(dest / MANIFEST_FILE)
    log.info(
        "validated partition %s: %s (%d rows, sha256 %s)",
        key,
        "published" if created else "already published",
        published["rows"],
        published["sha256"][:12],
    )
    return {**published, "path": str(dest)}


def _reason_text(key: str, manifest: dict[str, Any], outcome: dict[str, Any], copied: list[str]) -> str:
    failed = outcome.get("failed", [])
    lines = [
        f"Partition {key} (raw sha256 {manifest['sha256']}, {manifest['rows']} rows) failed validation:",
        f"{len(failed)} failed check(s) out of {outcome.get('evaluated', '?')} expectation(s) evaluated.",
        "",
        *(f"- {line}" for line in summarize_failures(outcome)),
        "",
        f"Raw data: {DATA_FILE} (raw manifest: raw_manifest.json). Landing files: {', '.join(copied) or 'none found'}.",
        f"Full Great Expectations result: {VALIDATION_FILE}.",
        "Nothing was published for this day. Fix the export at the source and land it again, or move this",
        "quarantine folder aside deliberately once the batch is accepted.",
    ]
    return "\n".join(lines) + "\n"


def _retire_raw(raw_dir: Path, raw_sha: str) -> None:
    """Remove the raw partition of a quarantined batch, if it still holds exactly that batch."""
    manifest = raw_dir / MANIFEST_FILE
    if not manifest.exists() or read_json(manifest).get("sha256") != raw_sha:
        return
    # Rename first so that no reader ever sees a half-removed partition.
    retired = raw_dir.with_name(f".retired-{raw_dir.name}-{raw_sha[:12]}")
    shutil.rmtree(retired, ignore_errors=True)
    os.rename(raw_dir, retired)
    shutil.rmtree(retired)
    log.info("raw partition %s retired: its batch is kept in quarantine", raw_dir)


def quarantine_partition(lake: Lake, day: date | str, outcome: dict[str, Any]) -> dict[str, Any]:
    """Keep the evidence of a failed day in ``lake.quarantine(day, raw_sha256)``.

    Copies the raw ``data.parquet`` and manifest and the landing CSVs, and writes ``validation.json`` and
    a human-readable ``reason.txt``. Once the copy is published, the raw partition is retired (its bytes
    now live in quarantine), so that a corrected re-delivery of the day can be staged and validated;
    nothing else is touched and the landing files stay. Quarantining the same raw content again is a
    no-op.

    Args:
        lake: the data lake.
        day: the partition day.
        outcome: the outcome of :func:`validate_partition` for this day.

    Returns:
        ``{"path", "day", "raw_sha256", "failed"}``.

    Raises:
        FileNotFoundError: the day has no raw partition.
        ValueError: the outcome belongs to other raw content.
    """
    key = day_key(day)
    raw_dir = lake.raw(key)
    raw_sha = outcome.get("sha256", "")
    dest = lake.quarantine(key, raw_sha) if raw_sha else None
    if dest is not None and (dest / MANIFEST_FILE).exists():
        # A re-run (cleared task): the evidence is already kept; finish retiring raw if a crash left it.
        log.info("partition %s already quarantined in %s", key, dest)
        _retire_raw(raw_dir, raw_sha)
        return {"path": str(dest), "day": key, "raw_sha256": raw_sha, "failed": outcome.get("failed", [])}
    if not (raw_dir / MANIFEST_FILE).exists():
        raise FileNotFoundError(f"no raw partition in {raw_dir} to quarantine")
    manifest = read_json(raw_dir / MANIFEST_FILE)
    _check_outcome_matches(outcome, manifest, key)
    dest = lake.quarantine(key, raw_sha)
    result = {"path": str(dest), "day": key, "raw_sha256": raw_sha, "failed": outcome.get("failed", [])}

    def write(staged: Path) -> None:
        shutil.copy2(raw_dir / DATA_FILE, staged / DATA_FILE)
        shutil.copy2(raw_dir / MANIFEST_FILE, staged / "raw_manifest.json")
        copied = []
        for source in manifest.get("source_files", []):
            path = lake.landing(key) / source["name"]
            if not path.exists():
                log.warning("landing file %s of partition %s is gone; quarantining without it", path, key)
                continue
            if sha256_file(path) != source["sha256"]:
                log.warning("landing file %s changed since the raw partition was staged", path)
            (staged / "landing").mkdir(exist_ok=True)
            shutil.copy2(path, staged / "landing" / source["name"])
            copied.append(f"landing/{source['name']}")
        write_json_atomic(staged / VALIDATION_FILE, outcome)
        (staged / REASON_FILE).write_text(_reason_text(key, manifest, outcome, copied))
        write_json_atomic(
            staged / MANIFEST_FILE,
            {
                "day": key,
                "sha256": raw_sha,
                "raw_sha256": raw_sha,
                "rows": manifest["rows"],
                "failed": len(outcome.get("failed", [])),
                "files": sorted([DATA_FILE, "raw_manifest.json", VALIDATION_FILE, REASON_FILE, *copied]),
            },
        )

    created = publish_staged(dest, write)
    _retire_raw(raw_dir, raw_sha)
    log.warning(
        "partition %s quarantined in %s%s: %s",
        key,
        dest,
        "" if created else " (already there)",
        "; ".join(summarize_failures(outcome)[:3]),
    )
    return result


def read_validated(lake: Lake, days: list[str], contract: DatasetContract | None = None) -> pd.DataFrame:
    """The typed rows of validated partitions, in day order.

    Args:
        lake: the data lake.
        days: partition days (duplicates are read once).
        contract: the dataset contract (default: :func:`config.load_contract`).

    Returns:
        One frame with the contract's columns and dtypes (``Int64`` integers, ``float64`` floats,
        ``object`` strings, ``datetime64[ns, UTC]`` timestamps) and a fresh index.

    Raises:
        FileNotFoundError: a day has no validated partition (names the folder).
    """
    import pyarrow.parquet as pq

    contract = contract or load_contract()
    frames = []
    for key in sorted({day_key(d) for d in days}):
        folder = lake.validated(key)
        if not (folder / MANIFEST_FILE).exists():
            raise FileNotFoundError(f"no validated partition in {folder} for day {key}")
        frames.append(cast_to_contract_dtypes(pq.read_table(folder / DATA_FILE).to_pandas(), contract))
    if not frames:
        return pd.DataFrame({n: pd.Series(dtype=t) for n, t in contract_dtypes(contract).items()})
    return pd.concat(frames, ignore_index=True)


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
