"""The deployment ledger: append-only records, one per move, and what they answer."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from continuous_training.lake import Lake
from continuous_training.model import ledger

TRAIN = {"dag_id": "train", "dag_run_id": "manual__1", "task_id": "deploy"}


def _deploy(lake: Lake, frm: str | None, to: str, at: str, **kw) -> dict:
    args = {
        "kind": ledger.DEPLOY,
        "from_version": frm,
        "to_version": to,
        "outcome": ledger.CONFIRMED,
        "actor": TRAIN,
        "reason": "new data",
        "at": at,
    }
    return ledger.record(lake, "m", **{**args, **kw})


def test_a_move_is_recorded_once_and_never_replaced(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    first = _deploy(lake, None, "1", "2026-01-01T00:00:00+00:00", gate={"verdict": {"passed": True}})
    again = _deploy(lake, None, "1", "2026-01-01T00:00:00+00:00", reason="a cleared task, again")
    assert again == first
    assert again["reason"] == "new data"
    files = list(lake.ledger("m").glob("*.json"))
    assert len(files) == 1
    assert json.loads(files[0].read_text())["gate"] == {"verdict": {"passed": True}}
    # A retry that really moved the alias again is a new move: its own time, its own record.
    _deploy(lake, None, "1", "2026-01-01T00:05:00+00:00", outcome=ledger.RESTORED)
    assert len(ledger.read_ledger(lake, "m")) == 2


def test_racing_writers_of_one_move_leave_one_record(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    results: list[dict] = []

    def write(reason: str) -> None:
        results.append(_deploy(lake, "1", "2", "2026-01-02T00:00:00+00:00", reason=reason))

    threads = [threading.Thread(target=write, args=(f"writer {i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(list(lake.ledger("m").glob("*.json"))) == 1
    assert not list(lake.ledger("m").glob(".*"))  # no temporary file left behind
    stored = ledger.read_ledger(lake, "m")[0]["reason"]
    assert all(result["reason"] == stored for result in results)


def test_since_when_previous_champion_and_failed_live_checks(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    _deploy(lake, None, "1", "2026-01-01T00:00:00+00:00")
    _deploy(lake, "1", "2", "2026-01-02T00:00:00+00:00", outcome=ledger.RESTORED)  # not served
    _deploy(lake, "1", "3", "2026-01-03T00:00:00+00:00")
    ledger.record(
        lake,
        "m",
        kind=ledger.AUTO_ROLLBACK,
        from_version="3",
        to_version="1",
        outcome=ledger.CONFIRMED,
        actor={"dag_id": "watch", "dag_run_id": "asset__1", "task_id": "watch"},
        reason="error rate 1.0 above 0.01",
        at="2026-01-03T00:10:00+00:00",
    )
    ledger.record(
        lake,
        "m",
        kind=ledger.BLOCKED,
        from_version="1",
        to_version="4",
        outcome=ledger.BLOCKED,
        actor=TRAIN,
        reason="shadow agreement 0.42 below 0.9",
        at="2026-01-04T00:00:00+00:00",
    )
    entries = ledger.read_ledger(lake, "m")
    assert [e["kind"] for e in entries] == ["deploy", "deploy", "deploy", "auto_rollback", "blocked"]
    assert [(e["from_version"], e["to_version"]) for e in ledger.moves(entries)] == [
        (None, "1"),
        ("1", "3"),
        ("3", "1"),
    ]
    since = ledger.champion_since(entries, "1")
    assert since["kind"] == "auto_rollback"
    assert since["actor"]["dag_id"] == "watch"
    assert ledger.previous_champion(entries, "1") == "3"
    assert ledger.champion_since(entries, "3") is None  # not the champion since the rollback
    assert ledger.previous_champion(entries, "9") is None  # a champion set outside the pipeline
    assert [e["kind"] for e in ledger.failed_live_checks(entries, "3")] == ["auto_rollback"]
    assert [e["kind"] for e in ledger.failed_live_checks(entries, "4")] == ["blocked"]
    assert ledger.failed_live_checks(entries, "1") == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("kind", "moved", "ledger kind: expected one of"),
        ("outcome", "maybe", "ledger outcome: expected one of"),
    ],
)
def test_unknown_kinds_and_outcomes_are_refused(tmp_path: Path, field: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _deploy(Lake(tmp_path / "lake"), "1", "2", "2026-01-01T00:00:00+00:00", **{field: value})
    assert not (tmp_path / "lake").exists()
