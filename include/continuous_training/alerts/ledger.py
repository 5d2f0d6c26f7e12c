"""The alert ledger: one mail per event, whoever sends it (an Airflow task, an endpoint worker).

Each event has a key (e.g. ``model-refused/<name>/<version>``) and an entry ``<lake>/alerts/<key>.json``
(:meth:`continuous_training.lake.Lake.alert_ledger`). A sender claims the entry with an exclusive create
before it sends: of every process racing on one event (two endpoint workers, a restart, the deploy task)
exactly one mails it. A failed send gives the claim back, so a retry can send it. No Airflow here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from continuous_training.lake import Lake, write_json_atomic

log = logging.getLogger(__name__)


def claim(lake: Lake, event_key: str) -> Path | None:
    """Claim an event's ledger entry; None if it is already claimed (the event was mailed)."""
    ledger = lake.alert_ledger(event_key)
    ledger.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(ledger, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return None
    return ledger


def release(ledger: Path) -> None:
    """Give a claim back (the mail was not sent)."""
    ledger.unlink(missing_ok=True)


def record(
    ledger: Path, *, event_key: str, subject: str, to: Sequence[str], details: Mapping[str, Any] | None
) -> None:
    """Write what was sent into a claimed entry."""
    write_json_atomic(
        ledger,
        {
            "event_key": event_key,
            "subject": subject,
            "to": list(to),
            "sent_at": datetime.now(UTC).isoformat(),
            "details": dict(details or {}),
        },
    )


def send_once(
    event_key: str,
    subject: str,
    send: Callable[[], None],
    *,
    to: Sequence[str],
    details: Mapping[str, Any] | None = None,
    lake: Lake | None = None,
) -> bool:
    """Run ``send`` unless the event was already mailed, and record it.

    Args:
        event_key: identifies the event (same event -> same key).
        subject: the subject sent (kept in the entry).
        send: sends the mail; raising gives the claim back and propagates.
        to: the recipients (kept in the entry).
        details: JSON-serialisable facts kept in the entry.
        lake: the lake holding the ledger (default: from settings).

    Returns:
        True if ``send`` ran now, False if the event had been mailed already.
    """
    lake = lake or Lake.from_settings()
    ledger = claim(lake, event_key)
    if ledger is None:
        log.info(
            "Alert %s was already sent (ledger %s); not sending it again",
            event_key,
            lake.alert_ledger(event_key),
        )
        return False
    try:
        send()
    except BaseException:
        release(ledger)  # not sent: a retry must be able to send it
        raise
    record(ledger, event_key=event_key, subject=subject, to=to, details=details)
    log.info("Sent alert %s to %s", event_key, list(to))
    return True
