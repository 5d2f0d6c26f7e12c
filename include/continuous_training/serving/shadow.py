"""Shadow scoring: the ``challenger`` also scores sampled ``/predict`` requests, off the request path.

While the registry's ``challenger`` alias names another version than the champion serving, each
endpoint worker hands ``release.shadow_share`` of its requests (a per-request coin flip; 1.0 is every
request) to a :class:`ShadowScorer` once the champion has scored them, and answers the client at once.
The scorer's own daemon thread waits :data:`LINGER_SECONDS` after a request arrives, takes everything
pending (up to :data:`MAX_BATCH_ROWS` rows), concatenates the columns of those requests and scores
them with the challenger in one call: a 100-row call costs about as much as a 1-row call, so batching
is what keeps shadow scoring at 100% cheap. The scores are split back per request, and each request's
rows go to the prediction log with the champion's score and the challenger's
(:mod:`continuous_training.predlog`'s ``challenger_*`` columns).

Nothing the challenger does reaches a client:

- The queue is bounded (requests and rows): when it is full, the request's rows go to the prediction
  log at once without a challenger score (``challenger_version`` null) and ``dropped_rows`` grows. A
  request never waits for the shadow thread, and its memory never grows without bound.
- A challenger that raises, or returns the wrong number of scores, fails only its own rows: a failed
  batch is scored again request by request, so the failure is pinned on the requests that cause it.
  Those rows are logged with ``challenger_score`` null and ``challenger_error`` set to the exception
  class and a fixed description (never the exception's text, which can quote the client's values: that
  goes to the endpoint's log, once per version and error). A non-finite score fails its row alone.
- Requests not sampled, and every request while there is no distinct challenger, are logged directly,
  as without shadow scoring.

The counters (``scored_rows``, ``dropped_rows``, ``failed_rows``) are per worker process, since the
worker started; ``/health`` shows them.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from continuous_training.predlog import PredictionLog
from continuous_training.serving.holder import ServedModel

log = logging.getLogger(__name__)

#: How long the shadow thread lets requests gather after the first one arrives before it scores them:
#: at ~100 requests/s per worker, ~5 requests per call instead of one. The shadow scores only reach the
#: prediction log, which flushes every few seconds, so nobody waits for them.
LINGER_SECONDS = 0.05
#: Most rows scored in one challenger call: one call holds the GIL for its Python parts (the
#: categorical encoding), and the request path must get it back soon.
MAX_BATCH_ROWS = 2048
#: Most requests waiting for the challenger; past this (or :data:`MAX_PENDING_ROWS`) requests are
#: logged without a challenger score.
MAX_PENDING_REQUESTS = 1024
#: Most rows waiting for the challenger (the app raises it to twice ``serving.max_rows``).
MAX_PENDING_ROWS = 20_000
#: The ``challenger_error`` of a row whose challenger score is NaN or infinite.
NON_FINITE = "ValueError: non-finite score"
# Distinct (version, error) pairs logged with their traceback; later ones are only counted.
_MAX_LOGGED_ERRORS = 64


@dataclass(frozen=True, slots=True)
class _Pending:
    """A scored request waiting for the challenger: what the prediction log needs, by reference."""

    columns: Mapping[str, np.ndarray]
    rows: int
    scores: np.ndarray
    request_id: str
    model_name: str
    model_version: str
    served_at: datetime
    latency_ms: float
    flags: np.ndarray | None


class _BadScores(ValueError):
    """The challenger returned something else than one score per row (the message is ours)."""


class ShadowScorer:
    """Logs each scored request, shadow-scoring a share of them with the challenger in a thread.

    Args:
        predlog: the prediction log every request's rows go to.
        challenger: returns the challenger model to shadow-score with now, or None (no shadow
            scoring); None for no challenger at all (``release.shadow_share`` is 0).
        share: the share of requests shadow-scored, in [0, 1].
        features: the contract's feature columns (those concatenated for a batched call).
        max_pending_requests: most requests waiting for the challenger.
        max_pending_rows: most rows waiting for the challenger (a larger request is still taken when
            nothing else waits).
        max_batch_rows: most rows in one challenger call.
        linger_seconds: how long requests gather before a call.

    Raises:
        ValueError: ``share`` is not in [0, 1], or a bound is not positive.
    """

    def __init__(
        self,
        predlog: PredictionLog,
        challenger: Callable[[], ServedModel | None] | None,
        share: float,
        *,
        features: list[str],
        max_pending_requests: int = MAX_PENDING_REQUESTS,
        max_pending_rows: int = MAX_PENDING_ROWS,
        max_batch_rows: int = MAX_BATCH_ROWS,
        linger_seconds: float = LINGER_SECONDS,
    ) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"ShadowScorer share={share!r}: expected a share between 0 and 1")
        if min(max_pending_requests, max_pending_rows, max_batch_rows) < 1:
            raise ValueError("ShadowScorer: the queue and batch bounds must be positive")
        self.predlog = predlog
        self.share = float(share)
        self.features = list(features)
        self.max_pending_requests = int(max_pending_requests)
        self.max_pending_rows = int(max_pending_rows)
        self.max_batch_rows = int(max_batch_rows)
        self.linger_seconds = float(linger_seconds)
        self._challenger = challenger if share > 0 else None
        self._pending: deque[_Pending] = deque()
        self._pending_rows = 0
        self._ready = threading.Condition(threading.Lock())
        self._stopping = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._logged_errors: set[tuple[str, str]] = set()
        self._warned_full = False
        self.scored_rows = 0
        self.dropped_rows = 0
        self.failed_rows = 0

    # ----------------------------------------------------------------------------- request path

    def challenger_for(self, champion_version: str) -> ServedModel | None:
        """The challenger to shadow-score a request of ``champion_version`` with, or None."""
        if self._challenger is None:
            return None
        challenger = self._challenger()
        if challenger is None or challenger.version == champion_version:
            return None
        return challenger

    def log(
        self,
        columns: Mapping[str, np.ndarray],
        n_rows: int,
        scores: np.ndarray,
        *,
        request_id: str,
        served: ServedModel,
        served_at: datetime,
        latency_ms: float,
        flags: np.ndarray | None = None,
    ) -> None:
        """Log a request the champion scored; queue it for the challenger if it is sampled.

        Never blocks on the challenger: a full queue logs the rows at once, without a challenger score.

        Args:
            columns: the parsed columns (not copied: not to be mutated afterwards).
            n_rows: the row count.
            scores: the champion's scores.
            request_id: the request's id.
            served: the champion model that scored it.
            served_at: when the request was served.
            latency_ms: the request's server-side time up to the champion's scores.
            flags: the rows' out-of-range flags (:data:`~continuous_training.predlog.FLAG_COLUMN`), or None.

        Raises:
            ValueError: the prediction log refused the rows (see
                :meth:`~continuous_training.predlog.PredictionLog.append`).
        """
        challenger = self.challenger_for(served.version)
        # random() only when sampling: a share of 1.0 shadow-scores every request.
        if challenger is None or self._stopping or (self.share < 1.0 and random.random() >= self.share):
            self._append(columns, scores, request_id, served, served_at, latency_ms, flags)
            return
        item = _Pending(
            columns, n_rows, scores, request_id, served.name, served.version, served_at, latency_ms, flags
        )
        with self._ready:
            waiting = len(self._pending)
            full = waiting >= self.max_pending_requests or (
                waiting > 0 and self._pending_rows + n_rows > self.max_pending_rows
            )
            warn = False
            if full:
                self.dropped_rows += n_rows
                warn, self._warned_full = not self._warned_full, True
            else:
                self._pending.append(item)
                self._pending_rows += n_rows
                if len(self._pending) == 1:
                    self._ready.notify()
        if full:
            if warn:
                log.warning(
                    "Shadow queue full (%d requests, %d rows pending): logging requests without a "
                    "challenger score until it drains (counted in dropped_rows)",
                    self.max_pending_requests,
                    self.max_pending_rows,
                )
            self._append(columns, scores, request_id, served, served_at, latency_ms, flags)

    def _append(
        self,
        columns: Mapping[str, np.ndarray],
        scores: np.ndarray,
        request_id: str,
        served: ServedModel,
        served_at: datetime,
        latency_ms: float,
        flags: np.ndarray | None,
    ) -> None:
        self.predlog.append(
            columns,
            scores,
            request_id=request_id,
            model_name=served.name,
            model_version=served.version,
            served_at=served_at,
            out_of_range=flags,
            latency_ms=latency_ms,
        )

    # ---------------------------------------------------------------------------- shadow thread

    @property
    def pending_rows(self) -> int:
        """Rows waiting for the challenger."""
        with self._ready:
            return self._pending_rows

    def _take(self) -> list[_Pending]:
        """Pending requests, oldest first, up to :attr:`max_batch_rows` rows (at least one request)."""
        batch: list[_Pending] = []
        rows = 0
        with self._ready:
            while self._pending and (not batch or rows + self._pending[0].rows <= self.max_batch_rows):
                item = self._pending.popleft()
                batch.append(item)
                rows += item.rows
            self._pending_rows -= rows
            if not self._pending:
                self._warned_full = False
        return batch

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._pending and not self._stopping:
                    self._ready.wait()
                if not self._pending:
                    return
            # Let more requests gather: one call for many of them (cut short by stop()).
            if self.linger_seconds > 0:
                self._stop.wait(self.linger_seconds)
            self._process(self._take())

    def _process(self, batch: list[_Pending]) -> None:
        """Shadow-score a batch and log its rows; never raises (the thread must outlive any model)."""
        if not batch:
            return
        try:
            challenger = self._challenger() if self._challenger is not None else None
            # The alias may have moved since the requests were queued: a request the challenger now
            # serves as champion is not compared with itself.
            mine = []
            for item in batch:
                if challenger is None or item.model_version == challenger.version:
                    self._log_item(item, None, None, None)
                else:
                    mine.append(item)
            if challenger is not None and mine:
                for item, (scores, error) in zip(mine, self._score(challenger, mine), strict=True):
                    self._log_item(item, challenger.version, scores, error)
        except Exception:
            log.exception("Shadow scoring of %d request(s) failed; their rows may be missing", len(batch))

    def _log_item(
        self,
        item: _Pending,
        version: str | None,
        scores: np.ndarray | None,
        error: str | np.ndarray | None,
    ) -> None:
        self.predlog.append(
            item.columns,
            item.scores,
            request_id=item.request_id,
            model_name=item.model_name,
            model_version=item.model_version,
            served_at=item.served_at,
            out_of_range=item.flags,
            latency_ms=item.latency_ms,
            challenger_version=version,
            challenger_scores=scores,
            challenger_error=error,
        )
        if version is None:
            return
        if error is None:
            self.scored_rows += item.rows
        elif isinstance(error, str):
            self.failed_rows += item.rows
        else:
            failed = sum(e is not None for e in error)
            self.failed_rows += failed
            self.scored_rows += item.rows - failed

    def _score(
        self, challenger: ServedModel, items: list[_Pending]
    ) -> list[tuple[np.ndarray | None, str | np.ndarray | None]]:
        """Per request: the challenger's scores (NaN where none) and the error(s), in one call if it can."""
        n_rows = sum(i.rows for i in items)
        if len(items) == 1:
            columns: Mapping[str, Any] = items[0].columns
        else:
            columns = {name: np.concatenate([i.columns[name] for i in items]) for name in self.features}
        try:
            raw = challenger.scorer(columns, n_rows)
            scores = np.asarray(raw, dtype=np.float64)
            if scores.shape != (n_rows,):
                raise _BadScores(f"returned {scores.size} scores of shape {scores.shape} for {n_rows} row(s)")
        except Exception as exc:
            if len(items) > 1:
                # Pin the failure on the requests that cause it: each alone, as if not batched.
                return [self._score(challenger, [item])[0] for item in items]
            return [(None, self._error(challenger, exc))]
        out: list[tuple[np.ndarray | None, str | np.ndarray | None]] = []
        start = 0
        for item in items:
            part = scores[start : start + item.rows]
            start += item.rows
            finite = np.isfinite(part)
            if finite.all():
                out.append((part, None))
            else:
                errors = np.where(finite, None, NON_FINITE).astype(object)
                out.append((np.where(finite, part, np.nan), errors))
        return out

    def _error(self, challenger: ServedModel, exc: Exception) -> str:
        """The ``challenger_error`` of a failed call: the class and our own words, never the exception's."""
        if isinstance(exc, _BadScores):
            text = f"ValueError: {exc}"
        else:
            text = f"{type(exc).__name__}: the challenger's scorer raised (details in the endpoint log)"
        key = (challenger.version, type(exc).__name__)
        if key not in self._logged_errors and len(self._logged_errors) < _MAX_LOGGED_ERRORS:
            self._logged_errors.add(key)
            # The server's log may hold the exception's text; the prediction log does not.
            log.warning(
                "Challenger %s version %s failed to shadow-score a request (%s); its rows are logged "
                "without a challenger score; the champion is unaffected",
                challenger.name,
                challenger.version,
                text,
                exc_info=exc,
            )
        return text

    # ------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the shadow thread (no-op when it runs, or when there is no challenger to follow)."""
        if self._challenger is None or (self._thread is not None and self._thread.is_alive()):
            return
        with self._ready:
            self._stopping = False
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread after it scored what is pending; score here what it left (or all, if never
        started). Safe to call twice. Requests logged afterwards are not shadow-scored.

        Args:
            timeout: longest wait for the thread.
        """
        with self._ready:
            self._stopping = True
            self._ready.notify_all()
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("The shadow thread did not stop within %.0f s; draining here", timeout)
        while batch := self._take():
            self._process(batch)

    def stats(self) -> dict[str, Any]:
        """The ``/health`` ``shadow`` body (this worker's counters since it started)."""
        return {
            "share": self.share,
            "scored_rows": self.scored_rows,
            "dropped_rows": self.dropped_rows,
            "failed_rows": self.failed_rows,
            "pending_rows": self.pending_rows,
        }
