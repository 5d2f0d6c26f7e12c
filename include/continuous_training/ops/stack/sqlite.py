"""The embedded stack's SQLite metadata DB under load: busy timeouts and WAL.

What Airflow 3.3 lets you set for SQLite (read in its source, ``airflow/settings.py`` and
``airflow/utils/orm_event_handlers.py``):

* ``[database] sql_alchemy_connect_args``: the import path of a dict handed to SQLAlchemy's
  ``create_engine(connect_args=...)`` for the sync engine (``settings._get_connect_args``,
  ``configure_orm``), i.e. the keyword arguments of ``sqlite3.connect``. Airflow adds
  ``check_same_thread=False`` to that very dict for SQLite. ``sql_alchemy_connect_args_async`` is the
  same for the async engine (``sqlite+aiosqlite``, whose ``connect`` passes them to ``sqlite3.connect``).
* ``[database] sql_alchemy_engine_args``: JSON ``create_engine`` kwargs; the pool settings overwrite
  it, and nothing in it helps SQLite.
* No pragma setting: Airflow's own connect hook runs ``PRAGMA foreign_keys=ON`` and
  ``PRAGMA journal_mode=WAL`` on every sync connection. WAL is a property of the DB file, so it also
  holds for the async engine's connections; :func:`ensure_wal` sets it once after ``airflow db
  migrate`` so the stack does not depend on that hook.

Without a setting, ``sqlite3.connect`` waits 5 s for a lock, and that is what failed under 11
concurrent triggers (measured on the embedded stack, 2 cores): the API server's audit-log insert
(``airflow/api_fastapi/logging/decorators.py``, ``action_logging``) is a sync ``session.commit()``
inside an ``async`` dependency, so it waits for the write lock *on the event loop*. The lock was held by
another request's trigger whose transaction commits in a dependency exit that the same event loop has
to schedule: a deadlock that only the busy timeout breaks. The loop froze for 20 s, 7 triggers got 500
("database is locked" on ``INSERT INTO log``), and the scheduler, dag-processor and triggerer, waiting
for the same lock, exited on the same error.

Hence two timeouts (:class:`LoopAwareConnection`): a long one (:data:`BUSY_TIMEOUT_S`) for every
statement that blocks only its own thread, so a burst of writers queues instead of failing; and a short
one (:data:`EVENT_LOOP_BUSY_TIMEOUT_S`) for a statement run on a thread with a running asyncio loop,
so that such a deadlock ends after a second (that request gets a 500, which a client retries) instead
of freezing the API server while every other writer runs out of patience.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from continuous_training.ops.stack.errors import StackError
from continuous_training.settings import Settings

#: Seconds a statement waits for a lock when it blocks only its own thread (scheduler, dag-processor,
#: triggerer, the API server's worker threads). Long: a burst of writers queues instead of failing.
BUSY_TIMEOUT_S = 60.0
#: Seconds a statement waits for a lock on a thread that runs an asyncio event loop. Short: nothing
#: else on that loop runs meanwhile, and the lock holder may be waiting for the loop (see the module).
EVENT_LOOP_BUSY_TIMEOUT_S = 1.0

_MS = 1000


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class LoopAwareConnection(sqlite3.Connection):
    """A ``sqlite3`` connection whose busy timeout depends on the thread that runs the statement.

    SQLAlchemy runs every statement through :meth:`cursor`; before handing one out, the busy timeout
    is set to :data:`EVENT_LOOP_BUSY_TIMEOUT_S` on a thread with a running asyncio loop and to the
    connection's own timeout (``sqlite3.connect(timeout=...)``) elsewhere. The pragma is only sent when
    the value changes (pooled connections move between threads).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        timeout = kwargs.get("timeout", args[1] if len(args) > 1 else 5.0)
        self._ct_default_ms = int(float(timeout) * _MS)
        self._ct_busy_ms = self._ct_default_ms

    def cursor(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:  # type: ignore[override]
        wanted = int(EVENT_LOOP_BUSY_TIMEOUT_S * _MS) if _on_event_loop() else self._ct_default_ms
        if wanted != self._ct_busy_ms:
            # Not transactional, and neither opens nor commits a transaction.
            super().cursor().execute(f"PRAGMA busy_timeout = {wanted:d}").close()
            self._ct_busy_ms = wanted
        return super().cursor(*args, **kwargs)


#: ``[database] sql_alchemy_connect_args`` of every Airflow process (Airflow adds
#: ``check_same_thread=False`` to this dict in each process).
SYNC_CONNECT_ARGS: dict[str, Any] = {"timeout": BUSY_TIMEOUT_S, "factory": LoopAwareConnection}
#: ``[database] sql_alchemy_connect_args_async``: aiosqlite runs each connection on a thread of its
#: own, never on the event loop, so the long timeout is right there.
ASYNC_CONNECT_ARGS: dict[str, Any] = {"timeout": BUSY_TIMEOUT_S}

_MODULE = __name__


def sqlite_airflow_config(settings: Settings) -> dict[str, str]:
    """The ``AIRFLOW__DATABASE__*`` variables of the embedded stack's SQLite metadata DB.

    Pure: names of importable objects (the package is installed in the venv every Airflow process
    runs from), nothing read or written.

    Args:
        settings: the stack settings; the cluster (PostgreSQL) gets nothing (``timeout`` and
            ``factory`` are not psycopg arguments).

    Returns:
        Variable name -> value: the sync and async connect args.
    """
    if settings.cluster:
        return {}
    return {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": f"{_MODULE}.SYNC_CONNECT_ARGS",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": f"{_MODULE}.ASYNC_CONNECT_ARGS",
    }


def journal_mode(db: Path) -> str:
    """The journal mode of the SQLite file ``db`` (``wal``, ``delete``, ...); changes nothing."""
    with contextlib.closing(sqlite3.connect(db, timeout=BUSY_TIMEOUT_S)) as conn:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()


def ensure_wal(db: Path) -> bool:
    """Switch the SQLite file ``db`` to write-ahead logging; idempotent.

    WAL is stored in the file: every later connection (sync or async, any process) uses it. Readers
    then never block the writer nor the writer the readers; writers still queue (the busy timeouts).

    Args:
        db: the database file (it must exist: ``airflow db migrate`` made it).

    Returns:
        True if the mode was changed, False if it already was WAL.

    Raises:
        StackError: the file is missing, or SQLite refused WAL (e.g. a file system without shared
            memory).
    """
    if not db.is_file():
        raise StackError(f"cannot switch {db} to WAL: no such database file")
    if journal_mode(db) == "wal":
        return False
    with contextlib.closing(sqlite3.connect(db, timeout=BUSY_TIMEOUT_S)) as conn:
        mode = str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
    if mode != "wal":
        raise StackError(f"SQLite kept journal mode {mode!r} for {db} instead of WAL")
    return True
