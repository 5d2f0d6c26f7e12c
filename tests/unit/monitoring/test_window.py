"""The served-time window a monitor run judges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from continuous_training.monitoring.window import window_bounds

# --- window_bounds ----------------------------------------------------------------------------------------

RUN_AFTER = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("run_after", "start", "end", "hours", "expected"),
    [
        pytest.param(
            RUN_AFTER,
            None,
            None,
            24,
            ("2026-02-28T12:00:00+00:00", "2026-03-01T12:00:00+00:00"),
            id="default-window",
        ),
        pytest.param(
            RUN_AFTER,
            "",
            "",
            6,
            ("2026-03-01T06:00:00+00:00", "2026-03-01T12:00:00+00:00"),
            id="empty-params-are-missing",
        ),
        pytest.param(
            RUN_AFTER,
            "2026-02-01T00:00:00Z",
            "2026-02-03T00:00:00+00:00",
            24,
            ("2026-02-01T00:00:00+00:00", "2026-02-03T00:00:00+00:00"),
            id="explicit-bounds-win",
        ),
        pytest.param(
            RUN_AFTER,
            "2026-02-01T02:00:00+02:00",
            "2026-02-01T12:00:00",
            24,
            ("2026-02-01T00:00:00+00:00", "2026-02-01T12:00:00+00:00"),
            id="offset-and-naive-to-utc",
        ),
        pytest.param(
            RUN_AFTER,
            "2026-03-01T00:00:00+00:00",
            None,
            24,
            ("2026-03-01T00:00:00+00:00", "2026-03-01T12:00:00+00:00"),
            id="start-only-ends-at-run",
        ),
        pytest.param(
            RUN_AFTER,
            None,
            "2026-02-10",
            12,
            ("2026-02-09T12:00:00+00:00", "2026-02-10T00:00:00+00:00"),
            id="end-only",
        ),
        pytest.param(
            datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
            None,
            None,
            1,
            ("2026-03-01T11:00:00+00:00", "2026-03-01T12:00:00+00:00"),
            id="run-after-in-offset",
        ),
        pytest.param(
            datetime(2026, 3, 1, 12, 0),
            None,
            None,
            0.5,
            ("2026-03-01T11:30:00+00:00", "2026-03-01T12:00:00+00:00"),
            id="naive-run-after-is-utc",
        ),
    ],
)
def test_window_bounds(
    run_after: datetime, start: str | None, end: str | None, hours: float, expected: tuple[str, str]
) -> None:
    lo, hi = window_bounds(run_after, window_start=start, window_end=end, window_hours=hours)
    assert (lo.isoformat(), hi.isoformat()) == expected
    assert lo.tzinfo is UTC
    assert hi.tzinfo is UTC


@pytest.mark.parametrize(
    ("start", "end", "hours", "match"),
    [
        pytest.param("yesterday", None, 24, "param window_start='yesterday'", id="bad-start"),
        pytest.param(None, "2026-13-01", 24, "param window_end='2026-13-01'", id="bad-end"),
        pytest.param(
            "2026-03-01T00:00:00Z", "2026-02-01T00:00:00Z", 24, "start must be before end", id="reversed"
        ),
        pytest.param(None, None, 0, "window_hours=0", id="zero-hours"),
    ],
)
def test_window_bounds_rejects_bad_input(
    start: str | None, end: str | None, hours: float, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        window_bounds(RUN_AFTER, window_start=start, window_end=end, window_hours=hours)
