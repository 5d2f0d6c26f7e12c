"""Whether drift retrains: the pure decision and the cooldown ledger."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from continuous_training.config import DriftPolicy
from continuous_training.lake import Lake
from continuous_training.monitoring.retrain import (
    DECISIONS,
    decide_retrain,
    decision_records,
    last_retrain_trigger,
    read_decision,
    record_outcome,
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
    assert set(decision) == {"retrain", "decision", "why", "drifted", "windows"}
    assert decision["decision"] in DECISIONS
    assert decision["retrain"] is (decision["decision"] == "triggered") is retrain
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


@pytest.mark.parametrize(
    ("drift", "last", "new_data", "decision"),
    [
        pytest.param(_drift(["age"], rows=120), None, None, "undecided", id="undecided"),
        pytest.param(_drift([]), None, None, "no_drift", id="no-drift"),
        pytest.param(_drift(["age"]), NOW - timedelta(hours=1), None, "cooldown", id="cooldown"),
        pytest.param(
            _drift(["age"]),
            None,
            {"new": False, "why": "no validated day arrived"},
            "no_new_data",
            id="no-new-data",
        ),
        pytest.param(_drift(["age"]), None, {"new": True, "why": "differs"}, "triggered", id="new-data"),
    ],
)
def test_each_decision_has_its_kind_and_the_window_verdict(
    drift: dict, last: datetime | None, new_data: dict | None, decision: str
) -> None:
    verdict = retrain_decision(drift, DECISION_POLICY, last_trigger_at=last, now=NOW, new_data=new_data)
    assert verdict["decision"] == decision
    assert verdict["drifted"] is {"undecided": None, "no_drift": False}.get(decision, True)
    if decision == "no_new_data":
        assert "no validated day arrived" in verdict["why"]


def test_cooldown_is_judged_before_new_data() -> None:
    """Both hold the retraining back; the cooldown is named first (it ends on its own)."""
    verdict = retrain_decision(
        _drift(["age"]),
        DECISION_POLICY,
        last_trigger_at=NOW - timedelta(hours=1),
        now=NOW,
        new_data={"new": False, "why": "nothing new"},
    )
    assert verdict["decision"] == "cooldown"


N_OF_M = DriftPolicy(min_rows=500, cooldown_hours=0, windows_drifted=2, windows_considered=3)


@pytest.mark.parametrize(
    ("earlier", "decision", "tally"),
    [
        pytest.param([], "waiting", (1, 1), id="first-window"),
        pytest.param([False, False], "waiting", (1, 3), id="one-of-three"),
        pytest.param([False, True], "triggered", (2, 3), id="two-of-three"),
        pytest.param([True], "triggered", (2, 2), id="two-of-two-so-far"),
        pytest.param([False, False, True], "waiting", (1, 3), id="the-fourth-window-back-does-not-count"),
    ],
)
def test_n_of_m_windows(earlier: list[bool], decision: str, tally: tuple[int, int]) -> None:
    windows = [{"monitor_run_id": f"m{i}", "drifted": d} for i, d in enumerate(earlier)]
    verdict = retrain_decision(
        _drift(["age"]), N_OF_M, last_trigger_at=None, now=NOW, earlier_windows=windows
    )
    assert verdict["decision"] == decision
    assert (verdict["windows"]["drifted"], verdict["windows"]["considered"]) == tally
    assert verdict["windows"]["runs"] == [w["monitor_run_id"] for w in windows[:2] if w["drifted"]]


def _window(rows: int = 5000, version: str = "3", columns: tuple[str, ...] = ("age",)) -> dict:
    return {
        **_drift(list(columns), rows=rows),
        "model_name": "m",
        "model_version": version,
        "window_start": "2026-03-01T00:00:00+00:00",
        "window_end": "2026-03-02T00:00:00+00:00",
        "report_html": "/lake/reports/drift/x/drift_report.html",
    }


def test_decisions_are_on_the_record_and_count_towards_n_of_m(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    small = decide_retrain(lake, _window(rows=100), N_OF_M, "m0", now=NOW - timedelta(days=3))
    assert small["decision"] == "undecided"
    assert small["rows"] == 100
    assert small["min_rows"] == 500
    first = decide_retrain(lake, _window(), N_OF_M, "m1", now=NOW - timedelta(days=2))
    assert first["decision"] == "waiting"
    assert first["windows"]["considered"] == 1, "the undecided one is not counted"
    # A window of another champion does not count towards this one's tally.
    other = decide_retrain(lake, _window(version="2"), N_OF_M, "m2", now=NOW - timedelta(days=1))
    assert other["decision"] == "waiting"
    second = decide_retrain(lake, _window(), N_OF_M, "m3", now=NOW)
    assert second["decision"] == "triggered"
    assert second["windows"] == {"drifted": 2, "considered": 2, "required": 2, "runs": ["m1"]}
    assert second["train_run_id"] == "drift__m3"
    assert second["conf"] == {
        "reason": "drift in age",
        "drift_report": "/lake/reports/drift/x/drift_report.html",
        "drifted_columns": ["age"],
        "monitor_run_id": "m3",
    }
    assert last_retrain_trigger(lake) == NOW, "the trigger is in the cooldown ledger"
    assert [r["monitor_run_id"] for r in decision_records(lake)] == ["m3", "m2", "m1", "m0"]
    assert read_decision(lake, "m1") == first

    # A re-run of the triggering run triggers the same, though the ledger now holds it in cooldown.
    assert decide_retrain(lake, _window(), N_OF_M, "m3", now=NOW + timedelta(hours=1)) == second
    # Re-running an earlier run judges the windows before it only.
    assert decide_retrain(lake, _window(), N_OF_M, "m1", now=NOW - timedelta(days=2))["decision"] == "waiting"


def test_the_outcome_joins_the_decision_record(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    decide_retrain(lake, _window(), DECISION_POLICY, "m1", now=NOW)
    outcome = {"outcome": "new_champion", "version": "4", "summary": "new champion v4 (was v3)"}
    assert record_outcome(lake, "m1", outcome)["outcome"] == outcome
    assert read_decision(lake, "m1")["outcome"] == outcome
    assert record_outcome(lake, "unknown", outcome) is None
    assert not lake.monitor_decision("unknown").exists()


def test_a_broken_decision_record_is_named(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    path = lake.monitor_decision("m1")
    path.parent.mkdir(parents=True)
    path.write_text('{"decision": "maybe"}')
    with pytest.raises(ValueError, match=r"m1\.json: expected a mapping whose `decision` is one of"):
        decision_records(lake)


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


def test_prediction_drift_counts_only_when_policy_says_so() -> None:
    drift = {**_drift([]), "prediction_drift": {"column": "score", "score": 0.23, "drifted": True}}
    left_out = retrain_decision(drift, DECISION_POLICY, last_trigger_at=None, now=NOW)
    assert left_out["decision"] == "no_drift"
    assert (
        "the predictions drifted (score=0.230), which drift.prediction_drift_counts leaves out"
        in left_out["why"]
    )
    counting = DriftPolicy(min_rows=500, prediction_drift_counts=True)
    counted = retrain_decision(drift, counting, last_trigger_at=None, now=NOW)
    assert counted["decision"] == "triggered"
    assert "score=0.230" in counted["why"]
