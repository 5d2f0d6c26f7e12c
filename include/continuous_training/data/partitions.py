"""Publishing, quarantining and reading the lake's daily partitions.

A day that passed validation is published as ``validated/dt=<day>`` (typed, stable bytes, with the
outcome it passed on); one that failed is kept whole in ``quarantine/dt=<day>/<sha12>/`` with the
evidence, and its raw partition is retired so that a corrected re-delivery can be ingested. Nothing is
ever deleted. The training set and the evaluation read published partitions back through
:func:`read_validated`, checked against the snapshot that listed them.
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from continuous_training.config import DatasetContract, load_contract
from continuous_training.data.ingest import open_raw
from continuous_training.data.validate import decode_rows, summarize_failures
from continuous_training.frames import cast_to_contract_dtypes, coerce_table_to_contract, contract_dtypes
from continuous_training.lake import (
    DATA_FILE,
    QUARANTINE_BAD_ROWS_FILE,
    QUARANTINE_LANDING_DIR,
    QUARANTINE_RAW_MANIFEST_FILE,
    QUARANTINE_REASON_FILE,
    QUARANTINE_VALIDATION_FILE,
    VALIDATED_VALIDATION_FILE,
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


def _typed_partition(
    lake: Lake, day: str, contract: DatasetContract
) -> tuple[pq.ParquetFile, pd.DataFrame, dict[str, int], dict[str, Any]]:
    raw, manifest = open_raw(lake, day)
    typed, errors = coerce_table_to_contract(raw, contract)
    return raw, typed, errors, manifest


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
        digest = write_parquet_bytes_stable(_parquet_ready(typed), data_file(staged))
        write_json_atomic(staged / VALIDATED_VALIDATION_FILE, outcome)
        write_json_atomic(
            manifest_file(staged),
            {
                "day": key,
                "rows": len(typed),
                "sha256": digest,
                "raw_sha256": manifest["sha256"],
                "columns": list(typed.columns),
            },
        )

    created = publish_staged(dest, write)
    published = read_json(manifest_file(dest))
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
    landing = [name for name in copied if name.startswith(f"{QUARANTINE_LANDING_DIR}/")]
    lines = [
        f"Partition {key} (raw sha256 {manifest['sha256']}, {manifest['rows']} rows) failed validation:",
        f"{len(failed)} failed check(s) out of {outcome.get('evaluated', '?')} expectation(s) evaluated.",
        "",
        *(f"- {line}" for line in summarize_failures(outcome)),
        "",
        *(
            [
                f"{outcome['bad_rows']} of {manifest['rows']} row(s) fail a row-level check: {QUARANTINE_BAD_ROWS_FILE}."
            ]
            if outcome.get("bad_rows")
            else []
        ),
        f"Raw data: {DATA_FILE} (raw manifest: {QUARANTINE_RAW_MANIFEST_FILE}). Landing files: {', '.join(landing) or 'none found'}.",
        f"Full Great Expectations result: {QUARANTINE_VALIDATION_FILE}.",
        "Nothing was published for this day. Fix the export at the source and land it again, or move this",
        "quarantine folder aside deliberately once the batch is accepted.",
    ]
    return "\n".join(lines) + "\n"


def _write_bad_rows(raw_file: Path, positions: np.ndarray, dest: Path) -> None:
    """Write the raw rows at ``positions`` (as they landed, text) to ``dest``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = pq.ParquetFile(raw_file)
    take = pa.array(positions, type=pa.int64())
    # Column by column: only one column of the whole day is in memory at a time.
    columns = {name: source.read([name]).column(0).take(take) for name in source.schema_arrow.names}
    pq.write_table(pa.table(columns), dest, compression="zstd", use_dictionary=True, write_statistics=True)


def _retire_raw(raw_dir: Path, raw_sha: str) -> None:
    """Remove the raw partition of a quarantined batch, if it still holds exactly that batch."""
    manifest = manifest_file(raw_dir)
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
    if dest is not None and (manifest_file(dest)).exists():
        # A re-run (cleared task): the evidence is already kept; finish retiring raw if a crash left it.
        log.info("partition %s already quarantined in %s", key, dest)
        _retire_raw(raw_dir, raw_sha)
        return {"path": str(dest), "day": key, "raw_sha256": raw_sha, "failed": outcome.get("failed", [])}
    if not (manifest_file(raw_dir)).exists():
        raise FileNotFoundError(f"no raw partition in {raw_dir} to quarantine")
    manifest = read_json(manifest_file(raw_dir))
    _check_outcome_matches(outcome, manifest, key)
    dest = lake.quarantine(key, raw_sha)
    result = {"path": str(dest), "day": key, "raw_sha256": raw_sha, "failed": outcome.get("failed", [])}

    def write(staged: Path) -> None:
        shutil.copy2(data_file(raw_dir), data_file(staged))
        shutil.copy2(manifest_file(raw_dir), staged / QUARANTINE_RAW_MANIFEST_FILE)
        copied = []
        for source in manifest.get("source_files", []):
            path = lake.landing(key) / source["name"]
            if not path.exists():
                log.warning("landing file %s of partition %s is gone; quarantining without it", path, key)
                continue
            if sha256_file(path) != source["sha256"]:
                log.warning("landing file %s changed since the raw partition was staged", path)
            (staged / QUARANTINE_LANDING_DIR).mkdir(exist_ok=True)
            shutil.copy2(path, staged / QUARANTINE_LANDING_DIR / source["name"])
            copied.append(f"{QUARANTINE_LANDING_DIR}/{source['name']}")
        if outcome.get("bad_rows"):
            positions = decode_rows(outcome["bad_row_bitmap"], int(outcome["rows"]))
            _write_bad_rows(data_file(staged), positions, staged / QUARANTINE_BAD_ROWS_FILE)
            copied.append(QUARANTINE_BAD_ROWS_FILE)
        write_json_atomic(staged / QUARANTINE_VALIDATION_FILE, outcome)
        (staged / QUARANTINE_REASON_FILE).write_text(_reason_text(key, manifest, outcome, copied))
        write_json_atomic(
            manifest_file(staged),
            {
                "day": key,
                "sha256": raw_sha,
                "raw_sha256": raw_sha,
                "rows": manifest["rows"],
                "failed": len(outcome.get("failed", [])),
                "files": sorted(
                    [
                        DATA_FILE,
                        QUARANTINE_RAW_MANIFEST_FILE,
                        QUARANTINE_VALIDATION_FILE,
                        QUARANTINE_REASON_FILE,
                        *copied,
                    ]
                ),
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


def read_validated(
    lake: Lake,
    days: list[str],
    contract: DatasetContract | None = None,
    *,
    snapshot: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """The typed rows of validated partitions, in day order, optionally checked against a snapshot.

    Args:
        lake: the data lake.
        days: partition days (duplicates are read once).
        contract: the dataset contract (default: :func:`config.load_contract`).
        snapshot: a training set (:func:`continuous_training.model.training_set.build_training_set`)
            listing these days: each day's current manifest must carry the sha256 it recorded
            (published partitions are immutable; a difference means someone rewrote the lake).

    Returns:
        One frame with the contract's columns and dtypes (``Int64`` integers, ``float64`` floats,
        ``object`` strings, ``datetime64[ns, UTC]`` timestamps) and a fresh index.

    Raises:
        FileNotFoundError: a day has no validated partition (names the folder).
        ValueError: with a snapshot, a partition is gone or differs from what it recorded.
    """
    import pyarrow.parquet as pq

    contract = contract or load_contract()
    if snapshot is not None:
        _check_snapshot(lake, days, snapshot)
    frames = []
    for key in sorted({day_key(d) for d in days}):
        folder = lake.validated(key)
        if not manifest_file(folder).exists():
            raise FileNotFoundError(f"no validated partition in {folder} for day {key}")
        frames.append(cast_to_contract_dtypes(pq.read_table(data_file(folder)).to_pandas(), contract))
    if not frames:
        return pd.DataFrame({n: pd.Series(dtype=t) for n, t in contract_dtypes(contract).items()})
    return pd.concat(frames, ignore_index=True)


def _check_snapshot(lake: Lake, days: list[str], snapshot: dict[str, Any]) -> None:
    recorded = {p["day"]: p["sha256"] for p in snapshot["partitions"]}
    for day in days:
        path = manifest_file(lake.validated(day))
        if not path.exists():
            raise ValueError(f"day {day}: validated partition {path.parent} is gone")
        current = read_json(path).get("sha256")
        if recorded.get(day) != current:
            raise ValueError(
                f"day {day}: partition sha256 is {current} but training set "
                f"{snapshot['sha256'][:12]} recorded {recorded.get(day)}"
            )
