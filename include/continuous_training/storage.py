"""The data lake: its layout, content hashes and atomic, immutable publication.

Layout under the lake root (``CT_LAKE``, default ``$CT_HOME/lake``)::

    landing/<YYYY-MM-DD>/*.csv            files dropped by the source system (the simulator)
    raw/dt=<day>/data.parquet             the day's landing files, canonicalised (same input -> same bytes)
    validated/dt=<day>/                   partitions that passed validation (the published Asset)
    quarantine/dt=<day>/<sha12>/          batches that failed, with the validation result; never deleted
    predictions/dt=<day>/part-*.parquet   every prediction the endpoint served
    training_sets/<sha256>.json           training-set snapshots (partition list + content hash)
    reports/drift/<run>/                  drift reports (HTML + JSON)
    alerts/<event>.json                   ledger of alert mails already sent (one mail per event)

The embedded mode uses a local directory. Publication relies on an atomic rename, which object stores
do not offer; moving the lake to S3 & co. is left to a later issue.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from continuous_training.settings import load_settings

DATA_FILE = "data.parquet"
MANIFEST_FILE = "_manifest.json"


class PartitionConflictError(RuntimeError):
    """A published partition already exists with different content (partitions are immutable)."""


@dataclass(frozen=True)
class Lake:
    root: Path

    @classmethod
    def from_settings(cls) -> Lake:
        return cls(load_settings().lake)

    def landing(self, day: date | str) -> Path:
        return self.root / "landing" / str(day)

    def raw(self, day: date | str) -> Path:
        return self.root / "raw" / f"dt={day}"

    def validated(self, day: date | str) -> Path:
        return self.root / "validated" / f"dt={day}"

    def quarantine(self, day: date | str, sha256: str) -> Path:
        return self.root / "quarantine" / f"dt={day}" / sha256[:12]

    def predictions(self, day: date | str | None = None) -> Path:
        base = self.root / "predictions"
        return base if day is None else base / f"dt={day}"

    def training_set(self, sha256: str) -> Path:
        return self.root / "training_sets" / f"{sha256}.json"

    def drift_report_dir(self, run_key: str) -> Path:
        return self.root / "reports" / "drift" / safe_name(run_key)

    def alert_ledger(self, event_key: str) -> Path:
        return self.root / "alerts" / f"{safe_name(event_key)}.json"

    def validated_days(self) -> list[str]:
        """Days with a published validated partition, oldest first."""
        base = self.root / "validated"
        if not base.is_dir():
            return []
        return sorted(
            p.name[3:] for p in base.iterdir() if p.name.startswith("dt=") and (p / MANIFEST_FILE).exists()
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
    new = read_json(staged / MANIFEST_FILE)
    if (dest / MANIFEST_FILE).exists():
        old = read_json(dest / MANIFEST_FILE)
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
