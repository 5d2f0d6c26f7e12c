"""The Great Expectations suite derived from the contract, on good and deliberately bad batches.

Importing GX takes seconds, so one module-scoped lake holds a clean day and one day per bad-batch
kind, validated once and shared by the tests.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from continuous_training.config import DatasetContract
from continuous_training.data.ingest import read_raw, stage_raw_partition
from continuous_training.data.partitions import publish_validated, quarantine_partition, read_validated
from continuous_training.data.validate import (
    PARSE_EXPECTATION,
    build_suite,
    decode_rows,
    encode_rows,
    summarize_failures,
    unexpected_rows,
    validate_frame,
    validate_partition,
)
from continuous_training.frames import coerce_to_contract, contract_dtypes
from continuous_training.lake import DATA_FILE, MANIFEST_FILE, QUARANTINE_BAD_ROWS_FILE, Lake, sha256_file
from continuous_training.ops.simulate import (
    BAD_BATCH_KINDS,
    SimulatorConfig,
    generate_day,
    land_day,
    landing_csv_bytes,
)

CLEAN_DAYS = ["2026-10-05", "2026-10-06"]
BAD_DAYS = {(date(2026, 10, 7) + timedelta(i)).isoformat(): kind for i, kind in enumerate(BAD_BATCH_KINDS)}
CONFIG = SimulatorConfig(seed=31, rows_per_day=150, bad_days=BAD_DAYS)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("validate")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CT_HOME", str(root / "home"))
        mp.setenv("CT_LAKE", str(root / "lake"))
        lake = Lake.from_settings()
        for day in [*CLEAN_DAYS, *BAD_DAYS]:
            land_day(lake, date.fromisoformat(day), CONFIG)
            stage_raw_partition(lake, day)
        yield lake


@pytest.fixture(scope="module")
def outcomes(lake: Lake, contract: DatasetContract) -> dict[str, dict]:
    return {day: validate_partition(lake, day, contract) for day in [*CLEAN_DAYS, *BAD_DAYS]}


def _day_of(kind: str) -> str:
    return next(day for day, k in BAD_DAYS.items() if k == kind)


def test_suite_is_derived_from_the_contract(contract: DatasetContract) -> None:
    suite = build_suite(contract)
    types = [e.expectation_type for e in suite.expectations]
    assert types.count("expect_table_columns_to_match_set") == 1
    assert types.count("expect_table_row_count_to_be_between") == 1
    assert types.count("expect_column_values_to_be_unique") == 1
    assert types.count("expect_column_values_to_not_be_null") == len(contract.columns)
    assert types.count("expect_column_values_to_be_between") == len(contract.numeric_features)
    in_set = {
        e.column for e in suite.expectations if e.expectation_type == "expect_column_values_to_be_in_set"
    }
    assert in_set == {*contract.categorical_features, contract.target}
    age = next(
        e for e in suite.expectations if getattr(e, "column", None) == "age" and hasattr(e, "min_value")
    )
    assert (age.min_value, age.max_value) == (18, 100)


def test_clean_day_passes(lake: Lake, outcomes: dict[str, dict], contract: DatasetContract) -> None:
    for day in CLEAN_DAYS:
        outcome = outcomes[day]
        assert outcome["success"], summarize_failures(outcome)
        assert outcome["failed"] == []
        assert outcome["parse_errors"] == {}
        assert outcome["evaluated"] == len(build_suite(contract).expectations)
        assert outcome["day"] == day
        assert outcome["rows"] == len(generate_day(date.fromisoformat(day), CONFIG, contract)) > 0
        assert outcome["sha256"] == sha256_file(lake.raw(day) / DATA_FILE)
        json.dumps(outcome)  # JSON-serialisable as is


def _dropped_column(raw: pd.DataFrame, contract: DatasetContract) -> set[str]:
    return set(contract.column_names) - set(raw.columns)


def _text_in_numeric_column(raw: pd.DataFrame, contract: DatasetContract) -> set[str]:
    return {c for c in contract.numeric_features if pd.to_numeric(raw[c], errors="coerce").isna().any()}


def _blank_columns(raw: pd.DataFrame, contract: DatasetContract) -> set[str]:
    return {c for c in raw.columns if raw[c].isna().any()}


def _out_of_range_columns(raw: pd.DataFrame, contract: DatasetContract) -> set[str]:
    out = set()
    for col in contract.columns:
        if col.is_numeric and col.min is not None:
            values = pd.to_numeric(raw[col.name])
            if ((values < col.min) | (values > col.max)).any():
                out.add(col.name)
    return out


# kind -> (the expectations that must fail, how to find the defective columns in the raw data)
BAD_TABLE = {
    "missing_column": (
        {"expect_table_columns_to_match_set", "expect_column_values_to_not_be_null"},
        _dropped_column,
    ),
    "wrong_type": ({"expect_column_values_to_not_be_null", PARSE_EXPECTATION}, _text_in_numeric_column),
    "nulls": ({"expect_column_values_to_not_be_null"}, _blank_columns),
    "out_of_range": ({"expect_column_values_to_be_between"}, _out_of_range_columns),
    "duplicates": ({"expect_column_values_to_be_unique"}, lambda raw, contract: {contract.key}),
    "empty_file": ({"expect_table_row_count_to_be_between"}, lambda raw, contract: set()),
}


@pytest.mark.parametrize("kind", BAD_BATCH_KINDS)
def test_each_bad_kind_fails_naming_the_right_column(
    kind: str, lake: Lake, outcomes: dict[str, dict], contract: DatasetContract
) -> None:
    day = _day_of(kind)
    outcome = outcomes[day]
    raw, _ = read_raw(lake, day)
    must_fail, defective = BAD_TABLE[kind]
    columns = defective(raw, contract)
    assert not outcome["success"]
    failed_types = {f["expectation"] for f in outcome["failed"]}
    assert must_fail <= failed_types
    failed_columns = {f["column"] for f in outcome["failed"]} - {None}
    assert failed_columns == columns
    if kind != "empty_file":
        assert len(columns) == {"nulls": 2, "out_of_range": 2}.get(kind, 1)
    lines = summarize_failures(outcome)
    assert len(lines) == len(outcome["failed"])
    for column in columns:
        assert any(line.startswith(f"{column}:") or column in line for line in lines), lines
    json.dumps(outcome)


def test_missing_column_is_named_by_the_column_set_expectation(
    lake: Lake, outcomes: dict[str, dict], contract: DatasetContract
) -> None:
    day = _day_of("missing_column")
    (dropped,) = _dropped_column(read_raw(lake, day)[0], contract)
    outcome = outcomes[day]
    table = next(f for f in outcome["failed"] if f["expectation"] == "expect_table_columns_to_match_set")
    assert table["details"]["mismatched"]["missing"] == [dropped]
    on_column = [f for f in outcome["failed"] if f["column"] == dropped]
    assert on_column
    assert all(dropped in f["exception"] for f in on_column)
    assert f"missing ['{dropped}']" in summarize_failures(outcome)[0]


def test_wrong_type_reports_parse_errors_with_raw_examples(outcomes: dict[str, dict]) -> None:
    outcome = outcomes[_day_of("wrong_type")]
    ((column, count),) = outcome["parse_errors"].items()
    parse = next(f for f in outcome["failed"] if f["expectation"] == PARSE_EXPECTATION)
    assert parse["column"] == column
    assert parse["unexpected_count"] == count
    assert parse["partial_unexpected_list"]
    assert set(parse["partial_unexpected_list"]) <= {"n/a", "12k", "unknown", "N/A", "1,200", "?"}
    not_null = next(f for f in outcome["failed"] if f["expectation"] == "expect_column_values_to_not_be_null")
    assert not_null["unexpected_count"] == count
    assert all(k.startswith("A2026") for k in not_null["partial_unexpected_keys"])


def test_out_of_range_examples_show_the_values(outcomes: dict[str, dict]) -> None:
    outcome = outcomes[_day_of("out_of_range")]
    by_column = {f["column"]: f for f in outcome["failed"]}
    assert set(by_column["age"]["partial_unexpected_list"]) == {"150", "-3"}
    assert set(by_column["credit_score"]["partial_unexpected_list"]) == {"1200"}


@pytest.mark.parametrize("day", [*CLEAN_DAYS, *BAD_DAYS])
def test_bad_rows_are_the_rows_gx_counts(
    day: str, lake: Lake, outcomes: dict[str, dict], contract: DatasetContract
) -> None:
    outcome = outcomes[day]
    typed, errors = coerce_to_contract(read_raw(lake, day)[0], contract)
    mask, counts = unexpected_rows(typed, contract)
    # The mask is built from the suite: per expectation, it counts what GX counts.
    failed = {
        f"{f['expectation']}:{f['column']}": f["unexpected_count"]
        for f in outcome["failed"]
        if f["column"] in typed.columns and f["expectation"] != PARSE_EXPECTATION
    }
    assert {name: count for name, count in counts.items() if count} == failed
    # Values that did not parse are null in typed, hence already not-null failures here.
    positions = decode_rows(outcome["bad_row_bitmap"], outcome["rows"])
    assert outcome["bad_rows"] == len(positions) == int(mask.sum())
    assert positions.tolist() == np.flatnonzero(mask).tolist()
    if outcome["success"]:
        assert outcome["bad_rows"] == 0
    elif BAD_DAYS.get(day) == "duplicates":
        assert outcome["bad_rows"] == 2 * int(typed[contract.key].duplicated().sum())  # both copies
    elif BAD_DAYS.get(day) not in ("missing_column", "empty_file"):
        assert outcome["bad_rows"] > 0


def test_gx_result_details_exactly_the_failed_expectations(
    outcomes: dict[str, dict], contract: DatasetContract
) -> None:
    for day, outcome in outcomes.items():
        results = outcome["gx_result"]["results"]
        assert len(results) == outcome["evaluated"] == len(build_suite(contract).expectations)
        assert outcome["gx_result"]["success"] is all(r["success"] for r in results)
        for result in results:
            config = result["expectation_config"]
            detail = result.get("result") or {}
            if result["success"]:
                assert "unexpected_count" not in detail, (day, config["type"])  # BOOLEAN_ONLY
            elif "unexpected_count" in detail:
                assert detail["unexpected_count"] > 0, (day, config)  # SUMMARY
                assert len(detail["partial_unexpected_index_list"]) == min(20, detail["unexpected_count"])
            else:
                # Table-level (observed value) or not computable (the column is missing).
                assert "observed_value" in detail or result["exception_info"], (day, config)


def test_extra_column_and_parse_errors_on_a_nullable_column_fail(contract: DatasetContract) -> None:
    df = generate_day(date(2026, 10, 5), SimulatorConfig(seed=32, rows_per_day=30), contract)
    outcome = validate_frame(df.assign(surprise="x"), contract)
    table = next(f for f in outcome["failed"] if f["expectation"] == "expect_table_columns_to_match_set")
    assert table["details"]["mismatched"]["unexpected"] == ["surprise"]
    assert not outcome["success"]

    relaxed = dataclasses.replace(
        contract,
        columns=tuple(
            dataclasses.replace(c, nullable=True) if c.name == "age" else c for c in contract.columns
        ),
    )
    unparsed = df.assign(age=df["age"].where(df.index > 2))
    outcome = validate_frame(unparsed, relaxed, {"age": 3})
    assert [f["expectation"] for f in outcome["failed"]] == [PARSE_EXPECTATION]
    assert not outcome["success"]
    assert validate_frame(unparsed, relaxed)["success"]  # the nulls themselves are allowed there


def test_publish_is_idempotent_and_reads_back_typed(
    lake: Lake, outcomes: dict[str, dict], contract: DatasetContract
) -> None:
    day = CLEAN_DAYS[0]
    landing = lake.landing(day) / f"applications-{day}.csv"
    raw_sha = sha256_file(lake.raw(day) / DATA_FILE)
    manifest = publish_validated(lake, day, outcomes[day], contract)
    data = lake.validated(day) / DATA_FILE
    stat = data.stat()
    assert publish_validated(lake, day, outcomes[day], contract) == manifest
    assert data.stat().st_mtime_ns == stat.st_mtime_ns
    assert manifest["sha256"] == sha256_file(data)
    assert manifest["raw_sha256"] == raw_sha == outcomes[day]["sha256"]
    assert manifest["columns"] == contract.column_names
    assert manifest["day"] == day
    assert json.loads((lake.validated(day) / "validation.json").read_text())["success"] is True
    assert landing.exists()
    assert sha256_file(lake.raw(day) / DATA_FILE) == raw_sha
    assert day in lake.validated_days()

    frame = read_validated(lake, [day], contract)
    assert frame.dtypes.astype(str).to_dict() == contract_dtypes(contract)
    # Raw rows are ordered by application_id, i.e. as generated: the round trip is exact.
    pd.testing.assert_frame_equal(frame, generate_day(date.fromisoformat(day), CONFIG, contract))


def test_read_validated_concatenates_in_day_order(
    lake: Lake, outcomes: dict[str, dict], contract: DatasetContract
) -> None:
    for day in CLEAN_DAYS:
        publish_validated(lake, day, outcomes[day], contract)
    frame = read_validated(lake, list(reversed(CLEAN_DAYS)) + [CLEAN_DAYS[0]], contract)
    expected = pd.concat(
        [generate_day(date.fromisoformat(d), CONFIG, contract) for d in CLEAN_DAYS], ignore_index=True
    )
    pd.testing.assert_frame_equal(frame, expected)
    empty = read_validated(lake, [], contract)
    assert len(empty) == 0
    assert empty.dtypes.astype(str).to_dict() == contract_dtypes(contract)
    with pytest.raises(FileNotFoundError, match="dt=2026-10-07"):
        read_validated(lake, ["2026-10-07"], contract)


def test_publish_refuses_failed_or_stale_outcomes(
    lake: Lake, outcomes: dict[str, dict], contract: DatasetContract
) -> None:
    bad_day = _day_of("nulls")
    with pytest.raises(ValueError, match="failed validation"):
        publish_validated(lake, bad_day, outcomes[bad_day], contract)
    assert not lake.validated(bad_day).exists()
    stale = {**outcomes[CLEAN_DAYS[1]], "sha256": "0" * 64}
    with pytest.raises(ValueError, match="validate it again"):
        publish_validated(lake, CLEAN_DAYS[1], stale, contract)


def test_quarantine_is_idempotent_and_loses_nothing(lake: Lake, outcomes: dict[str, dict]) -> None:
    day = _day_of("out_of_range")
    outcome = outcomes[day]
    landing = lake.landing(day) / f"applications-{day}.csv"
    landing_sha = sha256_file(landing)
    raw_sha = sha256_file(lake.raw(day) / DATA_FILE)
    first = quarantine_partition(lake, day, outcome)
    folder = Path(first["path"])
    assert folder == lake.quarantine(day, raw_sha)
    assert first["raw_sha256"] == raw_sha
    assert first["day"] == day
    assert first["failed"] == outcome["failed"]
    assert sha256_file(folder / DATA_FILE) == raw_sha
    assert sha256_file(folder / "landing" / landing.name) == landing_sha
    reason = (folder / "reason.txt").read_text()
    assert "age" in reason
    assert "credit_score" in reason
    assert "150" in reason
    assert json.loads((folder / "validation.json").read_text())["success"] is False
    # The bad rows, as they landed, beside the whole batch.
    bad = pd.read_parquet(folder / QUARANTINE_BAD_ROWS_FILE)
    assert len(bad) == outcome["bad_rows"] > 0
    assert set(bad["age"][~bad["age"].between("18", "99")]) <= {"150", "-3"}
    assert ((bad["age"].isin(["150", "-3"])) | (bad["credit_score"] == "1200")).all()
    assert f"{outcome['bad_rows']} of {outcome['rows']} row(s) fail a row-level check" in reason
    assert QUARANTINE_BAD_ROWS_FILE in json.loads((folder / MANIFEST_FILE).read_text())["files"]
    stat = (folder / MANIFEST_FILE).stat()

    assert quarantine_partition(lake, day, outcome) == first
    assert (folder / MANIFEST_FILE).stat().st_mtime_ns == stat.st_mtime_ns
    assert len(list(folder.parent.iterdir())) == 1  # no second copy, no staging left behind
    assert landing.exists()
    assert sha256_file(landing) == landing_sha
    # The raw partition is retired (its bytes are in quarantine), so a corrected delivery can be staged.
    assert not lake.raw(day).exists()
    assert [p.name for p in lake.raw(day).parent.iterdir() if day in p.name] == []
    assert not lake.validated(day).exists()


def test_a_corrected_delivery_of_a_quarantined_day_is_ingested(
    lake: Lake, outcomes: dict[str, dict], contract: DatasetContract, tmp_path: Path
) -> None:
    day = _day_of("missing_column")
    other = Lake(tmp_path / "lake3")
    shutil.copytree(lake.landing(day), other.landing(day))
    stage_raw_partition(other, day)
    bad = validate_partition(other, day, contract)
    assert not bad["success"]
    kept = quarantine_partition(other, day, bad)
    # The source re-delivers the day, complete this time: the file is replaced in the landing folder.
    clean = generate_day(date.fromisoformat(day), dataclasses.replace(CONFIG, bad_days={}))
    (other.landing(day) / f"applications-{day}.csv").write_bytes(landing_csv_bytes(clean))
    stage_raw_partition(other, day)
    good = validate_partition(other, day, contract)
    assert good["success"], good["failed"]
    publish_validated(other, day, good, contract)
    assert (other.validated(day) / DATA_FILE).exists()
    assert (Path(kept["path"]) / DATA_FILE).exists(), "the bad batch stays in quarantine"


def test_quarantine_keeps_an_empty_file_as_evidence(lake: Lake, outcomes: dict[str, dict]) -> None:
    day = _day_of("empty_file")
    result = quarantine_partition(lake, day, outcomes[day])
    folder = Path(result["path"])
    assert (folder / "landing" / f"applications-{day}.csv").read_text().count("\n") == 1  # header only
    assert "row" in (folder / "reason.txt").read_text()


def test_validate_partition_without_raw_partition_raises(lake: Lake, contract: DatasetContract) -> None:
    with pytest.raises(FileNotFoundError, match="dt=2030-01-01"):
        validate_partition(lake, "2030-01-01", contract)


def test_quarantine_refuses_an_outcome_of_other_raw_content(
    lake: Lake, outcomes: dict[str, dict], contract: DatasetContract, tmp_path: Path
) -> None:
    # The same day re-exported with a row fewer: other raw bytes, so the old outcome does not apply,
    # and the new content gets its own quarantine folder (keyed by the raw hash).
    day = _day_of("duplicates")
    other = Lake(tmp_path / "lake2")
    shutil.copytree(lake.landing(day), other.landing(day))
    csv = other.landing(day) / f"applications-{day}.csv"
    csv.write_text("\n".join(csv.read_text().splitlines()[:-1]) + "\n")
    stage_raw_partition(other, day)
    with pytest.raises(ValueError, match="validate it again"):
        quarantine_partition(other, day, outcomes[day])
    fresh = validate_partition(other, day, contract)
    assert not fresh["success"]
    assert fresh["sha256"] != outcomes[day]["sha256"]
    result = quarantine_partition(other, day, fresh)
    assert Path(result["path"]) == other.quarantine(day, fresh["sha256"])
    assert Path(result["path"]).name != outcomes[day]["sha256"][:12]


def test_row_bitmap_round_trips_and_stays_small() -> None:
    rng = np.random.default_rng(5)
    for rows in (1, 7, 8, 9, 1000, 100_003):
        mask = rng.random(rows) < 0.2
        assert decode_rows(encode_rows(mask), rows).tolist() == np.flatnonzero(mask).tolist()
    every = np.ones(1_000_000, dtype=bool)
    assert len(encode_rows(every)) < 2_000  # a list of positions would be ~7 MB of JSON
