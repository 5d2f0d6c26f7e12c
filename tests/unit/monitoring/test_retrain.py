"""Whether drift retrains: the pure decision and the cooldown ledger."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from continuous_training.config import DriftPolicy
from continuous_training.lake import Lake
from continuous_training.monitoring.retrain import (
    last_retrain_trigger,
    record_retrain_trigger,
    retrain_decision,
)

# --- retrain_decision -----------------------------------------------------------------------------------

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DECISION_POLICY = DriftPolicy(min_drifted_columns=1, cooldown_hours=6, min_rows=500)


def _drift(columns: list[str], rows: int = 5000) -> dict:
    scores = {"age": 0.02, "credit_score": 0.04, "loan_purpose": 0.03, "region": 0.01}
    scores.update({c: 0.35 for c in columns})
    return {"drifted_columns": sorted(columns), "scores": scores, "threshold": 0.1, "rows_current": rows}


@pytest.mark.parametrize(
    ("drift", "policy", "last", "retrain", "why_has"),
    [
        pytest.param(
            _drift([]), DECISION_POLICY, None, False, ["no drift", "credit_score=0.040"], id="no-drift"
        ),
        pytest.param(
            _drift(["credit_score", "loan_purpose"]),
            DECISION_POLICY,
            None,
            True,
            ["2 column(s)", "credit_score=0.350", "loan_purpose=0.350"],
            id="drift-first-ever",
        ),
        pytest.param(
            _drift(["credit_score"]),
            DECISION_POLICY,
            NOW - timedelta(hours=2),
            False,
            ["credit_score=0.350", "cooldown until 2026-03-01T16:00:00+00:00"],
            id="drift-within-cooldown",
        ),
        pytest.param(
            _drift(["credit_score"]),
            DECISION_POLICY,
            NOW - timedelta(hours=6),
            True,
            ["credit_score=0.350"],
            id="drift-cooldown-just-over",
        ),
        pytest.param(
            _drift(["credit_score"]),
            DECISION_POLICY,
            NOW - timedelta(hours=30),
            True,
            ["1 column(s)"],
            id="drift-after-cooldown",
        ),
        pytest.param(
            _drift(["credit_score"]),
            DriftPolicy(min_drifted_columns=2),
            None,
            False,
            ["credit_score=0.350", "below drift.min_drifted_columns=2"],
            id="below-min-drifted-columns",
        ),
        pytest.param(
            _drift(["credit_score"], rows=120),
            DECISION_POLICY,
            None,
            False,
            ["only 120 served rows", "min_rows is 500"],
            id="too-few-rows",
        ),
    ],
)
def test_retrain_decision(
    drift: dict, policy: DriftPolicy, last: datetime | None, retrain: bool, why_has: list[str]
) -> None:
    decision = retrain_decision(drift, policy, last_trigger_at=last, now=NOW)
    assert set(decision) == {"retrain", "why"}
    assert decision["retrain"] is retrain
    for fragment in why_has:
        assert fragment in decision["why"]


def test_retrain_decision_accepts_naive_and_offset_times() -> None:
    # 10:00 at +02:00 is 08:00 UTC; naive "now" is UTC: 4 h later, still inside the 6 h cooldown.
    last = datetime(2026, 3, 1, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    decision = retrain_decision(
        _drift(["age"]), DECISION_POLICY, last_trigger_at=last, now=datetime(2026, 3, 1, 12, 0)
    )
    assert decision["retrain"] is False
    assert "cooldown until 2026-03-01T14:00:00+00:00" in decision["why"]


# --- ledger -----------------------------------------------------------------------------------------------


def test_ledger_is_idempotent_per_monitor_run(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    assert last_retrain_trigger(lake) is None
    first = datetime(2026, 3, 1, 6, 0, tzinfo=UTC)
    record_retrain_trigger(lake, "scheduled__2026-03-01T06:00:00+00:00", first, _drift(["age"]))
    # A retry of the same run, later and with other columns, changes nothing.
    record_retrain_trigger(
        lake, "scheduled__2026-03-01T06:00:00+00:00", first + timedelta(hours=1), _drift(["region"])
    )
    ledger = lake.retrain_ledger()
    entries = json.loads(ledger.read_text())
    assert len(entries) == 1
    assert entries[0]["drifted_columns"] == ["age"]
    assert entries[0]["scores"] == {"age": 0.35}
    assert last_retrain_trigger(lake) == first

    later = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
    record_retrain_trigger(lake, "scheduled__2026-03-02T06:00:00+00:00", later, _drift(["region"]))
    assert len(json.loads(ledger.read_text())) == 2
    assert last_retrain_trigger(lake) == later


def test_corrupt_ledger_names_the_file(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    ledger = tmp_path / "monitoring" / "retrain_triggers.json"
    ledger.parent.mkdir(parents=True)
    ledger.write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="retrain_triggers.json"):
        last_retrain_trigger(lake)


def test_a_drift_run_triggered_over_the_api_is_held_to_the_cooldown(tmp_path):
    from datetime import UTC, datetime, timedelta

    from continuous_training.config import DriftPolicy
    from continuous_training.lake import Lake
    from continuous_training.monitoring.retrain import (
        admit_drift_run,
        last_retrain_trigger,
        record_retrain_trigger,
    )

    lake = Lake(tmp_path)
    policy = DriftPolicy(cooldown_hours=6)
    t0 = datetime(2026, 11, 1, 12, tzinfo=UTC)
    conf = {"reason": "drift in x", "drift_report": "/r.html", "drifted_columns": ["x"]}

    first = admit_drift_run(lake, "api__drift__1", conf, policy, now=t0)
    assert first["train"]
    assert last_retrain_trigger(lake) == t0, "an admitted run counts for the monitor's cooldown too"
    again = admit_drift_run(lake, "api__drift__1", conf, policy, now=t0 + timedelta(hours=1))
    assert again["train"], "a re-run of an admitted run is admitted"
    held = admit_drift_run(lake, "api__drift__2", conf, policy, now=t0 + timedelta(hours=1))
    assert not held["train"]
    assert "cooldown" in held["why"]
    # The monitor's own trigger decided (and recorded) the cooldown itself: admitted.
    record_retrain_trigger(lake, "scheduled__m", t0 + timedelta(hours=2), {"drifted_columns": ["x"]})
    assert admit_drift_run(lake, "drift__scheduled__m", conf, policy, now=t0 + timedelta(hours=2))["train"]
    assert admit_drift_run(lake, "api__drift__3", conf, policy, now=t0 + timedelta(hours=9))["train"]
