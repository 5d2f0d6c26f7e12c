"""``ct ledger``: the deployment ledger on the command line, newest move first."""

from __future__ import annotations

import json

import pytest

from continuous_training.lake import Lake
from continuous_training.model import ledger
from continuous_training.ops import cli
from continuous_training.settings import Settings

ROLLBACK_BY = {"dag_id": "rollback", "dag_run_id": "manual__2", "task_id": "move_alias", "user": "alice"}


def _fill(lake: Lake) -> None:
    ledger.record(
        lake,
        "m",
        kind=ledger.DEPLOY,
        from_version=None,
        to_version="1",
        outcome=ledger.CONFIRMED,
        actor={"dag_id": "train", "dag_run_id": "manual__1", "task_id": "deploy"},
        reason="first model",
        at="2026-05-01T10:00:00+00:00",
    )
    ledger.record(
        lake,
        "m",
        kind=ledger.DEPLOY,
        from_version="1",
        to_version="2",
        outcome=ledger.RESTORED,
        actor={"dag_id": "train", "dag_run_id": "manual__3", "task_id": "deploy"},
        reason="new data",
        at="2026-05-02T10:00:00+00:00",
    )
    ledger.record(
        lake,
        "m",
        kind=ledger.ROLLBACK,
        from_version="2",
        to_version="1",
        outcome=ledger.CONFIRMED,
        actor=ROLLBACK_BY,
        reason="v2 mis-scores new branches",
        at="2026-05-03T10:00:00+00:00",
    )


def test_ledger_prints_newest_first_with_who_and_why(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(Lake(settings.lake))
    assert cli.main(["ledger", "--model", "m"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["WHEN", "(UTC)", "KIND"]
    body = lines[1:]
    assert len(body) == 3
    assert body[0].startswith("2026-05-03 10:00:00  rollback")
    assert "v2 -> v1" in body[0]
    assert "rollback/manual__2 (alice)" in body[0]
    assert body[0].endswith("v2 mis-scores new branches")
    assert "restored" in body[1]
    assert "none -> v1" in body[2]


def test_ledger_json_and_limit(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(Lake(settings.lake))
    assert cli.main(["ledger", "--model", "m", "--json", "--limit", "2"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [(e["kind"], e["to_version"]) for e in entries] == [("rollback", "1"), ("deploy", "2")]
    assert entries[0]["actor"]["user"] == "alice"
    assert cli.main(["ledger", "--model", "m", "--json", "--limit", "0"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3


def test_an_empty_ledger_says_so(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["ledger", "--model", "nothing_yet"]) == 0
    assert "ledger of nothing_yet is empty" in capsys.readouterr().out
