"""The prediction log: every row the endpoint scores lands in the data lake for the monitor.

Its format is shared ground: the endpoint writes it (:class:`PredictionLog`), the monitor reads it
(:func:`read_predictions`), and neither imports the other.

Rows are buffered in memory and flushed every few seconds (or when the buffer is full, and at
shutdown) to ``predictions/dt=<UTC served date>/part-<pid>-<uuid8>.parquet``. Each file is written
under a dot-prefixed temporary name and renamed into place, so a reader globbing ``part-*.parquet``
sees whole files only. Several endpoint workers write side by side: the pid and a random suffix
keep their file names apart, and no file is ever rewritten.

Logged columns: ``request_id``, ``row_id`` (the key column if the client sent it, else
``<request_id>:<i>``), ``served_at`` (UTC), ``model_name``, ``model_version``, every contract feature
as served (numbers as float64, categories and strings as str), ``score`` (float64) and
``out_of_range`` (:data:`FLAG_COLUMN`): the row's contract columns whose value lay outside the contract
(a number outside ``min``/``max``, an unseen category), comma-separated, or null when none did. The
endpoint scores such rows when the policy's ``serving.out_of_range`` is ``score``, and flags them here
so that monitoring can count them (:func:`flagged_counts`).

Release columns (safe releases: shadow scoring and error rates per version):

- ``challenger_version`` (string, null): the ``challenger`` version that also scored the row, off the
  request path (shadow scoring, :mod:`continuous_training.serving.shadow`); null when the row was not
  shadow-scored (no challenger, the challenger is the champion, the request was not sampled, or the
  shadow queue was full).
- ``challenger_score`` (float64, null): the challenger's score of the row; null when not shadow-scored
  or when the challenger failed on it.
- ``challenger_error`` (string, null): why the challenger gave no score although it was asked to
  (``<exception class>: <what failed>``, written by the endpoint, never the client's input); null
  otherwise. Shadow comparisons use the rows with ``challenger_version`` set: its error rate is the
  share of them with ``challenger_error`` set.
- ``latency_ms`` (float64, null): the server-side time of the request, from the start of the handler
  to the champion's scores (the same value on each of the request's rows).
- ``error`` (string, null): the exception class when the champion failed to score a parsed request
  (the endpoint answered 500); ``score`` is NaN on such rows. Null for served rows.
  :func:`read_predictions` leaves error rows out unless asked (``include_errors``), so drift
  monitoring sees served rows only.

Files written before a column of :data:`ADDED_COLUMNS` existed read back with it null.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Mapping, Sequence
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
from continuous_training.lake import Lake, to_utc

log = logging.getLogger(__name__)

META_COLUMNS = ("request_id", "row_id", "served_at", "model_name", "model_version")
SCORE_COLUMN = "score"
#: The row's contract columns outside the contract, comma-separated; null when every value was inside.
FLAG_COLUMN = "out_of_range"
#: The challenger version that shadow-scored the row (null when it was not shadow-scored).
CHALLENGER_VERSION_COLUMN = "challenger_version"
#: The challenger's score of the row (null when not shadow-scored, or when the challenger failed).
CHALLENGER_SCORE_COLUMN = "challenger_score"
#: Why the challenger gave no score although asked (null otherwise).
CHALLENGER_ERROR_COLUMN = "challenger_error"
#: Server-side time of the request, handler start to the champion's scores, in milliseconds.
LATENCY_COLUMN = "latency_ms"
#: The exception class of a failed champion scoring (null for served rows).
ERROR_COLUMN = "error"
#: Columns added after the first files were written: older files read back with them null.
ADDED_COLUMNS = (
    FLAG_COLUMN,
    CHALLENGER_VERSION_COLUMN,
    CHALLENGER_SCORE_COLUMN,
    CHALLENGER_ERROR_COLUMN,
    LATENCY_COLUMN,
    ERROR_COLUMN,
)
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
    fields.append(pa.field(FLAG_COLUMN, pa.string()))
    fields.append(pa.field(CHALLENGER_VERSION_COLUMN, pa.string()))
    fields.append(pa.field(CHALLENGER_SCORE_COLUMN, pa.float64()))
    fields.append(pa.field(CHALLENGER_ERROR_COLUMN, pa.string()))
    fields.append(pa.field(LATENCY_COLUMN, pa.float64()))
    fields.append(pa.field(ERROR_COLUMN, pa.string()))
    return pa.schema(fields)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class _Piece:
    """One append: a request's rows, kept as given until the flusher turns them into Arrow."""

    columns: pd.DataFrame | Mapping[str, Any]
    rows: int
    scores: np.ndarray
    request_id: str
    model_name: str
    model_version: str
    served_at: datetime
    flags: np.ndarray | None = None
    latency_ms: float | None = None
    error: str | None = None
    challenger_version: str | None = None
    challenger_scores: np.ndarray | None = None
    # One message for every row (str) or one per row (object array of str or None).
    challenger_error: str | np.ndarray | None = None


def _float_column(values: Any) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype == np.float64:
        return values
    return pd.to_numeric(pd.Series(values)).to_numpy(np.float64)


def _text_column(values: np.ndarray) -> pa.Array:
    try:
        # The endpoint's text columns hold str or None only: Arrow converts those without Python.
        return pa.array(values, pa.string(), from_pandas=True)
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        # Other callers may pass numbers as categories: logged as their text.
        texts = [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values]
        return pa.array(texts, pa.string())


def _repeated_text(values: list[str | None], counts: list[int]) -> pa.Array:
    """One text value per piece, repeated over its rows (all-null pieces cost nothing)."""
    total = sum(counts)
    if all(v is None for v in values):
        return pa.nulls(total, pa.string())
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return pa.array(np.repeat(array, counts), pa.string(), from_pandas=True)


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
        self._feature_names = [c.name for c in self._features]
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
        frame: pd.DataFrame | Mapping[str, Any],
        scores: Sequence[float] | np.ndarray,
        *,
        request_id: str,
        model_name: str,
        model_version: str,
        served_at: datetime | None = None,
        out_of_range: Sequence[str | None] | np.ndarray | None = None,
        latency_ms: float | None = None,
        error: str | None = None,
        challenger_version: str | None = None,
        challenger_scores: Sequence[float] | np.ndarray | None = None,
        challenger_error: str | Sequence[str | None] | np.ndarray | None = None,
    ) -> None:
        """Buffer one request's rows and scores.

        Args:
            frame: the rows as served, as a DataFrame or a mapping of column -> values (arrays of
                equal length): every contract feature column, optionally the key column (its
                non-null values become ``row_id``); other columns are ignored. Not copied: do not
                mutate it afterwards.
            scores: one score per row.
            request_id: the request's id.
            model_name: registered model name that produced the scores.
            model_version: its version.
            served_at: when the request was served; default now (UTC). Naive values are UTC.
            out_of_range: per row, its columns outside the contract (comma-separated) or None; None
                (the default) when no row is flagged. Logged as :data:`FLAG_COLUMN`.
            latency_ms: the request's server-side time (:data:`LATENCY_COLUMN`), or None.
            error: the exception class of a failed champion scoring (:data:`ERROR_COLUMN`); pass NaN
                scores with it.
            challenger_version: the challenger version asked to shadow-score the rows, or None.
            challenger_scores: its score of each row (NaN where it gave none), or None.
            challenger_error: why the challenger gave no score: one message for all rows, or one per
                row (None where it scored); None when it scored them all.

        Raises:
            ValueError: a feature column is missing, the columns differ in length, or ``scores``,
                ``out_of_range``, ``challenger_scores`` or ``challenger_error`` has the wrong length.
        """
        missing = [c.name for c in self._features if c.name not in frame]
        if missing:
            raise ValueError(f"prediction log: frame lacks the contract feature column(s) {missing}")
        if isinstance(frame, pd.DataFrame):
            rows = len(frame)
        else:
            lengths = {name: len(frame[name]) for name in self._feature_names}
            rows = len(frame[self._feature_names[0]])
            if len(set(lengths.values())) != 1:
                raise ValueError(
                    f"prediction log: columns of unequal lengths {lengths} (request {request_id})"
                )
        values = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(values) != rows:
            raise ValueError(
                f"prediction log: {len(values)} scores for {rows} rows (request {request_id}); "
                "expected one score per row"
            )
        flags = None
        if out_of_range is not None:
            flags = np.asarray(out_of_range, dtype=object).reshape(-1)
            if len(flags) != rows:
                raise ValueError(
                    f"prediction log: {len(flags)} out-of-range flags for {rows} rows (request {request_id}); "
                    "expected one per row"
                )
        challenger = None
        if challenger_scores is not None:
            challenger = np.asarray(challenger_scores, dtype=np.float64).reshape(-1)
            if len(challenger) != rows:
                raise ValueError(
                    f"prediction log: {len(challenger)} challenger scores for {rows} rows "
                    f"(request {request_id}); expected one per row"
                )
        challenger_errors: str | np.ndarray | None = None
        if isinstance(challenger_error, str):
            challenger_errors = challenger_error
        elif challenger_error is not None:
            challenger_errors = np.asarray(challenger_error, dtype=object).reshape(-1)
            if len(challenger_errors) != rows:
                raise ValueError(
                    f"prediction log: {len(challenger_errors)} challenger errors for {rows} rows "
                    f"(request {request_id}); expected one per row"
                )
        if rows == 0:
            return
        piece = _Piece(
            columns=frame,
            rows=rows,
            scores=values,
            request_id=str(request_id),
            model_name=str(model_name),
            model_version=str(model_version),
            served_at=to_utc(served_at) if served_at is not None else datetime.now(UTC),
            flags=flags,
            latency_ms=None if latency_ms is None else float(latency_ms),
            error=None if error is None else str(error),
            challenger_version=None if challenger_version is None else str(challenger_version),
            challenger_scores=challenger,
            challenger_error=challenger_errors,
        )
        with self._lock:
            self._pieces.append(piece)
            self._rows += rows
            full = self._rows >= self.max_rows
        if full:
            if self._thread is not None and self._thread.is_alive():
                self._wake.set()
            else:
                self.flush()

    def _row_ids(self, pieces: list[_Piece], request_ids: np.ndarray, counts: list[int]) -> pa.Array:
        """The key column's values where sent and not null, else ``<request_id>:<row index>``."""
        keys = np.concatenate(
            [
                np.asarray(p.columns[self._key], dtype=object)
                if self._key in p.columns
                else np.full(p.rows, None, dtype=object)
                for p in pieces
            ]
        )
        row_ids = _text_column(keys)
        if row_ids.null_count:
            filled = row_ids.to_numpy(zero_copy_only=False)
            missing = np.flatnonzero(row_ids.is_null().to_numpy(zero_copy_only=False))
            starts = np.repeat(np.cumsum([0, *counts[:-1]]), counts)
            filled[missing] = [f"{request_ids[i]}:{i - starts[i]}" for i in missing]
            row_ids = pa.array(filled, pa.string())
        return row_ids

    def _table(self, pieces: list[_Piece]) -> pa.Table:
        """One Arrow table of many appends: each column converted once, not once per request."""
        counts = [p.rows for p in pieces]

        def repeated(values: list[Any]) -> np.ndarray:
            array = np.empty(len(values), dtype=object)
            array[:] = values
            return np.repeat(array, counts)

        micros = np.repeat(
            np.array([(p.served_at - _EPOCH) // _MICROSECOND for p in pieces], np.int64), counts
        )
        request_ids = repeated([p.request_id for p in pieces])
        columns: dict[str, Any] = {
            "request_id": pa.array(request_ids, pa.string()),
            "row_id": self._row_ids(pieces, request_ids, counts),
            "served_at": pa.array(micros, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "model_name": pa.array(repeated([p.model_name for p in pieces]), pa.string()),
            "model_version": pa.array(repeated([p.model_version for p in pieces]), pa.string()),
        }
        for col in self._features:
            if col.is_numeric:
                values = np.concatenate([_float_column(p.columns[col.name]) for p in pieces])
                columns[col.name] = pa.array(values, pa.float64())
            else:
                parts = [np.asarray(p.columns[col.name], dtype=object) for p in pieces]
                columns[col.name] = _text_column(np.concatenate(parts))
        columns[SCORE_COLUMN] = pa.array(np.concatenate([p.scores for p in pieces]), pa.float64())
        if any(p.flags is not None for p in pieces):
            flags = [p.flags if p.flags is not None else np.full(p.rows, None, dtype=object) for p in pieces]
            columns[FLAG_COLUMN] = _text_column(np.concatenate(flags))
        else:
            columns[FLAG_COLUMN] = pa.nulls(sum(counts), pa.string())
        columns.update(self._release_columns(pieces, counts))
        return pa.table(columns, schema=self.schema)

    @staticmethod
    def _release_columns(pieces: list[_Piece], counts: list[int]) -> dict[str, pa.Array]:
        """The shadow-scoring, latency and error columns of many appends."""
        total = sum(counts)
        columns: dict[str, pa.Array] = {
            CHALLENGER_VERSION_COLUMN: _repeated_text([p.challenger_version for p in pieces], counts),
            ERROR_COLUMN: _repeated_text([p.error for p in pieces], counts),
        }
        if any(p.challenger_scores is not None for p in pieces):
            scores = np.concatenate(
                [
                    p.challenger_scores if p.challenger_scores is not None else np.full(p.rows, np.nan)
                    for p in pieces
                ]
            )
            # NaN means "no score" here: a challenger's non-finite score is logged as an error instead.
            columns[CHALLENGER_SCORE_COLUMN] = pa.array(scores, pa.float64(), mask=np.isnan(scores))
        else:
            columns[CHALLENGER_SCORE_COLUMN] = pa.nulls(total, pa.float64())
        if any(p.challenger_error is not None for p in pieces):
            parts = []
            for p in pieces:
                if isinstance(p.challenger_error, np.ndarray):
                    parts.append(p.challenger_error)
                else:
                    parts.append(np.full(p.rows, p.challenger_error, dtype=object))
            columns[CHALLENGER_ERROR_COLUMN] = pa.array(np.concatenate(parts), pa.string(), from_pandas=True)
        else:
            columns[CHALLENGER_ERROR_COLUMN] = pa.nulls(total, pa.string())
        latencies = np.repeat(
            np.array([np.nan if p.latency_ms is None else p.latency_ms for p in pieces], np.float64), counts
        )
        columns[LATENCY_COLUMN] = pa.array(latencies, pa.float64(), mask=np.isnan(latencies))
        return columns

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
                    table = self._table(day_pieces)
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
            self._rows += sum(p.rows for p in pieces)
            limit = self.max_rows * _MAX_BUFFER_FACTOR
            dropped = 0
            while self._rows > limit and len(self._pieces) > 1:
                oldest = self._pieces.pop(0)
                self._rows -= oldest.rows
                dropped += oldest.rows
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
    include_errors: bool = False,
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
        include_errors: also return the rows of requests the champion failed to score
            (:data:`ERROR_COLUMN` set, ``score`` NaN), e.g. to compute error rates per version; by
            default only served rows are returned.

    Returns:
        The logged columns (see the module docstring), sorted by ``served_at``; an empty frame with
        the same columns and dtypes when nothing matches. :data:`FLAG_COLUMN` is null for rows
        served inside the contract; every column of :data:`ADDED_COLUMNS` is null for files written
        before it existed.

    Raises:
        ValueError: ``start`` is not before ``end``, or a file lacks a logged column (file named).
    """
    start, end = to_utc(start), to_utc(end)
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
            for name in ADDED_COLUMNS:
                if name not in table.column_names:
                    table = table.append_column(
                        schema.field(name), pa.nulls(table.num_rows, schema.field(name).type)
                    )
            missing = [name for name in schema.names if name not in table.column_names]
            if missing:
                raise ValueError(f"{path}: prediction log file lacks column(s) {missing}")
            tables.append(table.select(schema.names).cast(schema))
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    ts = pa.scalar(start, pa.timestamp("us", tz="UTC")), pa.scalar(end, pa.timestamp("us", tz="UTC"))
    mask = pc.and_(pc.greater_equal(table["served_at"], ts[0]), pc.less(table["served_at"], ts[1]))
    if model_version is not None:
        mask = pc.and_(mask, pc.equal(table["model_version"], str(model_version)))
    if not include_errors:
        mask = pc.and_(mask, pc.is_null(table[ERROR_COLUMN]))
    table = table.filter(mask)
    frame = table.to_pandas()
    return frame.sort_values("served_at", kind="stable", ignore_index=True)


def flagged_counts(predictions: pd.DataFrame) -> dict[str, int]:
    """How many served rows were flagged out of range, in all and per contract column.

    Args:
        predictions: rows as :func:`read_predictions` returns them (a frame without
            :data:`FLAG_COLUMN` counts as none flagged).

    Returns:
        ``{"rows": flagged rows, <column>: rows flagged on that column, ...}``; only columns with a
        flagged row are listed.
    """
    if FLAG_COLUMN not in predictions or predictions.empty:
        return {"rows": 0}
    flags = predictions[FLAG_COLUMN].dropna()
    flags = flags[flags != ""]
    counts: dict[str, int] = {"rows": len(flags)}
    if len(flags):
        for name, count in flags.str.split(",").explode().value_counts().items():
            counts[str(name)] = int(count)
    return counts
