"""The prediction log: every row the endpoint scores lands in the data lake for the monitor.

Rows are buffered in memory and flushed every few seconds (or when the buffer is full, and at
shutdown) to ``predictions/dt=<UTC served date>/part-<pid>-<uuid8>.parquet``. Each file is written
under a dot-prefixed temporary name and renamed into place, so a reader globbing ``part-*.parquet``
sees whole files only. Several endpoint workers write side by side: the pid and a random suffix
keep their file names apart, and no file is ever rewritten.

Logged columns: ``request_id``, ``row_id`` (the key column if the client sent it, else
``<request_id>:<i>``), ``served_at`` (UTC), ``model_name``, ``model_version``, every contract feature
as served (numbers as float64, categories and strings as str) and ``score`` (float64).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from continuous_training.config import DatasetContract, load_contract
from continuous_training.storage import Lake

log = logging.getLogger(__name__)

META_COLUMNS = ("request_id", "row_id", "served_at", "model_name", "model_version")
SCORE_COLUMN = "score"
PART_GLOB = "part-*.parquet"

# A lake that refuses writes must not grow the endpoint's memory without bound: past this many
# buffered rows (a multiple of max_rows) the oldest are dropped, loudly.
_MAX_BUFFER_FACTOR = 20


def prediction_schema(contract: DatasetContract) -> pa.Schema:
    """The Arrow schema of the prediction log, derived from the contract.

    Args:
        contract: the dataset contract (its feature columns are logged as served).

    Returns:
        The schema every ``part-*.parquet`` file is written with.
    """
    fields = [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("row_id", pa.string(), nullable=False),
        pa.field("served_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
    ]
    for col in contract.features:
        fields.append(pa.field(col.name, pa.float64() if col.is_numeric else pa.string()))
    fields.append(pa.field(SCORE_COLUMN, pa.float64(), nullable=False))
    return pa.schema(fields)


def _to_utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC, because the lake partitions by UTC date."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class _Piece:
    """One append: a request's rows, kept as given until the flusher turns them into Arrow."""

    frame: pd.DataFrame
    scores: np.ndarray
    row_ids: list[str]
    request_id: str
    model_name: str
    model_version: str
    served_at: datetime


class PredictionLog:
    """A thread-safe buffer of served predictions, flushed to the lake in the background.

    ``append`` only stores references (it runs on the request path); the Arrow conversion and the
    Parquet write happen in :meth:`flush`, called by the flusher thread every ``flush_seconds``, as
    soon as ``max_rows`` rows are buffered, and by :meth:`stop`.

    Args:
        lake: the data lake whose ``predictions/`` folder receives the files.
        flush_seconds: the longest a row waits in memory (``CT_ENDPOINT_FLUSH_SECONDS`` in the app).
        max_rows: flush early once this many rows are buffered.
        contract: the dataset contract; default :func:`~continuous_training.config.load_contract`.

    Raises:
        ValueError: ``flush_seconds`` or ``max_rows`` is not positive.
    """

    def __init__(
        self,
        lake: Lake,
        flush_seconds: float = 2.0,
        max_rows: int = 5000,
        *,
        contract: DatasetContract | None = None,
    ) -> None:
        if not flush_seconds > 0:
            raise ValueError(f"PredictionLog flush_seconds={flush_seconds!r}: expected a positive number")
        if not max_rows > 0:
            raise ValueError(f"PredictionLog max_rows={max_rows!r}: expected a positive integer")
        self.lake = lake
        self.flush_seconds = float(flush_seconds)
        self.max_rows = int(max_rows)
        self.contract = contract or load_contract()
        self.schema = prediction_schema(self.contract)
        self._features = self.contract.features
        self._key = self.contract.key
        self._pieces: list[_Piece] = []
        self._rows = 0
        self._lock = threading.Lock()
        # Serialises flushes so two flushers never interleave their take-and-write.
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def buffered_rows(self) -> int:
        """Rows appended and not yet written."""
        with self._lock:
            return self._rows

    def append(
        self,
        frame: pd.DataFrame,
        scores: Sequence[float] | np.ndarray,
        *,
        request_id: str,
        model_name: str,
        model_version: str,
        served_at: datetime | None = None,
    ) -> None:
        """Buffer one request's rows and scores.

        Args:
            frame: the rows as served: every contract feature column, optionally the key column
                (its non-null values become ``row_id``); other columns are ignored. Not copied: do
                not mutate it afterwards.
            scores: one score per row.
            request_id: the request's id.
            model_name: registered model name that produced the scores.
            model_version: its version.
            served_at: when the request was served; default now (UTC). Naive values are UTC.

        Raises:
            ValueError: a feature column is missing or ``scores`` has the wrong length.
        """
        missing = [c.name for c in self._features if c.name not in frame.columns]
        if missing:
            raise ValueError(f"prediction log: frame lacks the contract feature column(s) {missing}")
        values = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(values) != len(frame):
            raise ValueError(
                f"prediction log: {len(values)} scores for {len(frame)} rows (request {request_id}); "
                "expected one score per row"
            )
        if len(frame) == 0:
            return
        row_ids = [f"{request_id}:{i}" for i in range(len(frame))]
        if self._key in frame.columns:
            for i, key in enumerate(frame[self._key].tolist()):
                if key is not None and not (isinstance(key, float) and np.isnan(key)):
                    row_ids[i] = str(key)
        piece = _Piece(
            frame=frame,
            scores=values,
            row_ids=row_ids,
            request_id=str(request_id),
            model_name=str(model_name),
            model_version=str(model_version),
            served_at=_to_utc(served_at) if served_at is not None else datetime.now(UTC),
        )
        with self._lock:
            self._pieces.append(piece)
            self._rows += len(frame)
            full = self._rows >= self.max_rows
        if full:
            if self._thread is not None and self._thread.is_alive():
                self._wake.set()
            else:
                self.flush()

    def _piece_table(self, piece: _Piece) -> pa.Table:
        n = len(piece.frame)
        columns: dict[str, Any] = {
            "request_id": pa.array([piece.request_id] * n, pa.string()),
            "row_id": pa.array(piece.row_ids, pa.string()),
            "served_at": pa.array([piece.served_at] * n, pa.timestamp("us", tz="UTC")),
            "model_name": pa.array([piece.model_name] * n, pa.string()),
            "model_version": pa.array([piece.model_version] * n, pa.string()),
        }
        for col in self._features:
            series = piece.frame[col.name]
            if col.is_numeric:
                columns[col.name] = pa.array(pd.to_numeric(series).to_numpy(np.float64), pa.float64())
            else:
                # The endpoint sends str already; other callers may pass numbers as categories.
                texts = [
                    None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in series
                ]
                columns[col.name] = pa.array(texts, pa.string())
        columns[SCORE_COLUMN] = pa.array(piece.scores, pa.float64())
        return pa.table(columns, schema=self.schema)

    def _write(self, day: date, table: pa.Table) -> Path:
        folder = self.lake.predictions(day.isoformat())
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
        path = folder / name
        # Dot-prefixed temp name: never matches part-*.parquet, so readers skip it.
        tmp = folder / f".{name}.tmp"
        try:
            pq.write_table(table, tmp, compression="zstd")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def flush(self) -> int:
        """Write every buffered row to the lake (one file per UTC served date).

        A failed write puts the rows back in the buffer for the next flush and re-raises.

        Returns:
            The number of rows written (0 when the buffer was empty).

        Raises:
            OSError: the lake refused the write (the rows are kept for the next attempt).
        """
        with self._flush_lock:
            with self._lock:
                pieces, self._pieces = self._pieces, []
                self._rows = 0
            if not pieces:
                return 0
            by_day: dict[date, list[_Piece]] = {}
            for piece in pieces:
                by_day.setdefault(piece.served_at.date(), []).append(piece)
            written = 0
            pending = list(by_day.items())
            try:
                while pending:
                    day, day_pieces = pending[0]
                    table = pa.concat_tables([self._piece_table(p) for p in day_pieces])
                    path = self._write(day, table)
                    pending.pop(0)
                    written += table.num_rows
                    log.debug("Wrote %d prediction rows to %s", table.num_rows, path)
            except BaseException:
                self._requeue([p for _, day_pieces in pending for p in day_pieces])
                raise
            return written

    def _requeue(self, pieces: list[_Piece]) -> None:
        with self._lock:
            self._pieces[:0] = pieces
            self._rows += sum(len(p.frame) for p in pieces)
            limit = self.max_rows * _MAX_BUFFER_FACTOR
            dropped = 0
            while self._rows > limit and len(self._pieces) > 1:
                oldest = self._pieces.pop(0)
                self._rows -= len(oldest.frame)
                dropped += len(oldest.frame)
        if dropped:
            log.error("Prediction log: lake unwritable, dropped the %d oldest buffered rows", dropped)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            try:
                self.flush()
            except Exception:
                log.exception(
                    "Prediction log flush to %s failed; rows kept for the next attempt",
                    self.lake.predictions(),
                )

    def start(self) -> None:
        """Start the background flusher (no-op if it is already running)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="prediction-log-flusher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the flusher and write what is left (safe to call twice, or without :meth:`start`)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            self._wake.set()
            thread.join()
        self.flush()


def _days(start: datetime, end: datetime) -> list[date]:
    first, last = start.date(), (end - timedelta(microseconds=1)).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def read_predictions(
    lake: Lake,
    start: datetime,
    end: datetime,
    model_version: str | None = None,
    *,
    contract: DatasetContract | None = None,
) -> pd.DataFrame:
    """The predictions served in ``[start, end)``, optionally by one model version.

    Only the ``dt=`` partitions overlapping the window are opened; rows are then filtered on
    ``served_at``. Files being written are invisible (they carry a temporary name until renamed).

    Args:
        lake: the data lake.
        start: window start (inclusive); naive values are UTC.
        end: window end (exclusive); naive values are UTC.
        model_version: keep only rows served by this model version.
        contract: the dataset contract; default :func:`~continuous_training.config.load_contract`.

    Returns:
        The logged columns (see the module docstring), sorted by ``served_at``; an empty frame with
        the same columns and dtypes when nothing matches.

    Raises:
        ValueError: ``start`` is not before ``end``, or a file lacks a logged column (file named).
    """
    start, end = _to_utc(start), _to_utc(end)
    if start >= end:
        raise ValueError(f"read_predictions: start {start.isoformat()} must be before end {end.isoformat()}")
    schema = prediction_schema(contract or load_contract())
    tables = []
    for day in _days(start, end):
        folder = lake.predictions(day.isoformat())
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(PART_GLOB)):
            table = pq.read_table(path)
            missing = [name for name in schema.names if name not in table.column_names]
            if missing:
                raise ValueError(f"{path}: prediction log file lacks column(s) {missing}")
            tables.append(table.select(schema.names).cast(schema))
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    ts = pa.scalar(start, pa.timestamp("us", tz="UTC")), pa.scalar(end, pa.timestamp("us", tz="UTC"))
    mask = pc.and_(pc.greater_equal(table["served_at"], ts[0]), pc.less(table["served_at"], ts[1]))
    if model_version is not None:
        mask = pc.and_(mask, pc.equal(table["model_version"], str(model_version)))
    table = table.filter(mask)
    frame = table.to_pandas()
    return frame.sort_values("served_at", kind="stable", ignore_index=True)
