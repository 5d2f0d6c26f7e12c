"""The data lake: its layout (every path of it is built here), content hashes, and atomic, immutable
publication.

Layout under the lake root (``CT_LAKE``, default ``$CT_HOME/lake``)::

    landing/<YYYY-MM-DD>/*.csv                  files dropped by the source system (the simulator)
    raw/dt=<day>/                               the day's landing files, canonicalised (same input -> same bytes)
    validation/dt=<day>/<sha12>.json            the full validation outcome of a raw batch (GX result included)
    validated/dt=<day>/                         partitions that passed validation (the published Asset)
    quarantine/dt=<day>/<sha12>/                batches that failed, with the validation result; never deleted
    predictions/dt=<day>/part-*.parquet         every prediction the endpoint served
    training_sets/<sha256>.json                 training-set snapshots (partition list + content hash)
    training_sets/by_run/<run>.json             the snapshot a train DAG run chose (pinned for re-runs)
    monitoring/<run>/{current,reference,reference_scores}.parquet  what a monitor run judged: the served
                                                window, the reference sample, the holdout scores
    monitoring/retrain_triggers.json            ledger of drift-triggered retrainings (the cooldown)
    decisions/monitor/<run>.json                each monitor run's retrain decision, and the outcome it led to
    reports/drift/<run>/                        drift reports (HTML + JSON)
    alerts/<event>.json                         ledger of alert mails already sent (one mail per event)
    registry/<model>/ledger/<move>.json  the deployment ledger: every move of the champion alias

A partition folder (raw, validated, quarantine) holds ``data.parquet`` and ``_manifest.json``
(:func:`data_file`, :func:`manifest_file`); a quarantine folder also keeps the evidence named by the
``QUARANTINE_*`` constants.

The partitions are keyed by UTC day (:func:`day_key`, :func:`to_utc`). The embedded mode uses a local
directory. Publication relies on an atomic rename, which object stores do not offer; moving the lake to
S3 & co. is left to a later issue.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from continuous_training.settings import load_settings

DATA_FILE = "data.parquet"
MANIFEST_FILE = "_manifest.json"
#: Inside a quarantine folder: the full validation outcome, the reason for a person, the failing rows
#: (as they landed), the raw partition's manifest and the copied landing files.
QUARANTINE_VALIDATION_FILE = "validation.json"
QUARANTINE_REASON_FILE = "reason.txt"
QUARANTINE_BAD_ROWS_FILE = "bad_rows.parquet"
QUARANTINE_RAW_MANIFEST_FILE = "raw_manifest.json"
QUARANTINE_LANDING_DIR = "landing"
#: Inside a validated partition: the validation outcome it was published on.
VALIDATED_VALIDATION_FILE = "validation.json"


class PartitionConflictError(RuntimeError):
    """A published partition already exists with different content (partitions are immutable)."""


@dataclass(frozen=True)
class Lake:
    root: Path

    @classmethod
    def from_settings(cls) -> Lake:
        return cls(load_settings().lake)

    def landing(self, day: date | str) -> Path:
        return self.root / "landing" / day_key(day)

    def raw(self, day: date | str) -> Path:
        return self.root / "raw" / f"dt={day_key(day)}"

    def validation_record(self, day: date | str, raw_sha256: str) -> Path:
        """The full validation outcome of the raw batch with this content hash."""
        return self.root / "validation" / f"dt={day_key(day)}" / f"{raw_sha256[:12]}.json"

    def validated(self, day: date | str) -> Path:
        return self.root / "validated" / f"dt={day_key(day)}"

    def quarantine(self, day: date | str, sha256: str) -> Path:
        return self.root / "quarantine" / f"dt={day_key(day)}" / sha256[:12]

    def quarantined(self) -> list[Path]:
        """Every quarantined batch's folder (``quarantine/dt=<day>/<sha12>``), in no order."""
        base = self.root / "quarantine"
        return [batch for day in base.glob("dt=*") for batch in day.iterdir()] if base.is_dir() else []

    def predictions(self, day: date | str | None = None) -> Path:
        base = self.root / "predictions"
        return base if day is None else base / f"dt={day_key(day)}"

    def training_set(self, sha256: str) -> Path:
        return self.root / "training_sets" / f"{sha256}.json"

    def pinned_training_set(self, dag_run_id: str) -> Path:
        """The training set a train DAG run chose, so that a cleared run trains on the same one."""
        return self.root / "training_sets" / "by_run" / f"{safe_name(dag_run_id)}.json"

    def served_window(self, monitor_run_id: str) -> Path:
        """The served rows a monitor run judged (a snapshot of the prediction log)."""
        return self._monitoring(monitor_run_id) / "current.parquet"

    def served_reference(self, monitor_run_id: str) -> Path:
        """The champion's reference sample a monitor run judged against (snapshotted beside the window)."""
        return self._monitoring(monitor_run_id) / "reference.parquet"

    def served_reference_scores(self, monitor_run_id: str) -> Path:
        """The champion's out-of-sample holdout scores a monitor run judged served scores against."""
        return self._monitoring(monitor_run_id) / "reference_scores.parquet"

    def _monitoring(self, monitor_run_id: str) -> Path:
        return self.root / "monitoring" / safe_name(monitor_run_id)

    def retrain_ledger(self) -> Path:
        """The ledger of drift-triggered retrainings (enforces the cooldown)."""
        return self.root / "monitoring" / "retrain_triggers.json"

    def monitor_decision(self, monitor_run_id: str) -> Path:
        """The retrain decision of one monitor run (and, once known, the outcome of what it triggered)."""
        return self.monitor_decisions() / f"{safe_name(monitor_run_id)}.json"

    def monitor_decisions(self) -> Path:
        """The folder of every monitor run's decision record."""
        return self.root / "decisions" / "monitor"

    def drift_report_dir(self, run_key: str) -> Path:
        return self.drift_reports() / safe_name(run_key)

    def drift_reports(self) -> Path:
        """The folder of every monitor run's drift report (one sub-folder per run)."""
        return self.root / "reports" / "drift"

    def ledger(self, model: str) -> Path:
        """The deployment ledger of one registered model (one JSON file per move of its champion)."""
        return self.root / "registry" / safe_name(model) / "ledger"

    def alert_ledger(self, event_key: str) -> Path:
        return self.root / "alerts" / f"{safe_name(event_key)}.json"

    def delivered_days(self) -> list[str]:
        """Days something arrived for, oldest first: a landing CSV, or a raw, validated or quarantined
        partition (an empty landing folder is no delivery)."""
        days = set()
        landing = self.root / "landing"
        if landing.is_dir():
            days.update(p.name for p in landing.iterdir() if p.is_dir() and any(p.glob("*.csv")))
        for area in ("raw", "validated", "quarantine"):
            base = self.root / area
            if base.is_dir():
                days.update(p.name.removeprefix("dt=") for p in base.glob("dt=*") if any(p.iterdir()))
        return sorted(d for d in days if _is_day_key(d))

    def validated_days(self) -> list[str]:
        """Days with a published validated partition, oldest first."""
        base = self.root / "validated"
        if not base.is_dir():
            return []
        return sorted(
            p.name[3:] for p in base.iterdir() if p.name.startswith("dt=") and manifest_file(p).exists()
        )


def _is_day_key(text: str) -> bool:
    try:
        return day_key(text) == text
    except ValueError:
        return False


def data_file(partition: Path) -> Path:
    """The data file of a partition folder (raw, validated, quarantined or being staged)."""
    return partition / DATA_FILE


def manifest_file(partition: Path) -> Path:
    """The manifest of a partition folder; a partition is published once its manifest exists."""
    return partition / MANIFEST_FILE


def day_key(day: date | str) -> str:
    """The canonical ``YYYY-MM-DD`` form of a partition day.

    Args:
        day: a date or an ISO date string.

    Returns:
        The ISO date string.

    Raises:
        ValueError: ``day`` is not an ISO date.
    """
    if isinstance(day, datetime):
        return day.date().isoformat()
    if isinstance(day, date):
        return day.isoformat()
    try:
        return date.fromisoformat(str(day)).isoformat()
    except ValueError as exc:
        raise ValueError(f"partition day {day!r}: expected an ISO date YYYY-MM-DD") from exc


def to_utc(value: datetime) -> datetime:
    """A plain ``datetime`` in UTC; naive values are taken as UTC (pendulum values become stdlib).

    The lake partitions by UTC date, so every time that picks a partition goes through here.
    """
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return datetime(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        tzinfo=UTC,
    )


def safe_name(text: str) -> str:
    """A file-name-safe rendering of a run id or event key (``manual__2026-01-01T00:00:00+00:00``)."""
    return "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in text)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def write_json_once(path: Path, obj: Any) -> bool:
    """Create ``path`` holding ``obj`` unless it exists; never replaces a file, even against a racing
    writer (the whole file appears at once through a hard link, which fails if the name is taken).

    Returns:
        True if this call created the file, False if it existed.
    """
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_parquet_bytes_stable(df: Any, path: Path) -> str:
    """Write a DataFrame as Parquet whose bytes depend only on the data; return its sha256.

    Same frame (same rows in the same order, same dtypes) -> same bytes, so a re-run of a task
    republishes an identical file and the content hash names the data, not the run.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    # The pandas metadata embeds nothing run-specific, but drop it anyway: the schema says enough.
    table = table.replace_schema_metadata(None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp, compression="zstd", use_dictionary=True, write_statistics=True)
    os.replace(tmp, path)
    return sha256_file(path)


def publish_dir(staged: Path, dest: Path) -> bool:
    """Atomically move a fully written directory ``staged`` into place as ``dest``.

    Idempotent: if ``dest`` already holds the same manifest (same content hash), ``staged`` is
    discarded and False is returned. A different existing partition raises, because published
    partitions are immutable.

    Returns:
        True if ``dest`` was created by this call.

    Raises:
        PartitionConflictError: ``dest`` exists with other content.
    """
    new = read_json(manifest_file(staged))
    if manifest_file(dest).exists():
        old = read_json(manifest_file(dest))
        shutil.rmtree(staged)
        if old.get("sha256") != new.get("sha256"):
            raise PartitionConflictError(
                f"{dest} is already published with sha256 {old.get('sha256')}, and the new content has "
                f"sha256 {new.get('sha256')}; published partitions are immutable. Move the old one away "
                "deliberately if the source really changed."
            )
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(staged, dest)
    except OSError:
        # A concurrent run published first between our check and the rename: compare again.
        return publish_dir(staged, dest) if staged.exists() else False
    return True


def publish_staged(dest: Path, write: Callable[[Path], None]) -> bool:
    """Let ``write`` fill a fresh staging folder (which must end with a ``_manifest.json``), then
    publish it atomically as ``dest`` with :func:`publish_dir`; a failure while writing leaves nothing.

    Returns:
        True if ``dest`` was created by this call, False if it already held the same content.

    Raises:
        PartitionConflictError: ``dest`` exists with other content.
    """
    staged = staging_dir(dest)
    try:
        write(staged)
        return publish_dir(staged, dest)
    except BaseException:
        # publish_dir removes the staging folder itself; this covers a failure while writing it.
        shutil.rmtree(staged, ignore_errors=True)
        raise


def staging_dir(dest: Path) -> Path:
    """A fresh sibling directory of ``dest`` to write into before :func:`publish_dir`."""
    path = dest.parent / f".staging-{dest.name}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path
