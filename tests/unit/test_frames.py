"""The typing rules shared by every stage: raw text (or typed values) to the contract's dtypes."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from continuous_training.config import DatasetContract, parse_contract
from continuous_training.data.ingest import open_raw, read_raw, stage_raw_partition
from continuous_training.frames import (
    cast_to_contract_dtypes,
    coerce_table_to_contract,
    coerce_to_contract,
    iter_table_columns,
    read_landing_csv,
)
from continuous_training.lake import Lake
from continuous_training.ops.simulate import SimulatorConfig, generate_day, land_day, landing_csv_bytes

DAY = date(2026, 10, 5)
CONFIG = SimulatorConfig(seed=21, rows_per_day=80)


TINY = parse_contract(
    {
        "name": "tiny",
        "columns": [
            {"name": "id", "type": "string", "role": "key"},
            {"name": "at", "type": "timestamp", "role": "timestamp"},
            {"name": "n", "type": "integer", "role": "feature"},
            {"name": "x", "type": "float", "role": "feature"},
            {"name": "c", "type": "category", "role": "feature", "values": ["a", "b"]},
            {"name": "y", "type": "integer", "role": "target", "values": [0, 1]},
        ],
    }
)


@pytest.mark.parametrize(
    ("column", "raw", "expected", "failed"),
    [
        ("n", "12", 12, 0),
        ("n", "12.0", 12, 0),
        ("n", "-3", -3, 0),
        ("n", "12.5", None, 1),
        ("n", "12k", None, 1),
        ("n", "n/a", None, 1),
        ("n", None, None, 0),
        ("x", "1e3", 1000.0, 0),
        ("x", "0.1", 0.1, 0),
        ("x", "abc", None, 1),
        ("c", "a", "a", 0),
        ("c", "zz", "zz", 0),  # kept: the allowed-values expectation reports it
        ("c", " a", " a", 0),
        ("at", "2026-10-05T10:00:00Z", pd.Timestamp("2026-10-05T10:00:00", tz="UTC"), 0),
        ("at", "2026-10-05T12:00:00+02:00", pd.Timestamp("2026-10-05T10:00:00", tz="UTC"), 0),
        ("at", "2026-10-05 10:00:00", pd.Timestamp("2026-10-05T10:00:00", tz="UTC"), 0),
        ("at", "05/10/2026", None, 1),
        ("at", "yesterday", None, 1),
    ],
)
def test_coerce_one_value(column: str, raw: str | None, expected: object, failed: int) -> None:
    frame = pd.DataFrame({column: pd.Series([raw, "b" if column == "c" else None], dtype=object)})
    typed, errors = coerce_to_contract(frame, TINY)
    value = typed[column].iloc[0]
    if expected is None:
        assert pd.isna(value)
    else:
        assert value == expected
    assert errors == ({column: failed} if failed else {})


# Every value of test_coerce_one_value and a few more, per column: all plain (Arrow's casts), some not
# plain (those go to the pandas parsers), and one that makes the whole column take the pandas parsers.
TABLE_CASES = {
    "id": ["k1", "k2", None, " k3"],
    "at": ["2026-10-05T10:00:00Z", "2026-10-05T12:00:00+02:00", "2026-10-05 10:00:00", None, "05/10/2026"],
    "n": ["12", "-3", None, "+7", "12.0", "12.5", "12k", "n/a", "9007199254740993"],
    "x": ["1e3", "0.1", None, "-2.5", ".5", "7", "nan", "inf", " 1", "abc"],
    "c": ["a", "zz", " a", None, ""],
    "y": ["0", "1", None, "2"],
}


@pytest.mark.parametrize("column", sorted(TABLE_CASES))
@pytest.mark.parametrize("upto", [1, 2, 3, 4, 8, 99])
def test_coerce_table_types_as_coerce_does(column: str, upto: int, tmp_path: Path) -> None:
    values = TABLE_CASES[column][:upto]
    text = pd.DataFrame({column: pd.Series(values, dtype=object)})
    expected, expected_errors = coerce_to_contract(text, TINY)
    table = pa.table({column: pa.array(values, type=pa.string())})
    for source in (table, _as_parquet_file(table, tmp_path / "raw.parquet")):
        typed, errors = coerce_table_to_contract(source, TINY)
        pd.testing.assert_frame_equal(typed, expected, check_exact=True)
        assert errors == expected_errors
        assert [type(v) for v in typed[column]] == [type(v) for v in expected[column]]
        # Validation's layout: categories as pandas categories, the same values.
        ((col, values, failed),) = list(iter_table_columns(source, TINY, categories_as_category=True))
        assert failed == expected_errors.get(column, 0)
        if col.type == "category":
            assert isinstance(values.dtype, pd.CategoricalDtype)
            values = values.astype(object).where(values.notna(), None)
        pd.testing.assert_series_equal(values, expected[column], check_exact=True, check_names=False)


def _as_parquet_file(table: pa.Table, path: Path) -> pq.ParquetFile:
    pq.write_table(table, path)
    return pq.ParquetFile(path)


def test_coerce_table_of_a_raw_partition(lake: Lake, contract: DatasetContract) -> None:
    land_day(lake, DAY, CONFIG)
    stage_raw_partition(lake, DAY)
    raw, manifest = read_raw(lake, DAY)
    source, same_manifest = open_raw(lake, DAY)
    assert same_manifest == manifest
    typed, errors = coerce_table_to_contract(source, contract)
    expected, expected_errors = coerce_to_contract(raw, contract)
    pd.testing.assert_frame_equal(typed, expected, check_exact=True)
    assert errors == expected_errors == {}
    with pytest.raises(FileNotFoundError, match="dt=2026-10-06"):
        open_raw(lake, "2026-10-06")


def test_coerce_types_order_and_extra_columns() -> None:
    frame = pd.DataFrame(
        {
            "extra": ["z"],
            "y": ["1"],
            "c": ["b"],
            "x": ["2.5"],
            "n": ["7"],
            "at": ["2026-10-05T00:00:00Z"],
            "id": ["k"],
        }
    )
    typed, errors = coerce_to_contract(frame, TINY)
    assert errors == {}
    assert list(typed.columns) == ["id", "at", "n", "x", "c", "y"]
    assert typed.dtypes.astype(str).to_dict() == {
        "id": "object",
        "at": "datetime64[ns, UTC]",
        "n": "Int64",
        "x": "float64",
        "c": "object",
        "y": "Int64",
    }
    again, again_errors = coerce_to_contract(typed, TINY)  # typing a typed frame changes nothing
    pd.testing.assert_frame_equal(again, typed)
    assert again_errors == {}
    missing, _ = coerce_to_contract(frame.drop(columns=["x"]), TINY)
    assert "x" not in missing.columns


def test_cast_restores_dtypes_after_parquet(tmp_path: Path, contract: DatasetContract) -> None:
    from continuous_training.lake import write_parquet_bytes_stable

    df = generate_day(DAY, CONFIG, contract)
    df.loc[0, "age"] = pd.NA  # an Int64 column with a null comes back from Parquet as float
    write_parquet_bytes_stable(df, tmp_path / "x.parquet")
    back = pq.read_table(tmp_path / "x.parquet").to_pandas()
    assert str(back["age"].dtype) != "Int64"
    pd.testing.assert_frame_equal(cast_to_contract_dtypes(back, contract), df)


def test_landing_csv_of_simulated_day_reads_back_as_text(tmp_path: Path, contract: DatasetContract) -> None:
    df = generate_day(DAY, CONFIG, contract)
    path = tmp_path / "d.csv"
    path.write_bytes(landing_csv_bytes(df))
    raw = read_landing_csv(path)
    assert set(raw.dtypes.astype(str)) == {"object"}
    assert raw["age"].map(type).eq(str).all()
