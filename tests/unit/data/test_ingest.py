"""Landing files -> immutable raw partitions."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from continuous_training.data.ingest import NoLandingFilesError, read_raw, stage_raw_partition
from continuous_training.lake import DATA_FILE, MANIFEST_FILE, Lake, PartitionConflictError, sha256_file
from continuous_training.ops.simulate import SimulatorConfig, land_day

DAY = date(2026, 10, 5)
CONFIG = SimulatorConfig(seed=21, rows_per_day=80)


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
