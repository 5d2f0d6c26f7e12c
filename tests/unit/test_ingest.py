"""Landing files -> immutable raw partitions, and the typing rules shared by every stage."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from continuous_training.config import DatasetContract, load_contract, parse_contract
from continuous_training.frames import (
    cast_to_contract_dtypes,
    coerce_table_to_contract,
    coerce_to_contract,
    iter_table_columns,
    read_landing_csv,
)
from continuous_training.ingest import NoLandingFilesError, open_raw, read_raw, stage_raw_partition
from continuous_training.simulate import SimulatorConfig, generate_day, land_day, landing_csv_bytes
from continuous_training.storage import DATA_FILE, MANIFEST_FILE, Lake, PartitionConflictError, sha256_file

DAY = date(2026, 10, 5)
CONFIG = SimulatorConfig(seed=21, rows_per_day=80)


@pytest.fixture
def lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lake:
    monkeypatch.setenv("CT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CT_LAKE", str(tmp_path / "lake"))
    return Lake.from_settings()


@pytest.fixture(scope="module")
def contract() -> DatasetContract:
    return load_contract()


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_same_landing_gives_same_bytes_and_sha256(lake: Lake, tmp_path: Path) -> None:
    land_day(lake, DAY, CONFIG)
    manifest = stage_raw_partition(lake, DAY)
    # The same rows exported in another order, into another lake: the partition is byte-identical.
    other = Lake(tmp_path / "other")
    lines = (lake.landing(DAY) / "applications-2026-10-05.csv").read_text().splitlines()
    _write(
        other.landing(DAY) / "applications-2026-10-05.csv", "\n".join([lines[0], *reversed(lines[1:])]) + "\n"
    )
    again = stage_raw_partition(other, "2026-10-05")
    assert again["sha256"] == manifest["sha256"]
    assert (Path(again["path"]) / DATA_FILE).read_bytes() == (Path(manifest["path"]) / DATA_FILE).read_bytes()
    assert manifest["sha256"] == sha256_file(lake.raw(DAY) / DATA_FILE)
    assert manifest["day"] == "2026-10-05"
    assert manifest["rows"] == len(lines) - 1
    assert manifest["columns"] == lines[0].split(",")
    (source,) = manifest["source_files"]
    assert source == {
        "name": "applications-2026-10-05.csv",
        "sha256": sha256_file(lake.landing(DAY) / "applications-2026-10-05.csv"),
        "rows": len(lines) - 1,
    }


def test_rerun_is_a_noop_returning_the_same_manifest(lake: Lake) -> None:
    land_day(lake, DAY, CONFIG)
    first = stage_raw_partition(lake, DAY)
    data = Path(first["path"]) / DATA_FILE
    stat = data.stat()
    second = stage_raw_partition(lake, DAY)
    assert second == first
    assert data.stat().st_mtime_ns == stat.st_mtime_ns
    assert data.stat().st_ino == stat.st_ino
    assert sorted(p.name for p in (lake.root / "raw").iterdir()) == ["dt=2026-10-05"]  # no staging left


def test_changed_content_for_a_published_day_raises_conflict(lake: Lake) -> None:
    (path,) = land_day(lake, DAY, CONFIG)
    first = stage_raw_partition(lake, DAY)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")  # one row fewer: the source re-exported
    with pytest.raises(PartitionConflictError, match="immutable"):
        stage_raw_partition(lake, DAY)
    assert (lake.raw(DAY) / MANIFEST_FILE).exists()
    assert sha256_file(lake.raw(DAY) / DATA_FILE) == first["sha256"]
    assert sorted(p.name for p in (lake.root / "raw").iterdir()) == ["dt=2026-10-05"]


def test_no_landing_files_raises_naming_the_folder(lake: Lake) -> None:
    with pytest.raises(NoLandingFilesError, match=str(lake.landing("2026-10-05"))):
        stage_raw_partition(lake, DAY)
    _write(lake.landing(DAY) / "notes.txt", "not a csv")
    with pytest.raises(NoLandingFilesError, match="landing files"):
        stage_raw_partition(lake, DAY)
    assert not (lake.root / "raw").exists() or not any((lake.root / "raw").iterdir())


def test_files_are_concatenated_in_name_order_and_kept_verbatim(lake: Lake) -> None:
    _write(lake.landing(DAY) / "b.csv", "id,code,note\n2,007,NA\n3,,null\n")
    _write(lake.landing(DAY) / "a.csv", "id,code\n1,1.50\n")
    manifest = stage_raw_partition(lake, DAY)
    assert [s["name"] for s in manifest["source_files"]] == ["a.csv", "b.csv"]
    assert [s["rows"] for s in manifest["source_files"]] == [1, 2]
    assert manifest["columns"] == ["id", "code", "note"]
    table = pq.read_table(lake.raw(DAY) / DATA_FILE)
    assert all(field.type == pa.string() for field in table.schema)
    df, raw_manifest = read_raw(lake, DAY)
    assert raw_manifest == {k: v for k, v in manifest.items() if k != "path"}
    assert df.to_dict("records") == [
        {"id": "1", "code": "1.50", "note": None},
        {"id": "2", "code": "007", "note": "NA"},
        {"id": "3", "code": None, "note": "null"},
    ]


@pytest.mark.parametrize("content", [b"application_id,age\n", b""], ids=["header_only", "zero_bytes"])
def test_an_empty_file_gives_a_zero_row_partition(lake: Lake, content: bytes) -> None:
    _write(lake.landing(DAY) / "applications.csv", content)
    manifest = stage_raw_partition(lake, DAY)
    assert manifest["rows"] == 0
    assert pq.read_table(lake.raw(DAY) / DATA_FILE).num_rows == 0


@pytest.mark.parametrize(
    "content",
    [b"a,b\n1,2\n3,4,5\n", b"a,b\n\xff\xfe,1\n", b'a,b\n"1,2\n'],
    ids=["ragged", "not_utf8", "open_quote"],
)
def test_unparseable_csv_raises_naming_the_file(lake: Lake, content: bytes) -> None:
    path = _write(lake.landing(DAY) / "broken.csv", content)
    with pytest.raises(ValueError, match=str(path)):
        stage_raw_partition(lake, DAY)
    assert not (lake.raw(DAY) / MANIFEST_FILE).exists()


def test_bad_day_string_is_refused(lake: Lake) -> None:
    with pytest.raises(ValueError, match="2026-13-01"):
        stage_raw_partition(lake, "2026-13-01")


# --- frames: the typing rules ------------------------------------------------------------------

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
    from continuous_training.storage import write_parquet_bytes_stable

    df = generate_day(DAY, CONFIG, contract)
    df.loc[0, "age"] = pd.NA  # an Int64 column with a null comes back from Parquet as float
    write_parquet_bytes_stable(df, tmp_path / "x.parquet")
    back = pq.read_table(tmp_path / "x.parquet").to_pandas()
    assert str(back["age"].dtype) != "Int64"
    pd.testing.assert_frame_equal(cast_to_contract_dtypes(back, contract), df)


def test_landing_csv_of_simulated_day_reads_back_as_text(tmp_path: Path, contract: DatasetContract) -> None:
    df = generate_day(DAY, CONFIG, contract)
    path = _write(tmp_path / "d.csv", landing_csv_bytes(df))
    raw = read_landing_csv(path)
    assert set(raw.dtypes.astype(str)) == {"object"}
    assert raw["age"].map(type).eq(str).all()
