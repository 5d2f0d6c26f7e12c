"""Silence as an alert: a day whose data never landed, an endpoint nobody calls.

Both are absences, so nothing fails when they happen; these checks look for them on a schedule:

* :func:`missing_days`: days whose landing deadline (``alerts.data_missing_after_hours`` after the
  day's end, UTC) passed with no file in the landing folder and nothing ingested for the day. Only the
  first ``alerts.data_missing_days`` days after the newest day that did land, and only while their
  deadline is less than that many days old: the first days of an outage are mailed, one mail per day,
  while a lake whose source never delivered (a fresh install), stopped long ago, or holds simulated
  days of the past (the demo) is not mailed about days of long ago.
* :func:`traffic_silence`: no row served for ``alerts.no_traffic_minutes`` while a champion is deployed.
  The event is the silence that began after the last served row: one mail per silence, however many
  checks see it.

Pure functions of the lake and a time; the mails are :mod:`continuous_training.alerts.mail`'s.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from continuous_training.lake import Lake, day_key, to_utc


def landing_deadline(day: date | str, after_hours: float) -> datetime:
    """When ``day``'s data must have landed: ``after_hours`` after the day's end (UTC)."""
    start = datetime.combine(date.fromisoformat(day_key(day)), time(0), tzinfo=UTC)
    return start + timedelta(days=1, hours=after_hours)


def missing_days(lake: Lake, now: datetime, *, after_hours: float, report_days: int) -> list[dict[str, Any]]:
    """Days after the newest landed one whose landing deadline passed, recently, with nothing landed.

    Args:
        lake: the data lake.
        now: the check's time; naive is UTC.
        after_hours: hours after a day's end by which its file must have landed.
        report_days: how many days after the newest landed one are reported at most, and for how
            many days after its deadline a day is.

    Returns:
        ``[{"day", "deadline", "last_landed", "landing"}]``, oldest first; empty when nothing ever landed.
    """
    landed = lake.delivered_days()
    if not landed:
        return []
    newest = date.fromisoformat(landed[-1])
    now = to_utc(now)
    found = []
    for offset in range(1, report_days + 1):
        day = (newest + timedelta(days=offset)).isoformat()
        deadline = landing_deadline(day, after_hours)
        if deadline > now:
            break
        if deadline <= now - timedelta(days=report_days):
            continue  # long past: an outage of long ago, or simulated days
        found.append(
            {
                "day": day,
                "deadline": deadline.isoformat(),
                "last_landed": landed[-1],
                "landing": str(lake.landing(day)),
            }
        )
    return found


def last_served_at(lake: Lake, now: datetime, lookback: timedelta) -> datetime | None:
    """The newest ``served_at`` the prediction log holds within ``lookback`` before ``now`` (None: none).

    Reads the ``served_at`` column only, of the files written since the lookback began (a file flushed
    before it holds older rows only).
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    now = to_utc(now)
    since = now - lookback
    newest: datetime | None = None
    day = since.date()
    while day <= now.date():
        folder = lake.predictions(day)
        for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
            if path.name.startswith("."):
                continue  # being written: it appears under its own name when complete
            try:
                if datetime.fromtimestamp(path.stat().st_mtime, UTC) < since:
                    continue
                column = pq.read_table(path, columns=["served_at"])["served_at"]
            except FileNotFoundError:
                continue  # replaced meanwhile (the maintenance DAG compacts finished days)
            if len(column) == 0:
                continue
            value = pc.max(column).as_py()
            if value is not None:
                value = to_utc(value)
                if value <= now and (newest is None or value > newest):
                    newest = value
        day += timedelta(days=1)
    return newest


def traffic_silence(
    lake: Lake, now: datetime, *, minutes: float, lookback: timedelta = timedelta(days=7)
) -> dict[str, Any] | None:
    """Whether the endpoint served nothing for ``minutes`` before ``now``.

    Returns:
        None while traffic flows; else ``{"since", "minutes", "last_served_at", "silent_minutes"}``:
        ``since`` is when the silence began, the event a mail is about: the last served row; when none
        was served in the lookback, the time the newest prediction-log file was written; ``"never"``
        when the log is empty.
    """
    now = to_utc(now)
    last = last_served_at(lake, now, lookback)
    if last is not None and now - last < timedelta(minutes=minutes):
        return None
    began = last or _newest_log_write(lake)
    return {
        "since": began.isoformat() if began else "never",
        "minutes": minutes,
        "last_served_at": last.isoformat() if last else None,
        "silent_minutes": round((now - began).total_seconds() / 60, 1) if began else None,
    }


def _newest_log_write(lake: Lake) -> datetime | None:
    """When the prediction log was last written to (its newest file's time), or None when empty."""
    base = lake.predictions()
    times = [p.stat().st_mtime for p in base.glob("dt=*/*.parquet")] if base.is_dir() else []
    return datetime.fromtimestamp(max(times), UTC).replace(microsecond=0) if times else None
