"""Landing files -> the day's immutable raw partition.

The raw partition keeps what landed, as text, verbatim: no typing, no filtering (validation decides
what is acceptable and keeps the evidence). Rows are put in a canonical order so the same landing
files always give the same Parquet bytes and the same content hash, whatever order the files were
listed or the rows were exported in.
"""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from continuous_training.frames import read_landing_csv
from continuous_training.lake import (
    Lake,
    data_file,
    day_key,
    manifest_file,
    publish_staged,
    read_json,
    sha256_file,
    write_json_atomic,
    write_parquet_bytes_stable,
)

if TYPE_CHECKING:
    import pyarrow.parquet as pq

log = logging.getLogger(__name__)


class NoLandingFilesError(FileNotFoundError):
    """The landing folder of a day holds no ``*.csv`` file (the source has not delivered yet)."""


def landing_files(lake: Lake, day: date | str) -> list[Path]:
    """The day's landing CSV files, sorted by name.

    Args:
        lake: the data lake.
        day: the partition day.

    Returns:
        The ``*.csv`` files in ``lake.landing(day)``.

    Raises:
        NoLandingFilesError: there is none (the message names the folder).
    """
    folder = lake.landing(day_key(day))
    files = sorted(p for p in folder.glob("*.csv") if p.is_file()) if folder.is_dir() else []
    if not files:
        raise NoLandingFilesError(f"no landing files (*.csv) in {folder} for day {day_key(day)}")
    return files


def _canonical(frames: list[pd.DataFrame]) -> pd.DataFrame:
    columns: list[str] = []
    for frame in frames:
        columns.extend(str(c) for c in frame.columns if str(c) not in columns)
    if frames:
        df = pd.concat([f.astype(object) for f in frames], ignore_index=True, sort=False)
    else:
        df = pd.DataFrame()
    df = df.reindex(columns=columns).astype(object)
    if len(df) and columns:
        # Sorting by every column makes the row order a function of the content alone.
        df = df.sort_values(columns, na_position="last", kind="mergesort", ignore_index=True)
    # A nullable string dtype keeps every column a Parquet string even when it has no values.
    return df.astype("string")


def stage_raw_partition(lake: Lake, day: date | str) -> dict[str, Any]:
    """Canonicalise the day's landing files into ``lake.raw(day)`` (``data.parquet`` + ``_manifest.json``).

    Every ``*.csv`` of ``lake.landing(day)`` is read as text (sorted by name), the files are
    concatenated (the union of their columns) and the rows sorted by every column. An empty file gives
    a zero-row partition: refusing it is validation's job.

    Args:
        lake: the data lake.
        day: the partition day.

    Returns:
        The manifest ``{"day", "rows", "sha256", "columns", "source_files": [{"name", "sha256", "rows"}]}``
        plus ``"path"`` (the partition folder). A re-run with the same landing files publishes nothing
        and returns the published manifest.

    Raises:
        NoLandingFilesError: no landing file for the day.
        ValueError: a file is not parseable CSV (names the file).
        PartitionConflictError: the day is already published with other content.
    """
    key = day_key(day)
    files = landing_files(lake, key)
    frames = []
    sources = []
    for path in files:
        frame = read_landing_csv(path)
        frames.append(frame)
        sources.append({"name": path.name, "sha256": sha256_file(path), "rows": len(frame)})
    df = _canonical(frames)

    dest = lake.raw(key)

    def write(staged: Path) -> None:
        manifest = {
            "day": key,
            "rows": len(df),
            "sha256": write_parquet_bytes_stable(df, data_file(staged)),
            "columns": list(df.columns),
            "source_files": sources,
        }
        write_json_atomic(manifest_file(staged), manifest)

    created = publish_staged(dest, write)
    published = read_json(manifest_file(dest))
    log.info(
        "raw partition %s: %s (%d rows from %d file(s), sha256 %s)",
        key,
        "published" if created else "already published",
        published["rows"],
        len(published["source_files"]),
        published["sha256"][:12],
    )
    return {**published, "path": str(dest)}


def read_raw(lake: Lake, day: date | str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The raw partition of a day (text columns) and its manifest.

    Args:
        lake: the data lake.
        day: the partition day.

    Returns:
        ``(frame, manifest)``; the frame's columns are ``object`` holding ``str`` or None.

    Raises:
        FileNotFoundError: the day has no raw partition (names the folder).
    """
    import pyarrow.parquet as pq

    folder = lake.raw(day_key(day))
    if not (manifest_file(folder)).exists():
        raise FileNotFoundError(f"no raw partition in {folder}: stage the day's landing files first")
    manifest = read_json(manifest_file(folder))
    df = pq.read_table(data_file(folder)).to_pandas()
    df = df.astype(object).where(df.notna(), None)
    return df, manifest


def open_raw(lake: Lake, day: date | str) -> tuple[pq.ParquetFile, dict[str, Any]]:
    """The raw partition of a day as an open Parquet file (text columns) and its manifest.

    Lighter than :func:`read_raw` for large days: columns are read when asked for, and stay Arrow
    strings until typed (see :func:`frames.coerce_table_to_contract`) instead of becoming one Python
    object per value.

    Args:
        lake: the data lake.
        day: the partition day.

    Returns:
        ``(parquet_file, manifest)``.

    Raises:
        FileNotFoundError: the day has no raw partition (names the folder).
    """
    import pyarrow.parquet as pq

    folder = lake.raw(day_key(day))
    if not (manifest_file(folder)).exists():
        raise FileNotFoundError(f"no raw partition in {folder}: stage the day's landing files first")
    return pq.ParquetFile(data_file(folder)), read_json(manifest_file(folder))
