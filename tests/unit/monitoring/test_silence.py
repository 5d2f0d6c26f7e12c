"""Silence as an alert: missing landing days and an endpoint nobody calls, on real lake files."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from continuous_training.lake import Lake
from continuous_training.monitoring.silence import (
    landing_deadline,
    last_served_at,
    missing_days,
    traffic_silence,
)


def _land(lake: Lake, day: str) -> None:
    folder = lake.landing(day)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "applications.csv").write_text("application_id\n1\n")


def test_the_deadline_is_hours_after_the_days_end() -> None:
    assert landing_deadline("2026-11-03", 6) == datetime(2026, 11, 4, 6, tzinfo=UTC)


def test_days_after_the_newest_landed_one_are_missing_once_their_deadline_passed(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    assert missing_days(lake, datetime(2026, 11, 10, tzinfo=UTC), after_hours=6, report_days=3) == []
    _land(lake, "2026-11-01")
    _land(lake, "2026-11-02")
    # 2026-11-03 is due at 2026-11-04T06:00.
    assert missing_days(lake, datetime(2026, 11, 4, 5, 59, tzinfo=UTC), after_hours=6, report_days=3) == []
    (found,) = missing_days(lake, datetime(2026, 11, 4, 6, tzinfo=UTC), after_hours=6, report_days=3)
    assert found["day"] == "2026-11-03"
    assert found["last_landed"] == "2026-11-02"
    assert found["deadline"] == "2026-11-04T06:00:00+00:00"
    later = missing_days(lake, datetime(2026, 11, 6, 7, tzinfo=UTC), after_hours=6, report_days=3)
    assert [d["day"] for d in later] == ["2026-11-03", "2026-11-04", "2026-11-05"]
    # A long outage: the first report_days days only, not one more every day...
    late = missing_days(lake, datetime(2026, 11, 8, 7, tzinfo=UTC), after_hours=6, report_days=3)
    assert [d["day"] for d in late] == ["2026-11-05"]
    # ...and days of long ago are history, not news (simulated days of the past, too).
    assert missing_days(lake, datetime(2026, 11, 30, tzinfo=UTC), after_hours=6, report_days=3) == []
    # The day lands late: nothing is missing any more.
    _land(lake, "2026-11-03")
    assert missing_days(lake, datetime(2026, 11, 4, 7, tzinfo=UTC), after_hours=6, report_days=3) == []


def test_an_ingested_or_quarantined_day_counts_as_landed(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    _land(lake, "2026-11-01")
    lake.raw("2026-11-02").mkdir(parents=True)
    bad = lake.quarantine("2026-11-03", "ab" * 32)
    bad.mkdir(parents=True)
    lake.landing("2026-11-04").mkdir(parents=True)  # an empty folder is not a delivery
    found = missing_days(lake, datetime(2026, 11, 6, 7, tzinfo=UTC), after_hours=6, report_days=3)
    assert [d["day"] for d in found] == ["2026-11-04", "2026-11-05"]


def _log(lake: Lake, day: date, served: list[datetime], mtime: datetime | None = None) -> Path:
    folder = lake.predictions(day)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"part-1-{len(list(folder.iterdir())):08d}.parquet"
    pq.write_table(pa.table({"served_at": pa.array(served, pa.timestamp("us", tz="UTC"))}), path)
    if mtime is not None:
        os.utime(path, (mtime.timestamp(), mtime.timestamp()))
    return path


NOW = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


def test_traffic_flows_then_falls_silent(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    last = NOW - timedelta(minutes=20)
    _log(lake, NOW.date(), [NOW - timedelta(minutes=40), last], mtime=last)
    # Yesterday's file, written long ago, is not even opened; its rows are older anyway.
    _log(lake, NOW.date() - timedelta(days=1), [NOW - timedelta(hours=20)], mtime=NOW - timedelta(hours=20))
    assert last_served_at(lake, NOW, timedelta(days=1)) == last
    assert traffic_silence(lake, NOW, minutes=60) is None
    silence = traffic_silence(lake, NOW + timedelta(minutes=45), minutes=60)
    assert silence is not None
    assert silence["since"] == last.isoformat()
    assert silence["silent_minutes"] == 65.0
    # The same silence, seen by a later check: the same event.
    assert traffic_silence(lake, NOW + timedelta(hours=5), minutes=60)["since"] == silence["since"]
    # Traffic again, then silence again: a new event.
    again = NOW + timedelta(hours=6)
    _log(lake, again.date(), [again], mtime=again)
    assert traffic_silence(lake, again + timedelta(minutes=10), minutes=60) is None
    assert traffic_silence(lake, again + timedelta(minutes=61), minutes=60)["since"] == again.isoformat()


def test_a_log_silent_beyond_the_lookback_keeps_one_event(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    assert traffic_silence(lake, NOW, minutes=60)["since"] == "never"
    written = NOW - timedelta(days=30)
    _log(lake, written.date(), [written], mtime=written)
    first = traffic_silence(lake, NOW, minutes=60)
    assert first["last_served_at"] is None
    assert first["since"] == written.isoformat()
    assert traffic_silence(lake, NOW + timedelta(hours=3), minutes=60)["since"] == first["since"]


def test_files_being_written_are_not_read(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    path = _log(lake, NOW.date(), [NOW - timedelta(minutes=5)], mtime=NOW - timedelta(minutes=5))
    path.rename(path.with_name(f".{path.name}.tmp.parquet"))
    assert last_served_at(lake, NOW, timedelta(days=1)) is None
